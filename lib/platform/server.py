"""The HTTP server the function runs in: functions-framework's gunicorn, made safe.

Cloud Functions serves `main.py` with `functions-framework`, which runs
gunicorn's threaded worker with `limit_request_line = 0` (no limit on a
request line) and no read timeout. Two findings followed (docs/reliability.md):
a 10 MB path cost 9 s of CPU and 240 MB of memory before the function ran,
and 8 half-sent requests held all 8 threads until their clients gave up.
Google does not document that Cloud Run's front end refuses either (see
docs/reliability.md), so the function bounds them itself. Importing this module (main.py
does, before functions-framework builds its server) makes the server:

- refuse request lines over MAX_REQUEST_LINE bytes (gunicorn: 414);
- give each read of a request at most READ_TIMEOUT_SECONDS (SO_RCVTIMEO on
  every connection), so a stalled client frees its thread;
- give a request's line, headers and body REQUEST_DEADLINE_SECONDS in all,
  however they dribble: at the deadline a watchdog answers 408 and closes when
  the line and headers are not in, and stops the body's reading when they are
  (lib/platform/http.py then answers 408 itself: read_body);
- send `Connection: close` whenever an answer says it closes (gunicorn drops
  the application's Connection header otherwise), so a client never reuses a
  connection the server then closes; gunicorn itself closes as RFC 9112 9.6
  asks (half-close, read and discard briefly, then close);
- answer what gunicorn refuses itself (malformed HTTP, over-long lines and
  headers) in the API's JSON envelope, with one structured log line, and a body
  whose chunked framing it cannot follow a 400 there too (`body_refusal`, main.py).

Everything else is functions-framework's own configuration, unchanged.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from functions_framework._http import gunicorn as ff_gunicorn
from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine, NoMoreData, ParseException
from gunicorn.workers.gthread import ThreadWorker

from lib.platform import logs
from lib.platform.errors import ApiError, BadHttpRequest, RequestHeadersTooLarge, RequestTimeout, UriTooLong

# Longest request line (method, path, query, version): our routes need < 100.
MAX_REQUEST_LINE = 8190
# One read of a request (line, headers or body) waits at most this long.
READ_TIMEOUT_SECONDS = 10
# A request's line, headers and body, in all (install() takes the setting).
REQUEST_DEADLINE_SECONDS = 30.0
WORKER_CLASS = f"{__name__}.Worker"
_request = threading.local()  # the request this thread reads: its socket, deadline and watch


class _Watch:
    """One request being read: its line and headers (the server's part), then its body
    (main.py's), cut off at the deadline unless `done` first."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock, self.deadline = sock, deadline
        self._lock = threading.Lock()
        self._state = "headers"

    def body(self) -> None:
        with self._lock:
            if self._state == "headers":
                self._state = "body"

    def done(self) -> None:
        with self._lock:
            if self._state in ("headers", "body"):
                self._state = "done"

    def cut(self) -> None:
        """At the deadline: still in its headers, the server answers 408 and closes (the
        application never saw it); in its body, reading stops and main.py answers 408."""
        with self._lock:
            state = self._state
            if state in ("headers", "body"):
                self._state = "cut"
        if state == "body":
            _shutdown(self.sock, socket.SHUT_RD)  # the blocked read ends; http.read_body says 408
        elif state == "headers":
            err = RequestTimeout()
            request_id = secrets.token_hex(16)
            with contextlib.suppress(OSError):
                # Best effort, never blocking: a small answer fits the socket's buffer.
                self.sock.send(_raw_answer(err, request_id), socket.MSG_DONTWAIT)
            _shutdown(self.sock, socket.SHUT_RDWR)  # the blocked read ends; gunicorn closes
            logs.emit(
                {
                    "severity": "WARNING",
                    "message": f"(refused by the HTTP server) {err.status}",
                    "httpRequest": {"status": err.status},
                    "request_id": request_id,
                    "error_code": err.code,
                    "reason": f"request line and headers not complete within {REQUEST_DEADLINE_SECONDS:g} s",
                }
            )


def _shutdown(sock: socket.socket, how: int) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)


class _Watchdog:
    """One thread that cuts off requests whose line and headers pass their deadline."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Watch]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, deadline: float) -> _Watch:
        watched = _Watch(sock, deadline)
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="request-deadlines", daemon=True)
                self._thread.start()
            # With one deadline for all, they only grow: the thread needs waking only when it
            # sleeps with nothing to watch (not on every request: that costs each one a wake-up).
            if not self._heap:
                self._changed.notify()
            heapq.heappush(self._heap, (deadline, next(self._order), watched))
        return watched

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._changed.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                _, _, watched = heapq.heappop(self._heap)
            watched.cut()


_watchdog = _Watchdog()


def headers_read() -> None:
    """The request's line and headers are in (main.py, as a request reaches it): its body is next."""
    watched = getattr(_request, "watch", None)
    if watched is not None:
        watched.body()


def body_read() -> None:
    """The request's body is in: nothing more of it is watched."""
    watched = getattr(_request, "watch", None)
    if watched is not None:
        watched.done()


def in_time() -> bool:
    """Whether this thread's request is still within its deadline (always, outside the
    server: the tests' in-process app)."""
    deadline = getattr(_request, "deadline", None)
    return deadline is None or time.monotonic() < deadline


def _raw_answer(err: ApiError, request_id: str) -> bytes:
    """A complete HTTP/1.1 answer carrying `err`'s envelope, which closes the connection."""
    body = json.dumps(err.envelope(), separators=(",", ":")).encode() + b"\n"  # as main.py's answers end
    head = (
        f"HTTP/1.1 {err.status} {err.code}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Cache-Control: no-store\r\nX-Request-Id: {request_id}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class Worker(ThreadWorker):
    """gunicorn's threaded worker with a read timeout and JSON errors."""

    def enqueue_req(self, conn: Any) -> None:  # gunicorn's TConn, untyped there
        # A kernel-level receive timeout survives gthread's setblocking(True)
        # (a Python-level settimeout would not); a read past it fails with
        # EAGAIN, which ends the request and frees the thread.
        # Once per connection: gthread enqueues a keep-alive connection again for each request.
        if not getattr(conn, "framelane_timeout_set", False):
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", READ_TIMEOUT_SECONDS, 0))
            conn.framelane_timeout_set = True
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        # The request's deadline runs from when a thread takes it up (a connection with no data yet
        # waits on the poller, not here); its line and headers are watched until main.py has them.
        deadline = time.monotonic() + REQUEST_DEADLINE_SECONDS
        _request.sock, _request.deadline = conn.sock, deadline
        _request.watch = _watchdog.watch(conn.sock, deadline)
        try:
            return super().handle(conn)
        finally:
            _request.watch.done()
            _request.sock = _request.deadline = _request.watch = None

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        if not isinstance(exc, ParseException):
            super().handle_error(req, client, addr, exc)
            return
        err = refusal(exc)
        request_id = secrets.token_hex(16)
        with contextlib.suppress(OSError):  # the client is gone; nothing to tell it
            util.write_nonblock(client, _raw_answer(err, request_id))
        # Never the request line or a header: they are the client's bytes, possibly huge or secret.
        logs.emit(
            {
                "severity": logs.severity_for(err.status),
                "message": f"(refused by the HTTP server) {err.status}",
                "httpRequest": {"status": err.status},
                "request_id": request_id,
                "error_code": err.code,
                "reason": type(exc).__name__,
            }
        )


# What gunicorn's body readers raise for framing it cannot follow (a chunk size that is no hex number, a
# chunk without its CRLF, a chunked body that ends before its last chunk): the client's fault, a 400.
BODY_FRAMING_ERRORS = (ParseException, NoMoreData)


def body_refusal(exc: Exception) -> ApiError:
    """The error for a body whose framing gunicorn cannot follow. The connection closes with it:
    where the next request would start on it is unknowable."""
    return BadHttpRequest(
        "The request body's framing is malformed (Transfer-Encoding: chunked as RFC 9112 "
        "section 7.1 defines it, or Content-Length).",
        headers={"Connection": "close"},
        reason=type(exc).__name__,
    )


def refusal(exc: ParseException) -> ApiError:
    """The error for a request the HTTP server cannot parse."""
    if isinstance(exc, LimitRequestLine):
        return UriTooLong(MAX_REQUEST_LINE)
    if isinstance(exc, LimitRequestHeaders):
        return RequestHeadersTooLarge()
    return BadHttpRequest()


class _QuietSlowClients(logging.Filter):
    """A read that timed out is a slow or gone client, not an error with a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (BlockingIOError, TimeoutError)):
            logs.emit(
                {
                    "severity": "WARNING",
                    "message": "(dropped by the HTTP server) request read timed out",
                    "reason": f"no data for {READ_TIMEOUT_SECONDS} s",
                }
            )
            return False
        return True


def install(request_deadline_seconds: float = REQUEST_DEADLINE_SECONDS) -> None:
    """Make functions-framework's gunicorn use the settings above (idempotent), a request's
    line, headers and body given `request_deadline_seconds` in all."""
    global REQUEST_DEADLINE_SECONDS
    REQUEST_DEADLINE_SECONDS = request_deadline_seconds
    application = ff_gunicorn.GunicornApplication
    if getattr(application.load_config, "_framelane", False):
        return
    original: Callable[[Any], None] = application.load_config
    process_headers = wsgi.Response.process_headers

    def closing_headers(self: wsgi.Response, headers: Iterable[tuple[str, str]]) -> None:
        headers = list(headers)  # read twice below
        # gunicorn drops the application's Connection header; an answer that says it
        # closes (408, 413: lib/platform/errors.py) must say so on the wire, and close.
        if any(name.lower() == "connection" and value.strip().lower() == "close" for name, value in headers):
            self.force_close()
        process_headers(self, headers)

    def load_config(self: Any) -> None:
        original(self)
        self.cfg.set("limit_request_line", MAX_REQUEST_LINE)
        # functions-framework picks its own worker only for THREADED_TIMEOUT_ENABLED, which we never set.
        if self.cfg.worker_class_str in ("sync", "gthread"):
            self.cfg.set("worker_class", WORKER_CLASS)

    load_config._framelane = True  # type: ignore[attr-defined]  # marks the patch, so it is made once
    # Patched on purpose: functions-framework builds this class itself, so we cannot subclass it.
    application.load_config = load_config  # type: ignore[method-assign]
    # Patched on purpose, as above: gunicorn makes its Response itself.
    wsgi.Response.process_headers = closing_headers  # type: ignore[method-assign]
    logging.getLogger("gunicorn.error").addFilter(_QuietSlowClients())
