"""``crowdwatch`` commands that belong to neither stage (registered in streamer/cli.py; never imported by other code)."""
