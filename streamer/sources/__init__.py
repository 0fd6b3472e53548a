"""Camera sources: decode a camera (or file, or plugin stream) into model-ready frames.

    from streamer.sources import Source, SourceConfig
    src = Source(SourceConfig(camera="gate", url="rtsp://cam/stream", fps=2, width=640, height=480))
    for frame in src.frames():   # RGB uint8, sides multiples of 32; reconnects by itself
        ...
    src.close()                  # from any thread

Modules, one concept each: ``config`` (SourceConfig, SourceError), ``urls``
(URL checks, scheme registry), ``frame`` (Frame, RawFrame, FrameStream),
``stats``, ``pyav`` (the PyAV connection), ``source`` (reconnect loop),
``sampling`` (fps), ``timestamps`` (repairing stream time), ``keyframes``, ``pacing``, ``backoff``, ``watchdog``, and
``testclip`` (encodes test clips for tests and benchmarks).
"""

from .config import SourceConfig, SourceError
from .frame import Frame, FrameStream, RawFrame
from .source import Source
from .stats import SourceStats
from .urls import StreamFactory, redact, register_scheme, registered_schemes, resolve, unregister_scheme

__all__ = [
    "Frame",
    "FrameStream",
    "RawFrame",
    "Source",
    "SourceConfig",
    "SourceError",
    "SourceStats",
    "StreamFactory",
    "redact",
    "register_scheme",
    "registered_schemes",
    "resolve",
    "unregister_scheme",
]
