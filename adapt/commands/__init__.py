"""One module per ``crowdwatch`` subcommand of the learning side: argparse and ``main(argv)`` only.

Nothing imports these modules except ``streamer/cli.py`` (and tests).
"""
