"""The online side of crowdwatch: camera sources, ZeroMQ wire format, inference
stage, crowd metrics, Prometheus exporter, web overlay, frame tap, supervisor."""
