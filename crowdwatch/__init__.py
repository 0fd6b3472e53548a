"""crowdwatch: code shared by the online stages (streamer/) and adaptation (adapt/)."""
