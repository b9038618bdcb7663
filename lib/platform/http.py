"""Serving a request: its path routed (werkzeug's routing; a wrong method is a 405 with `Allow`), its body read
within bounds before anything answers, every answer JSON (an error in the envelope) with `X-Request-Id` and
`Cache-Control: no-store` (bodies hold bearer URLs), and one structured log line per request (lib/platform/logs.py).
"""

from __future__ import annotations

import json
import re
import time
import traceback
from collections.abc import Callable
from typing import IO, Any

import flask
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule

from lib.platform import logs, server
from lib.platform.errors import ApiError, MethodNotAllowed, NotFound, PayloadTooLarge, RequestTimeout, UriTooLong

Result = tuple[int, dict[str, Any], dict[str, str]]
# Our longest route is ~50 characters; anything past this is refused before routing.
MAX_PATH_BYTES = 2048
# A request body is at most this (the create's JSON is a few hundred bytes).
MAX_BODY_BYTES = 64 * 1024

# (request, its body as read, the path's parameters); what it notes (logs.note) is on the request's log line
Handler = Callable[[flask.Request, bytes, dict[str, str]], Result]
# Each route's template (`/v1/uploads/{upload_id}`: the log line's `route`, a label of the request
# metrics that stays few-valued) and the methods it answers.
Routes = tuple[tuple[str, dict[str, Handler]], ...]
Router = Callable[[str], tuple[dict[str, Handler], dict[str, str], str]]


def router(routes: Routes) -> Router:
    """The path's route: its handlers by method, the path's parameters, its template.

    werkzeug's routing matches the path alone (its rules take any method), so a wrong method is our
    405 with the route's own `Allow`, never werkzeug's, which adds HEAD to every GET.

    Raises:
        NotFound: no route has that path.
    """
    handlers = dict(routes)
    rules = Map(
        [Rule(re.sub(r"\{(\w+)\}", r"<\1>", template), endpoint=template) for template in handlers], merge_slashes=False
    )
    adapter = rules.bind("")

    def route(path: str) -> tuple[dict[str, Handler], dict[str, str], str]:
        if path.startswith("//"):  # werkzeug's matcher drops extra leading slashes; no route of ours has them
            raise NotFound()
        try:
            template, params = adapter.match(path)
        except HTTPException:  # no rule matches (or a redirect a rule without its trailing slash never asks)
            raise NotFound() from None
        return handlers[template], {name: str(value) for name, value in params.items()}, str(template)

    return route


def serve(request: flask.Request, route: Router, project: str | None) -> flask.Response:
    """The answer to `request`, routed by `route`; `project` names the log line's trace."""
    started = time.perf_counter()
    request_id = logs.request_id(request.headers.get("X-Request-Id"))
    # `route` is replaced by the matched route's template; "(none)": no route matched.
    with logs.collecting(request_id=request_id, route="(none)") as log:
        status, body, headers = _answer(request, route, log)
    return respond(request, status, body, headers, request_id, log, started, project)


def _answer(request: flask.Request, route: Router, log: dict[str, Any]) -> Result:
    """What the route's handler answers, or the envelope of what it raised (said on the log line)."""
    try:
        if len(request.path) > MAX_PATH_BYTES:
            raise UriTooLong(MAX_PATH_BYTES)
        # Every request's body is read (at most 64 KiB, each read bounded by
        # lib/platform/server.py) before anything can answer early: otherwise
        # functions-framework reads it after our answer, unbounded by us.
        server.headers_read()
        try:
            raw = read_body(request.stream, request.content_length, before_read=server.in_time)
        except server.BODY_FRAMING_ERRORS as exc:
            raise server.body_refusal(exc) from None
        server.body_read()
        methods, params, log["route"] = route(request.path)
        handler = methods.get(request.method)
        if handler is None:
            raise MethodNotAllowed(tuple(methods))
        return handler(request, raw, params)
    except ApiError as err:
        log["error_code"] = err.code
        if err.reason is not None:
            log["reason"] = err.reason
        elif err.__cause__ is not None:
            log["reason"] = f"{type(err.__cause__).__name__}: {err.__cause__}"[:500]
        return err.status, err.envelope(), err.headers
    except Exception as exc:  # noqa: BLE001 - the envelope for anything unexpected
        internal = ApiError()
        log.update(
            error_code=internal.code, reason=f"{type(exc).__name__}: {exc}"[:500], stack_trace=traceback.format_exc()
        )
        return internal.status, internal.envelope(), internal.headers


def not_found(project: str | None) -> flask.Response:
    """The envelope's 404 for a path the framework answers itself (/robots.txt, /favicon.ico)."""
    err = NotFound()
    request_id = logs.request_id(flask.request.headers.get("X-Request-Id"))
    log = {"request_id": request_id, "route": "(none)", "error_code": err.code}
    return respond(
        flask.request, err.status, err.envelope(), err.headers, request_id, log, time.perf_counter(), project
    )


def respond(
    request: flask.Request,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str],
    request_id: str,
    log: dict[str, Any],
    started: float,
    project: str | None,
) -> flask.Response:
    # Ends with a newline, so a shell prompt after curl starts on a line of its own.
    # allow_nan=False: a NaN or Infinity is no JSON a client can parse; refusing it here makes any
    # that got past the models (lib/api/models.py MediaFacts) a logged 500, never a body clients choke on.
    payload = json.dumps(body, separators=(",", ":"), allow_nan=False) + "\n"
    # functions-framework reads the rest of the request body after each response
    # unless the response is streamed. A response that closes the connection
    # (408: the body stalled; 413: it is too large) is streamed, so it does not.
    content = iter([payload]) if headers.get("Connection") == "close" else payload
    response = flask.Response(content, status=status, mimetype="application/json")
    response.headers.update(headers)
    response.headers["X-Request-Id"] = request_id
    response.headers["Cache-Control"] = "no-store"
    _log_request(request, status, log, started, project)
    return response


def _log_request(request: flask.Request, status: int, log: dict[str, Any], started: float, project: str | None) -> None:
    logs.emit(
        logs.request_line(
            request.method,
            request.path,
            status,
            time.perf_counter() - started,
            log,
            project,
            request.headers.get("X-Cloud-Trace-Context"),
        )
    )


def read_body(
    stream: IO[bytes],
    content_length: int | None,
    limit: int = MAX_BODY_BYTES,
    before_read: Callable[[], bool] = lambda: True,
) -> bytes:
    """The raw body, at most `limit` bytes, without reading an oversized one whole.

    `before_read` is asked before each read: False means the request's deadline
    (lib/platform/server.py) has passed, whose watchdog also ends a read that outlasts it.

    Raises:
        PayloadTooLarge: declared or actual length over the limit.
        RequestTimeout: the body stopped arriving (a read timed out, or the deadline passed).
    """
    if content_length is not None and content_length > limit:
        raise PayloadTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        if not before_read():
            raise RequestTimeout()
        try:
            chunk = stream.read(min(_READ_SIZE, limit + 1 - size))
        except (BlockingIOError, TimeoutError):
            # The server's per-read timeout (lib/platform/server.py): the client stopped sending.
            raise RequestTimeout() from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise PayloadTooLarge(limit)
    if content_length is not None and size < content_length:
        raise RequestTimeout()  # it ended short: the client stopped sending, or its time ran out
    return b"".join(chunks)


_READ_SIZE = 16 * 1024
