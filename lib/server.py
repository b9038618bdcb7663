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
- answer what gunicorn refuses itself (malformed HTTP, over-long lines and
  headers) in the API's JSON envelope, with one structured log line.

Everything else is functions-framework's own configuration, unchanged.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import struct

from functions_framework._http import gunicorn as ff_gunicorn
from gunicorn import util
from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine, ParseException
from gunicorn.workers.gthread import ThreadWorker

from lib import logs
from lib.errors import ApiError, BadHttpRequest, RequestHeadersTooLarge, UriTooLong

# Longest request line (method, path, query, version): our routes need < 100.
MAX_REQUEST_LINE = 8190
# One read of a request (line, headers or body) waits at most this long.
READ_TIMEOUT_SECONDS = 10
WORKER_CLASS = f"{__name__}.Worker"


class Worker(ThreadWorker):
    """gunicorn's threaded worker with a read timeout and JSON errors."""

    def enqueue_req(self, conn):
        # A kernel-level receive timeout survives gthread's setblocking(True)
        # (a Python-level settimeout would not); a read past it fails with
        # EAGAIN, which ends the request and frees the thread.
        # Once per connection: gthread enqueues a keep-alive connection again for each request.
        if not getattr(conn, "framelane_timeout_set", False):
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", READ_TIMEOUT_SECONDS, 0))
            conn.framelane_timeout_set = True
        super().enqueue_req(conn)

    def handle_error(self, req, client, addr, exc):
        if not isinstance(exc, ParseException):
            super().handle_error(req, client, addr, exc)
            return
        err = refusal(exc)
        request_id = secrets.token_hex(16)
        body = json.dumps(err.envelope(), separators=(",", ":")).encode() + b"\n"  # as main.py's answers end
        head = (f"HTTP/1.1 {err.status} {err.code}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"Cache-Control: no-store\r\nX-Request-Id: {request_id}\r\nContent-Length: {len(body)}\r\n\r\n")
        try:
            util.write_nonblock(client, head.encode("latin-1") + body)
        except OSError:
            pass  # the client is gone; nothing to tell it
        # Never the request line or a header: they are the client's bytes, possibly huge or secret.
        logs.emit({"severity": logs.severity_for(err.status), "message": f"(refused by the HTTP server) {err.status}",
                   "httpRequest": {"status": err.status}, "request_id": request_id, "error_code": err.code,
                   "reason": type(exc).__name__})


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
            logs.emit({"severity": "WARNING", "message": "(dropped by the HTTP server) request read timed out",
                       "reason": f"no data for {READ_TIMEOUT_SECONDS} s"})
            return False
        return True


def install() -> None:
    """Make functions-framework's gunicorn use the settings above (idempotent)."""
    application = ff_gunicorn.GunicornApplication
    if getattr(application.load_config, "_framelane", False):
        return
    original = application.load_config

    def load_config(self):
        original(self)
        self.cfg.set("limit_request_line", MAX_REQUEST_LINE)
        # functions-framework picks its own worker only for THREADED_TIMEOUT_ENABLED, which we never set.
        if self.cfg.worker_class_str in ("sync", "gthread"):
            self.cfg.set("worker_class", WORKER_CLASS)

    load_config._framelane = True  # type: ignore[attr-defined]  # marks the patch, so it is made once
    # Patched on purpose: functions-framework builds this class itself, so we cannot subclass it.
    application.load_config = load_config  # type: ignore[method-assign]
    logging.getLogger("gunicorn.error").addFilter(_QuietSlowClients())
