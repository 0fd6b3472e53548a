"""Self-supervised adaptation of one camera's model: flip stage, pseudo labels, gate, labels, calibration."""
