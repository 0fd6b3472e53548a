"""ZeroMQ handshakes that fail, seen from either side of a CURVE connection (docs/DEPLOY.md, "ZeroMQ over tcp: CURVE").

libzmq reports each handshake to a socket's monitor. :class:`Monitor` reads
those events for a few sockets, on a thread of its own or on the caller's.
infer's :class:`crowdwatch.wire.CurveServer` counts with it the clients it
refuses; :class:`RefusalWatch` is the other side, every CURVE client (ingest,
web, the scheduler's uncertainty feed, adapt's announcements): a connection its
server refused becomes one log line per endpoint and reason a minute that says
what to check, and ``on_refused(socket, reason)`` for a stage that exports it.

Without it a refused client says nothing, and stays refused: libzmq (4.3.5)
does not connect again after the server refused the client's key, not even
once infer allows it, so its frames or subscriptions simply go nowhere. The
thread that owns the sockets calls :meth:`RefusalWatch.heal` from its loop,
which connects such an endpoint again after a backoff (2 s doubling to 60 s),
so a client put on the allow-list later counts again without a restart.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

FAILED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
REFUSED = ("not_allowed", "bad_handshake")
"""Why a CURVE connection was refused: ``not_allowed``, a client key not on infer's allow-list;
``bad_handshake``, a handshake that failed: a client without CURVE, one holding another server public
key, or a connection closed before its handshake (a port scan, a TCP health check). Which side of a
plaintext client notices first is a race, so there is no reliable reason of its own; the log line says
"does not use CURVE" when libzmq could tell."""
LOG_EVERY_S = 60.0
RECONNECT_INITIAL_S = 2.0  # a refused key is tried again after this, doubling ...
RECONNECT_MAX_S = 60.0     # ... up to this
POLL_MS = 200  # how soon a monitor thread sees stop()

Event = dict[str, Any]  # recv_monitor_message's: event, value, endpoint


class Throttle:
    """At most one line per key every ``every_s``; the lines held back are counted and told with the next.

    Thread-safe: infer's ZAP handler and its monitor thread share one.
    """

    def __init__(self, every_s: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic, max_keys: int = 1000) -> None:
        self.every_s, self.clock, self.max_keys = every_s, clock, max_keys
        self._said: dict[Hashable, tuple[float, int]] = {}  # key -> (time of its last line, lines held back since)
        self._lock = threading.Lock()

    def __call__(self, key: Hashable) -> str | None:
        """None: hold this line back; else the suffix for a line said now ("" or " (N more since the last line)")."""
        now = self.clock()
        with self._lock:
            last, since = self._said.get(key, (-math.inf, 0))
            if now - last < self.every_s:
                self._said[key] = (last, since + 1)
                return None
            if len(self._said) >= self.max_keys:  # many keys or peers: forget the old ones
                self._said.clear()
            self._said[key] = (now, 0)
        return f" ({since} more since the last line)" if since else ""


class Monitor:
    """The monitor events (a mask of ``zmq.EVENT_*``) of some sockets, each handed to ``on_event(name, event)``.

    :meth:`watch` each socket on the thread that owns it, before it binds or
    connects (a refused client does not try again: its one event must not be
    missed). Then read the events on a thread of their own (:meth:`start`) or
    on the caller's (:meth:`poll`). :meth:`stop` before the context terminates:
    it closes the monitor sockets, which would hold it open.
    """

    def __init__(self, events: int, on_event: Callable[[str, Event], None]) -> None:
        self.events, self.on_event = events, on_event
        self._watched: list[tuple[zmq.Socket, zmq.Socket, str]] = []  # (socket, its monitor, name)
        self._poller = zmq.Poller()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def watching(self) -> bool:
        return bool(self._watched)

    def watch(self, sock: zmq.Socket, name: str) -> None:
        if self._thread is not None:
            raise RuntimeError("watch every socket before start()")
        mon = sock.get_monitor_socket(self.events)
        self._watched.append((sock, mon, name))
        self._poller.register(mon, zmq.POLLIN)

    def poll(self, timeout_ms: int) -> list[Event]:
        """Hand on the events waiting (for the first, up to ``timeout_ms``); returns them."""
        out: list[Event] = []
        names = {mon: name for _, mon, name in self._watched}
        for mon, _ in self._poller.poll(timeout_ms):
            try:
                ev = recv_monitor_message(mon, flags=zmq.NOBLOCK)
            except zmq.Again:
                continue
            except zmq.ZMQError:  # the watched socket closed
                self._poller.unregister(mon)
                continue
            if not ev["event"] & self.events:  # only what was asked for, whatever libzmq sends
                continue
            self.on_event(names[mon], ev)
            out.append(ev)
        return out

    def start(self) -> Monitor:
        """Read on a thread; none when nothing is watched (no CURVE)."""
        if self._watched and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="zmq-monitor", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.poll(POLL_MS)
        finally:
            self._close_monitors()

    def _close_monitors(self) -> None:
        for _, mon, _ in self._watched:
            mon.close(linger=0)

    def stop(self) -> None:
        """Stop reading and close the monitor sockets (on the watched sockets' thread, if they are still open)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        else:
            self._close_monitors()
        for sock, _, _ in self._watched:
            if not sock.closed:
                with contextlib.suppress(zmq.ZMQError):
                    sock.disable_monitor()


def server_refusal(event: int, value: int) -> tuple[str, str]:
    """(reason, what infer's log line says) of a handshake that failed on a bound CURVE socket."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return "not_allowed", "its CURVE key is not on the allow-list"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return "bad_handshake", "the client does not use CURVE"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return "bad_handshake", "the CURVE handshake failed (does the client hold this server's public key?)"
    return "bad_handshake", ("the connection closed during the handshake (a client without CURVE or with another server "
                             "public key, or a plain TCP connection)")  # fmt: skip


def client_refusal(event: int, value: int) -> tuple[str, str]:
    """(reason, what to check) of a handshake that failed on a CURVE client's socket."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # infer's ZAP handler said no (status 400)
        return "not_allowed", ("this client's public key (transport.curve.client_public_env) is not on infer's allow-list "
                               "(transport.curve.allowed_clients_env); add it there and restart infer: this client "
                               f"tries again at least every {RECONNECT_MAX_S:.0f} s")  # fmt: skip
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return "bad_handshake", "the server does not use CURVE; check that the endpoint is infer's and that CURVE is on for both"
    return "bad_handshake", ("the server ended the handshake; check that transport.curve.server_public_env holds infer's public "
                             "key (the server-public of the same crowdwatch keys generate set)")  # fmt: skip


class RefusalWatch:
    """A CURVE client's socket, watched for its server refusing it.

    Hand it to ``crowdwatch.wire.open_socket`` (or ``subscribe``, ``send_once``),
    which watches a CURVE client socket before it connects; :meth:`stop` it (or
    leave its ``with`` block) before the context terminates. Each refused
    connection calls ``on_refused(socket, reason)`` (reasons: :data:`REFUSED`)
    and is logged as a ``transport_refused`` error, at most once a minute per
    endpoint and reason. The events are read on a thread of its own, or, with
    ``background=False``, by :meth:`settle`. Without CURVE nothing is watched
    and no thread starts. A long-lived client calls :meth:`heal` from the
    thread that uses its socket.
    """

    def __init__(self, on_refused: Callable[[str, str], None] | None = None, log: logging.Logger | None = None,
                 throttle: Throttle | None = None, *, background: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.on_refused = on_refused
        self.log = log or logging.getLogger("crowdwatch.curve")
        self.throttle = throttle or Throttle()
        self.background = background
        self.clock = clock
        self.monitor = Monitor(FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED, self._event)
        self._sockets: dict[str, zmq.Socket] = {}
        # (socket name, endpoint) refused for its key -> (when to connect again, the wait after that)
        self._retry: dict[tuple[str, str], tuple[float, float]] = {}
        self._lock = threading.Lock()

    def watch(self, sock: zmq.Socket, name: str) -> None:
        """Watch ``sock`` (one socket, not yet connected), which connects to infer's socket ``name`` (frames, results)."""
        self.monitor.watch(sock, name)
        self._sockets[name] = sock
        if self.background:
            self.monitor.start()

    @property
    def refused(self) -> list[tuple[str, str]]:
        """(socket name, endpoint) whose server refused this client's key and that has not shaken hands since."""
        with self._lock:
            return sorted(self._retry)

    def heal(self) -> int:
        """Connect again each endpoint that refused this client's key, once its wait is over; how many.

        Call it on the thread that uses the sockets (zmq sockets are not
        thread-safe). Cheap when there is nothing to do.
        """
        if not self._retry:
            return 0
        now = self.clock()
        with self._lock:
            due = [key for key, (at, _) in self._retry.items() if at <= now]
            for key in due:  # the wait stays: the next refusal doubles it, a handshake clears it
                self._retry[key] = (math.inf, self._retry[key][1])
        for name, endpoint in due:
            sock = self._sockets.get(name)
            if sock is None or sock.closed:
                continue
            with contextlib.suppress(zmq.ZMQError):  # ENOENT: nothing left to disconnect
                sock.disconnect(endpoint)
            sock.connect(endpoint)
            self.log.info("connecting again to %s (%s socket), refused before", endpoint, name, extra={"event": "transport_reconnect"})
        return len(due)

    def stop(self) -> None:
        self.monitor.stop()

    def __enter__(self) -> RefusalWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def settle(self, timeout_s: float) -> str | None:
        """With ``background=False``, for a short-lived socket: wait up to ``timeout_s`` for its handshake; the
        reason it was refused, else None (it succeeded, nothing was said in time, or nothing is watched)."""
        if not self.monitor.watching:
            return None
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            for ev in self.monitor.poll(max(1, int(left * 1000))):
                if ev["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    return None
                if ev["event"] & FAILED:
                    return client_refusal(ev["event"], ev["value"])[0]
        return None

    def _event(self, name: str, ev: Event) -> None:
        endpoint = ev["endpoint"].decode(errors="replace")
        if ev["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            with self._lock:
                self._retry.pop((name, endpoint), None)
            return
        if not ev["event"] & FAILED:
            return
        reason, check = client_refusal(ev["event"], ev["value"])
        if ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # the one refusal after which libzmq never connects again
            with self._lock:
                wait = self._retry.get((name, endpoint), (0.0, RECONNECT_INITIAL_S / 2))[1] * 2
                wait = min(max(wait, RECONNECT_INITIAL_S), RECONNECT_MAX_S)
                self._retry[(name, endpoint)] = (self.clock() + wait, wait)
        if self.on_refused is not None:
            self.on_refused(name, reason)
        more = self.throttle((endpoint, reason))
        if more is not None:
            self.log.error("the CURVE server at %s refused this client's connection to its %s socket (%s): %s%s", endpoint, name,
                           reason, check, more, extra={"event": "transport_refused"})  # fmt: skip
