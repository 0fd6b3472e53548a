"""The one small HTTP base of the exporter (/metrics), the web stage and the labelling tool.

    server = GuardedServer((host, port), Handler, access=Access.for_bind(host, "CROWDWATCH_TOKEN"),
                           limits=Limits(max_connections=256, request_timeout_s=15), on_refuse=count)

``Handler`` subclasses :class:`GuardedHandler` (a ``BaseHTTPRequestHandler``).
What the base does for every server:

* **Access.** A server bound beyond localhost needs a secret from the
  environment (:meth:`Access.for_bind`; without one it does not start, and the
  error names the variable). Every request then carries it as
  ``Authorization: Bearer TOKEN``, as HTTP basic auth with TOKEN as the
  password (any user name), or as ``?token=TOKEN`` (which also sets an
  HttpOnly cookie, so a browser's page loads its streams and API calls too);
  anything else gets a 401. ``/healthz`` and ``/readyz`` stay open for probes.
  A localhost bind stays open, as before.
* **Limits.** At most ``max_connections`` connections are served at once;
  more get an immediate 503 and are closed. A request's line and headers must
  arrive within ``request_timeout_s`` (slowloris clients are dropped) and a
  socket idle that long is closed. The listen backlog is large
  (``Limits.backlog``) so that a burst of clients is queued, not refused or
  left hanging.

Every refusal is passed to ``on_refuse(reason)`` (reasons: :data:`REFUSALS`),
which the stages turn into ``crowd_http_refused_total{stage,reason}``.
This module imports nothing from ``streamer`` or ``adapt``: both use it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("crowdwatch.http")

DEFAULT_TOKEN_ENV = "CROWDWATCH_TOKEN"
COOKIE = "crowdwatch_token"
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
REFUSALS = ("unauthorized", "too_many_connections", "too_many_streams", "slow_client")
_503 = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 34\r\nRetry-After: 5\r\nConnection: close\r\n\r\n{\"error\": \"too many connections\"}\n"


class AccessError(ValueError):
    """A bind beyond localhost without its secret."""


def is_local(host: str) -> bool:
    """True for loopback binds (127.0.0.0/8, ::1, localhost); a wildcard or any other address is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: may resolve to anything


@dataclass(frozen=True)
class Access:
    """Who may talk to a server: anyone (``token`` None) or holders of ``token``."""

    token: str | None = None
    env: str = DEFAULT_TOKEN_ENV

    @classmethod
    def for_bind(cls, host: str, env: str = DEFAULT_TOKEN_ENV, environ: Mapping[str, str] | None = None) -> Access:
        """Open on localhost; beyond it the secret in ``$env`` is required (:class:`AccessError` without one)."""
        if is_local(host):
            return cls(None, env)
        token = (os.environ if environ is None else environ).get(env, "")
        if not token.strip():
            raise AccessError(f"listening on {host} (beyond localhost) requires a secret: set the environment variable {env} "
                              f"([server] auth_token_env); clients then send it as a Bearer token, basic-auth password or ?token=")
        return cls(token.strip(), env)

    @property
    def required(self) -> bool:
        return self.token is not None

    def check(self, value: str | None) -> bool:
        return value is not None and self.token is not None and hmac.compare_digest(value.encode(), self.token.encode())

    def credential(self, headers: Mapping[str, str], query: str) -> tuple[bool, bool]:
        """(allowed, via the query string) for one request."""
        auth = headers.get("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and self.check(value.strip()):
            return True, False
        if scheme.lower() == "basic":
            try:
                _user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                password = None
            if self.check(password):
                return True, False
        if self.check((parse_qs(query).get("token") or [None])[0]):
            return True, True
        try:
            cookie = SimpleCookie(headers.get("Cookie") or "")
        except CookieError:
            return False, False
        morsel = cookie.get(COOKIE)
        return (self.check(morsel.value) if morsel else False), False


@dataclass(frozen=True)
class Limits:
    max_connections: int = 256     # served at once; more get a 503
    request_timeout_s: float = 15.0  # a request's head must arrive within this; an idle socket is closed after it
    backlog: int = 1024            # listen queue (the kernel caps it at net.core.somaxconn)


class GuardedServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer with :class:`Access`, :class:`Limits` and refusal counting (IPv6 when the host has a colon)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, access: Access | None = None,
                 limits: Limits | None = None, on_refuse: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.access = access or Access()
        self.limits = limits or Limits()
        self.request_queue_size = self.limits.backlog
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._on_refuse = on_refuse
        self._active = 0
        self._active_lock = threading.Lock()
        super().__init__(address, handler)

    @property
    def active(self) -> int:
        with self._active_lock:
            return self._active

    def refused(self, reason: str) -> None:
        if self._on_refuse is not None:
            try:
                self._on_refuse(reason)
            except Exception:  # noqa: BLE001 - counting must never break serving
                log.exception("refusal callback failed")

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        with self._active_lock:
            full = self._active >= self.limits.max_connections
            if not full:
                self._active += 1
        if full:
            self.refused("too_many_connections")  # counted before the client can see the answer
            try:
                request.settimeout(1.0)
                request.sendall(_503)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self._active_lock:
                self._active -= 1
            raise

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1


class GuardedHandler(BaseHTTPRequestHandler):
    """Base of every crowdwatch HTTP handler: the server's access check, head deadline and idle timeout."""

    server: GuardedServer
    open_paths = OPEN_PATHS
    _set_cookie = False
    _deadline: threading.Timer | None = None
    _served = 0

    def setup(self) -> None:
        self.timeout = self.server.limits.request_timeout_s  # StreamRequestHandler applies it to the socket
        super().setup()

    def handle_one_request(self) -> None:
        self._deadline = threading.Timer(self.server.limits.request_timeout_s, self._too_slow)
        self._deadline.daemon = True
        self._deadline.start()
        try:
            super().handle_one_request()
        finally:
            self._deadline.cancel()
            self._served += 1

    def _too_slow(self) -> None:
        """The request's head did not arrive in time: drop the connection."""
        if self._served == 0:  # not an idle keep-alive connection between requests
            self.server.refused("slow_client")
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if self._deadline is not None:
            self._deadline.cancel()  # the head is in; a long response (a stream) is fine
        if not ok:
            return False
        self._set_cookie = False
        access = self.server.access
        if not access.required:
            return True
        url = urlsplit(self.path)
        if access.token and access.token in self.requestline:
            self.requestline = self.requestline.replace(access.token, "***")  # never in a log line
        if url.path in self.open_paths:
            return True
        allowed, via_query = access.credential(self.headers, url.query)
        if allowed:
            self._set_cookie = via_query
            return True
        self.server.refused("unauthorized")
        body = b'{"error": "unauthorized: send the token as a Bearer token, a basic-auth password or ?token="}\n'
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="crowdwatch", charset="UTF-8"')
        self.send_header("WWW-Authenticate", 'Bearer realm="crowdwatch"')
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD":
            self.wfile.write(body)
        return False

    def end_headers(self) -> None:
        if self._set_cookie and self.server.access.token:
            self.send_header("Set-Cookie", f"{COOKIE}={self.server.access.token}; Path=/; HttpOnly; SameSite=Strict")
            self._set_cookie = False
        super().end_headers()
