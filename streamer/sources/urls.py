"""Camera URLs: which kind of stream each one is, checked up front, plus the scheme registry.

Built in (all opened with PyAV): rtsp, rtsps, http, https (MJPEG, HLS, mp4 ...),
file:// and plain paths. Other schemes (``synthetic://``) are plugged in with
``register_scheme`` by the module that implements them.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from .config import SourceConfig, SourceError
from .frame import FrameStream

NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")
FILE_SCHEME = "file"
BUILTIN_SCHEMES = NETWORK_SCHEMES + (FILE_SCHEME,)

_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]*$")  # RFC 3986, lowercased

StreamFactory = Callable[[SourceConfig], FrameStream]


@dataclass(frozen=True)
class SchemePlugin:
    factory: StreamFactory  # opens one connection; raising SourceError means misconfigured (not retried)
    finite: bool  # True: end of stream is the end (like a file); False: it is a lost camera, reconnect
    validate: Callable[[str], None] | None  # raises SourceError for a bad URL, at construction time


@dataclass(frozen=True)
class Target:
    scheme: str  # "rtsp", ..., "file", or a plugin's scheme
    open_url: str  # what av.open gets (a filesystem path for files)
    redacted: str  # the URL with any password hidden: the only form that goes into logs and errors
    plugin: SchemePlugin | None = None

    @property
    def is_network(self) -> bool:
        return self.scheme in NETWORK_SCHEMES

    @property
    def finite(self) -> bool:
        """Whether end of stream means the source is done (unless looping) rather than lost."""
        if self.plugin is not None:
            return self.plugin.finite
        return self.scheme == FILE_SCHEME


_plugins: dict[str, SchemePlugin] = {}
_plugins_lock = threading.Lock()


def register_scheme(
    scheme: str,
    factory: StreamFactory,
    *,
    finite: bool = False,
    validate: Callable[[str], None] | None = None,
) -> None:
    """Make ``scheme://...`` URLs open through ``factory(cfg)``; registering again replaces it."""
    if not isinstance(scheme, str) or not _SCHEME_RE.fullmatch(scheme):
        raise ValueError(f"scheme must match {_SCHEME_RE.pattern}; found {scheme!r}")
    if scheme in BUILTIN_SCHEMES:
        raise ValueError(f"scheme {scheme!r} is built in and cannot be replaced")
    with _plugins_lock:
        _plugins[scheme] = SchemePlugin(factory, finite, validate)


def unregister_scheme(scheme: str) -> None:
    with _plugins_lock:
        _plugins.pop(scheme, None)


def registered_schemes() -> tuple[str, ...]:
    with _plugins_lock:
        return BUILTIN_SCHEMES + tuple(sorted(_plugins))


def redact(url: str) -> str:
    """Hide the password of ``scheme://user:password@host``; cameras put credentials in URLs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def resolve(url: str) -> Target:
    """Classify and check ``url``; raise SourceError with a message fit for an operator."""
    shown = redact(url)
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:
        raise SourceError(f"malformed url {shown!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if not scheme:
        # A plain path is taken verbatim: '#' and '?' are legal in file names.
        return _file_target(url.strip(), shown)
    if scheme in NETWORK_SCHEMES:
        try:
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
        except ValueError as exc:
            raise SourceError(f"bad port in url {shown!r}: {exc}") from None
        if not parts.hostname:
            raise SourceError(f"url {shown!r} has no host; expected {scheme}://host[:port]/path")
        return Target(scheme, url.strip(), shown)
    if scheme == FILE_SCHEME:
        if parts.netloc not in ("", "localhost"):
            raise SourceError(
                f"file url {shown!r} names host {parts.netloc!r}; use file:///absolute/path "
                "(three slashes) or a plain path"
            )
        return _file_target(unquote(parts.path), shown)
    with _plugins_lock:
        plugin = _plugins.get(scheme)
    if plugin is None:
        raise SourceError(
            f"unknown url scheme {scheme!r} in {shown!r}; supported: {', '.join(registered_schemes())} "
            "(or a plain file path)"
        )
    if plugin.validate is not None:
        plugin.validate(url)
    return Target(scheme, url.strip(), shown, plugin)


def _file_target(path: str, shown: str) -> Target:
    if not path:
        raise SourceError(f"url {shown!r} names no file")
    if not os.path.exists(path):
        raise SourceError(f"video file not found: {os.path.abspath(path)} (from url {shown!r})")
    if not os.path.isfile(path):
        raise SourceError(f"not a regular file: {os.path.abspath(path)} (from url {shown!r})")
    if not os.access(path, os.R_OK):
        raise SourceError(f"video file not readable: {os.path.abspath(path)} (from url {shown!r})")
    return Target(FILE_SCHEME, path, shown)
