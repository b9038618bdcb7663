"""POSTs to webhook targets lib/webhooks/targets.py checked: to a checked address, pooled, cut off at a deadline.

The pools are urllib3's: one per checked address (a PoolManager keyed by scheme, address, port and the URL's
host, the least recently used dropped first), whose connections go to that address and no other (no second
lookup), with the URL's host for TLS (SNI and certificate) and `Host`. The exchange on a connection is
http.client's (urllib3's connections are http.client's, extended): urllib3's request and response layers
(retries, redirects, decoding) are work a delivery never wants, so nothing is retried or redirected. The
status is the answer: once it is in, the body is read only to keep the
connection for the next delivery, and only if it is small (MAX_KEPT_BODY_BYTES) and comes within
BODY_GRACE_SECONDS; else the connection is dropped.

What stays ours is the watchdog: urllib3's timeouts bound each read, not an exchange, so one thread shuts a
connection whose exchange passes its deadline, however the receiver dribbles.
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
from typing import NamedTuple, cast

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ClosedPoolError, HTTPError, ProtocolError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from lib.platform.logs import keep_urls_out_of_urllib3
from lib.webhooks.targets import Target

# A whole delivery, its lookup included (lib/webhooks/sending.py deliver).
DELIVERY_TIMEOUT_SECONDS = 10.0
# After the status: a body read to keep the connection is at most this big, and this quick.
MAX_KEPT_BODY_BYTES = 4 * 1024
BODY_GRACE_SECONDS = 1.0
# Idle connections kept per checked address (above the threads an instance runs, 16, so none is closed for
# want of room), addresses kept, and how long a connection may idle: below the idle timeouts servers and
# load balancers commonly use (60 s and more).
MAX_IDLE_PER_ADDRESS = 32
MAX_ADDRESSES = 512
MAX_IDLE_SECONDS = 20.0

keep_urls_out_of_urllib3()  # a webhook URL may carry the customer's token


class Result(NamedTuple):
    """What one POST came to: an HTTP status, or the class of error that stopped it."""

    status: int | None
    error: str | None
    latency_ms: float

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and self.error is None


def _connect(address: str, port: int, timeout: float | None) -> socket.socket:
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


class _PinnedHTTPConnection(HTTPConnection):
    """Plain HTTP to a checked address (allowed only with private targets), watched while in use."""

    exchange = 0  # exchanges made on it so far (the watchdog watches one)
    finished = False  # set when the exchange is over: the watchdog leaves it alone
    cut_off = False  # set by the watchdog at the deadline
    idle_since = 0.0  # when its last exchange ended (kept for the next)

    def _new_conn(self) -> socket.socket:
        timeout = self.timeout if isinstance(self.timeout, (int, float)) else None  # the pool always sets one
        return _connect(self._dns_host, self.port, timeout)


class _PinnedHTTPSConnection(_PinnedHTTPConnection, HTTPSConnection):
    """TLS to a checked address; SNI and certificate checked against the URL's host (the pool's server_hostname)."""


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _PinnedHTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _PinnedHTTPSConnection


_pools = urllib3.PoolManager(num_pools=MAX_ADDRESSES, maxsize=MAX_IDLE_PER_ADDRESS, block=False, retries=False)
_pools.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


@functools.cache
def _tls() -> ssl.SSLContext:
    # Made on first use: loading the system's CA certificates costs tens of milliseconds at import.
    return ssl.create_default_context()


def _pool(target: Target, address: str, tls_context: ssl.SSLContext | None) -> urllib3.HTTPConnectionPool:
    """The pool of connections to `address` for `target`'s host."""
    if target.scheme != "https":
        return _pools.connection_from_host(address, target.port, "http")
    return _pools.connection_from_host(
        address,
        target.port,
        "https",
        # server_hostname is what ssl sends (SNI) and checks the certificate against (the context checks
        # hostnames); an assert_hostname would have urllib3 turn that check off and do its own.
        pool_kwargs={"server_hostname": target.host, "ssl_context": tls_context or _tls()},
    )


def kept(target: Target, address: str, tls_context: ssl.SSLContext | None = None) -> int:
    """How many open connections to `address` the pool keeps for `target` (what the tests look at)."""
    idle = _pool(target, address, tls_context).pool
    return sum(1 for conn in list(idle.queue if idle else []) if conn is not None and conn.sock is not None)


class _Watchdog:
    """One thread that cuts off connections past their deadline (shutting their
    socket down wakes any read or write blocked on it), shared by all requests:
    a timer thread per request costs more than the request."""

    GRANULARITY = 0.25

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _PinnedHTTPConnection, int]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, conn: _PinnedHTTPConnection, exchange: int) -> None:
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
    def _over(entry: tuple[float, int, _PinnedHTTPConnection, int]) -> bool:
        _, _, conn, exchange = entry
        return bool(conn.exchange != exchange or conn.finished)


