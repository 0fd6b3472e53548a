"""Plain counters one Source keeps; the caller exports them (Prometheus, logs)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# Drop reasons, pre-seeded so exported counters exist (at 0) from the start.
SAMPLING = "sampling"  # decoded, but over the fps budget: expected, not an error
NONKEY = "nonkey"  # non-key frame skipped by the decoder in keyframes-only mode
DECODE_ERROR = "decode_error"  # corrupt packet or frame, skipped
DROP_REASONS = (SAMPLING, NONKEY, DECODE_ERROR)

# Why a connection was given up (each is followed by a reconnect with backoff).
OPEN = "open"  # could not open or probe the stream
READ = "read"  # the demuxer failed mid-stream (connection reset, timeout, ...)
EOF = "eof"  # a live stream ended
STALL = "stall"  # no frame for stall_timeout_s
FAILURE_KINDS = (OPEN, READ, EOF, STALL)


@dataclass
class SourceStats:
    frames_decoded: int = 0  # frames out of the decoder (before sampling)
    frames_emitted: int = 0  # frames handed to the caller
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    reconnects: int = 0  # times the stream came back after being lost
    up: bool = False  # the current connection is delivering frames
    last_frame_monotonic: float | None = None  # clock.monotonic() of the last decoded frame
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_KINDS, 0))
    last_error: str | None = None  # the latest failure, credentials redacted

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def fail(self, kind: str, message: str) -> None:
        self.up = False
        self.failures[kind] = self.failures.get(kind, 0) + 1
        self.last_error = message

    def snapshot(self) -> SourceStats:
        """A copy that is safe to read while the source thread keeps counting.

        dict() copies in one step under the GIL, so a reason first counted
        mid-copy cannot break the reader.
        """
        return replace(self, dropped=dict(self.dropped), failures=dict(self.failures))
