"""POSTs to webhook targets lib/webhooks/targets.py checked: to a checked address, pooled, cut off at a deadline.

The connection goes to one of the target's checked addresses (no second
lookup), with the URL's host for TLS (SNI and certificate) and `Host`.
Redirects are never followed. The status is the answer: once it is in, the
body is read only to keep the connection for the next delivery, and only if
it is small (MAX_KEPT_BODY_BYTES) and comes within BODY_GRACE_SECONDS; else the
connection is dropped. A watchdog thread shuts a connection whose exchange
passes its deadline, however the receiver dribbles.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import http.client
import itertools
import socket
import ssl
import threading
import time
from typing import NamedTuple

from lib.webhooks.targets import Target

# A whole delivery, its lookup included (lib/webhooks/sending.py deliver).
DELIVERY_TIMEOUT_SECONDS = 10.0
# After the status: a body read to keep the connection is at most this big, and this quick.
MAX_KEPT_BODY_BYTES = 4 * 1024
BODY_GRACE_SECONDS = 1.0


class Result(NamedTuple):
    """What one POST came to: an HTTP status, or the class of error that stopped it."""

    status: int | None
    error: str | None
    latency_ms: float

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and self.error is None


def _connect(address: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to exactly this address: no lookup of any kind (not even
    getaddrinfo's of a literal), so nothing can answer with another one."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Plain HTTP to a checked address (allowed only with private targets)."""

    exchange = 0  # requests made on it so far (the watchdog watches one exchange)
    finished = False  # set when the exchange is over: the watchdog leaves it alone
    cut_off = False  # set by the watchdog at the deadline

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address, self._timeout = address, timeout

    def connect(self) -> None:
        self.sock = _connect(self._address, self.port, self._timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to a checked address; SNI and certificate checked against the URL's host."""

    exchange = 0  # requests made on it so far (the watchdog watches one exchange)
    finished = False  # set when the exchange is over: the watchdog leaves it alone
    cut_off = False  # set by the watchdog at the deadline

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address, self._timeout, self._tls = address, timeout, context

    def connect(self) -> None:
        self.sock = self._tls.wrap_socket(_connect(self._address, self.port, self._timeout), server_hostname=self.host)


@functools.cache
def _tls() -> ssl.SSLContext:
    # Made on first use: loading the system's CA certificates costs tens of milliseconds at import.
    return ssl.create_default_context()


class _Watchdog:
    """One thread that cuts off connections past their deadline (shutting their
    socket down wakes any read or write blocked on it), shared by all requests:
    a timer thread per request costs more than the request."""

    GRANULARITY = 0.25

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _PinnedHTTPConnection | _PinnedHTTPSConnection, int]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, conn: _PinnedHTTPConnection | _PinnedHTTPSConnection, exchange: int) -> None:
        """Cut `conn` off at `deadline` (time.monotonic()) unless that exchange (a kept-alive
        connection has several) is `finished` first; its `cut_off` then says so."""
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="webhook-watchdog", daemon=True)
                self._thread.start()
            # With one timeout for all, deadlines only grow: the thread needs waking only when
            # it sleeps with nothing to watch, or when this deadline comes before all others.
            if not self._heap or deadline < self._heap[0][0]:
                self._changed.notify()
            heapq.heappush(self._heap, (deadline, next(self._order), conn, exchange))

    def _run(self) -> None:
        with self._changed:
            while True:
                while self._heap and self._over(self._heap[0]):
                    heapq.heappop(self._heap)  # finished in time
                if not self._heap:
                    self._changed.wait()
                    continue
                deadline, _, conn, exchange = self._heap[0]
                left = deadline - time.monotonic()
                if left > 0:
                    # At most GRANULARITY late, and one wake-up per GRANULARITY however busy.
                    self._changed.wait(left + self.GRANULARITY)
                    continue
                heapq.heappop(self._heap)
                if not self._over((deadline, 0, conn, exchange)):
                    conn.cut_off = True
                    sock = conn.sock
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _over(entry: tuple[float, int, _PinnedHTTPConnection | _PinnedHTTPSConnection, int]) -> bool:
        _, _, conn, exchange = entry
        return bool(conn.exchange != exchange or conn.finished)


_watchdog = _Watchdog()


# A pooled connection's (scheme, host, port, address): one checked address of one target.
_Key = tuple[str, str, int, str]


