"""The density network: encoders, CrowdCounter, checkpoints, ONNX export."""