_watchdog = _Watchdog()


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
    address; one found closed by the receiver before answering is replaced by
    a new one, once.
    """
    started = time.monotonic()
    deadline = started + timeout
    outcome: tuple[int | None, str | None] = (None, "timeout")
    for index, address in enumerate(target.addresses):
        for _ in range(2):  # a kept connection found closed (or a pool dropped meanwhile) is replaced, once
            pool = _pool(target, address, tls_context)
            if deadline <= time.monotonic():
                return Result(None, "timeout", round((time.monotonic() - started) * 1000, 1))
            outcome, stale, connected = _exchange(pool, target, body, headers, deadline)
            if not stale:
                break
        if connected or index == len(target.addresses) - 1:
            break
        # Not connected: the next checked address may answer.
    status, error = outcome
    return Result(status, error, round((time.monotonic() - started) * 1000, 1))


def _host_header(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


def _exchange(
    pool: urllib3.HTTPConnectionPool, target: Target, body: bytes, headers: dict[str, str], deadline: float
) -> tuple[tuple[int | None, str | None], bool, bool]:
    """One request on a connection from `pool`: ((status, error), stale, connected), stale meaning a kept
    connection the receiver had closed before any answer, connected that a connection was made or reused.

    The pool's connections are taken and given back with its `_get_conn`/`_put_conn` (what its `urlopen`
    does around a request; urllib3 is pinned and tests/webhooks/test_targets.py holds the behaviour). Its
    `urlopen` costs a delivery more CPU than this (BENCHMARKS.md, (f)). A pool the manager dropped for a
    newer address (and closed) since `_pool` returned it counts as stale: the caller takes a new one."""
    try:
        conn = cast(_PinnedHTTPConnection, pool._get_conn())
    except ClosedPoolError as exc:
        return (None, _error_class(exc)), True, False
    if conn.sock is not None and time.monotonic() - conn.idle_since >= MAX_IDLE_SECONDS:
        conn.close()  # idle too long: the receiver may be closing it as we send
    reused = conn.sock is not None
    conn.exchange += 1
    conn.finished = conn.cut_off = False
    _watchdog.watch(deadline, conn, conn.exchange)
    keep = connected = False
    try:
        left = max(deadline - time.monotonic(), 0.001)
        if conn.sock is not None:
            conn.sock.settimeout(left)
        else:
            conn.timeout = left
            conn.connect()  # urllib3's: TLS with the URL's host as server_hostname
        connected = True
        http.client.HTTPConnection.request(
            conn, "POST", target.path, body=body, headers={**headers, "Host": _host_header(target)}
        )
        response = http.client.HTTPConnection.getresponse(conn)
        if conn.cut_off:  # the status line came, the headers were still dribbling at the deadline
            return (None, "timeout"), False, True
        keep = _drain(conn, response, deadline)
        return (response.status, None), False, True
    except (HTTPError, OSError, http.client.HTTPException) as exc:
        if conn.cut_off:
            return (None, "timeout"), False, connected
        return (None, _error_class(exc)), reused and _stale(exc), connected
    finally:
        conn.finished = True
        if keep:
            conn.idle_since = time.monotonic()
        else:
            conn.close()
        pool._put_conn(conn)  # kept open, or closed (the pool connects it again)


def _drain(conn: _PinnedHTTPConnection, response: http.client.HTTPResponse, deadline: float) -> bool:
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


def _cause(exc: BaseException) -> BaseException:
    """The error under urllib3's wrapping (ProtocolError's reason, SSLError's)."""
    if isinstance(exc, (ProtocolError, SSLError)) and exc.args and isinstance(exc.args[-1], BaseException):
        return exc.args[-1]
    return exc


def _stale(exc: BaseException) -> bool:
    cause = _cause(exc)
    return isinstance(cause, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError))


def _error_class(exc: BaseException) -> str:
    cause = _cause(exc)
    if isinstance(exc, SSLError) or isinstance(cause, ssl.SSLError):
        return "tls_certificate_error" if isinstance(cause, ssl.SSLCertVerificationError) else "tls_error"
    if isinstance(exc, Urllib3Timeout) or isinstance(cause, TimeoutError):
        return "timeout"
    if isinstance(cause, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(cause, ConnectionResetError):  # RemoteDisconnected is one too
        return "connection_reset"
    if isinstance(cause, http.client.HTTPException):
        return "invalid_http_response"
    return "connection_error"