class _Pool:
    """Idle keep-alive connections, by (scheme, host, port, checked address).

    A connection is only ever reused for the address it was opened to, and
    only after the URL passed the rules again (resolve()). Reuse spares a
    TCP and a TLS handshake per delivery. Bounded: MAX_IDLE_PER_KEY per key,
    MAX_KEYS keys (least recently used closed first), MAX_IDLE_SECONDS idle.
    """

    MAX_IDLE_PER_KEY = 32  # above the threads an instance runs (16), so none is closed for want of room
    MAX_KEYS = 512
    # Below the idle timeouts servers and load balancers commonly use (60 s and more).
    MAX_IDLE_SECONDS = 20.0

    def __init__(self) -> None:
        self._idle: dict[_Key, list[tuple[float, _PinnedHTTPConnection | _PinnedHTTPSConnection]]] = {}
        self._lock = threading.Lock()

    def take(self, key: _Key) -> _PinnedHTTPConnection | _PinnedHTTPSConnection | None:
        stale = []
        found = None
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                since, conn = idle.pop()
                if time.monotonic() - since < self.MAX_IDLE_SECONDS:
                    found = conn
                    break
                stale.append(conn)
        for conn in stale:
            conn.close()
        return found

    def give(self, key: _Key, conn: _PinnedHTTPConnection | _PinnedHTTPSConnection) -> None:
        evicted = []
        kept = False
        with self._lock:
            idle = self._idle.pop(key, [])
            self._idle[key] = idle  # most recently used last
            if len(idle) < self.MAX_IDLE_PER_KEY:
                idle.append((time.monotonic(), conn))
                kept = True
            while len(self._idle) > self.MAX_KEYS:
                oldest = next(iter(self._idle))
                evicted += [c for _, c in self._idle.pop(oldest)]
        for extra in ([] if kept else [conn]) + evicted:
            extra.close()


_pool = _Pool()


def post(
    target: Target,
    body: bytes,
    headers: dict[str, str],
    timeout: float = DELIVERY_TIMEOUT_SECONDS,
    tls_context: ssl.SSLContext | None = None,
) -> Result:
    """POST `body` to a checked target, connecting only to its checked addresses.

    Never raises for what the receiver does: the Result says what happened.
    The whole exchange (connect, TLS, request, status) ends by `timeout`. A
    connection the receiver keeps alive, its small answer read to the end
    within BODY_GRACE_SECONDS, is kept for the next delivery to the same
    address (_Pool); one found closed by the receiver before answering is
    replaced by a new one, once.
    """
    started = time.monotonic()
    deadline = started + timeout
    outcome: tuple[int | None, str | None] = (None, "timeout")
    for index, address in enumerate(target.addresses):
        key = (target.scheme, target.host, target.port, address)
        conn = _pool.take(key)
        if conn is not None:
            outcome, stale = _exchange(conn, key, target, body, headers, deadline, reused=True)
            if not stale:
                break
        if deadline <= time.monotonic():
            outcome = (None, "timeout")
            break
        if target.scheme == "https":
            conn = _PinnedHTTPSConnection(
                target.host, target.port, address, deadline - time.monotonic(), tls_context or _tls()
            )
        else:
            conn = _PinnedHTTPConnection(target.host, target.port, address, deadline - time.monotonic())
        outcome, unreachable = _exchange(conn, key, target, body, headers, deadline, reused=False)
        if not unreachable or index == len(target.addresses) - 1:
            break
        # Not connected: the next checked address may answer.
    status, error = outcome
    return Result(status, error, round((time.monotonic() - started) * 1000, 1))


def _exchange(
    conn: _PinnedHTTPConnection | _PinnedHTTPSConnection,
    key: _Key,
    target: Target,
    body: bytes,
    headers: dict[str, str],
    deadline: float,
    reused: bool,
) -> tuple[tuple[int | None, str | None], bool]:
    """One request on `conn`: ((status, error), try-again), where try-again
    means a reused connection was found closed before any answer (`reused`), or a
    new one could not connect (not `reused`)."""
    conn.exchange += 1
    conn.finished = conn.cut_off = False
    _watchdog.watch(deadline, conn, conn.exchange)
    keep = connected = False
    try:
        if reused:
            conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        else:
            conn.connect()
        connected = True
        conn.request("POST", target.path, body=body, headers=headers)
        response = conn.getresponse()
        if conn.cut_off:  # the status line came, the headers were still dribbling at the deadline
            return (None, "timeout"), False
        keep = _drain(conn, response, deadline)
        return (response.status, None), False
    except ssl.SSLError as exc:
        if conn.cut_off:
            return (None, "timeout"), False
        error = "tls_certificate_error" if isinstance(exc, ssl.SSLCertVerificationError) else "tls_error"
        return (None, error), False
    except (OSError, http.client.HTTPException) as exc:
        if conn.cut_off or isinstance(exc, TimeoutError):
            return (None, "timeout"), False
        stale = reused and isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError))
        return (None, _error_class(exc)), stale or (not reused and not connected)
    finally:
        conn.finished = True
        if keep:
            _pool.give(key, conn)
        else:
            conn.close()


def _drain(
    conn: _PinnedHTTPConnection | _PinnedHTTPSConnection, response: http.client.HTTPResponse, deadline: float
) -> bool:
    """Read a small answer's body to keep the connection; whether it may be kept. A body
    of unknown length, or bigger than MAX_KEPT_BODY_BYTES, is not read at all, and a small
    one gets BODY_GRACE_SECONDS (within the deadline): the status was the answer."""
    if response.will_close or response.length is None or response.length > MAX_KEPT_BODY_BYTES:
        return False
    _watchdog.watch(min(deadline, time.monotonic() + BODY_GRACE_SECONDS), conn, conn.exchange)
    try:
        response.read(response.length)
    except (OSError, http.client.HTTPException):
        return False
    return response.isclosed() and not conn.cut_off


def _error_class(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(exc, ConnectionResetError):
        return "connection_reset"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection_closed"
    if isinstance(exc, http.client.HTTPException):
        return "invalid_http_response"
    return "connection_error"
