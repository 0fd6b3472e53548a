"""What lives on disk: camera names, the model registry, the frame buffer, run logs, atomic writes."""
