"""Cloud Function entrypoint `uploads`: route, read the request, call lib, render.

Every response is JSON, carries `X-Request-Id` and `Cache-Control: no-store`
(bodies hold bearer URLs), and every non-2xx body is the error envelope. One
structured log line is written per request (lib/logs.py).
"""

from __future__ import annotations

import json
import re
import secrets
import time
import traceback
from typing import Any, Callable

import flask
import functions_framework
from werkzeug.exceptions import HTTPException

from lib import auth, idempotency, logs, models, uploads as media
from lib.clients import firestore_client, storage_client
from lib.config import ConfigError, get_settings
from lib.errors import ApiError, InvalidApiKey, MethodNotAllowed, NotFound

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

Result = tuple[int, dict[str, Any], dict[str, str]]


def create_upload(request: flask.Request, log: dict[str, Any]) -> Result:
    """POST /v1/uploads: authenticate, validate, (claim,) mint, (complete,) answer."""
    settings = get_settings()
    db = firestore_client(settings.firestore)
    key = auth.authenticate(db, request.headers.get("Authorization"),
                            auth.lookup_cache(settings.api_key_cache_ttl_seconds))
    log.update(workspace_id=key.workspace_id, key_prefix=key.prefix)

    idem_key = idempotency.parse_key(request.headers.get("Idempotency-Key"))
    body = models.parse_json_object(models.read_body(request.stream, request.content_length))
    upload = models.validate_upload_request(body)
    content_type = media.normalize_content_type(upload.content_type)
    extension = media.choose_extension(upload.filename, content_type)
    origin = media.browser_origin(request.headers.get("Origin"))

    def mint() -> dict[str, Any]:
        name = media.new_object_name(key.workspace_id, extension)
        url = media.mint_session(
            storage_client(settings.firestore.project), settings.upload_bucket, name, content_type, origin
        )
        out = models.UploadOut(
            upload_url=url,
            source_url=media.source_url(settings.cdn_base_url, name),
            expires_at=media.expiry(media.now(), settings.upload_url_ttl_seconds),
        )
        return out.model_dump()

    if idem_key is None:
        return 201, mint(), {}

    outcome = idempotency.begin(
        db, key.workspace_id, idem_key, idempotency.fingerprint(body),
        settings.idempotency_ttl_seconds, settings.idempotency_lease_seconds,
    )
    if isinstance(outcome, idempotency.Replay):
        log["idempotent_replayed"] = True
        # Through the model, so the replay has the original's field order.
        replay = models.UploadOut.model_validate(outcome.body).model_dump()
        return 200, replay, {"Idempotent-Replayed": "true"}
    try:
        out = mint()
        idempotency.complete(db, outcome, out)
    except BaseException:
        # Nothing this request stored may block the client's retry.
        if not idempotency.release(db, outcome):
            log["claim_left_to_lease"] = True
        raise
    return 201, out, {}


ROUTES: dict[str, dict[str, Callable[[flask.Request, dict[str, Any]], Result]]] = {
    "/v1/uploads": {"POST": create_upload},
}


@functions_framework.http
def uploads(request: flask.Request) -> flask.Response:
    started = time.perf_counter()
    request_id = _request_id(request.headers.get("X-Request-Id"))
    log: dict[str, Any] = {"request_id": request_id}
    try:
        methods = ROUTES.get(request.path)
        if methods is None:
            raise NotFound()
        handler = methods.get(request.method)
        if handler is None:
            raise MethodNotAllowed(tuple(methods))
        status, body, headers = handler(request, log)
    except ApiError as err:
        status, body, headers = err.status, err.envelope(), err.headers
        log["error_code"] = err.code
        if isinstance(err, InvalidApiKey):
            log["reason"] = err.reason
        elif err.__cause__ is not None:
            log["reason"] = f"{type(err.__cause__).__name__}: {err.__cause__}"[:500]
    except Exception as exc:  # noqa: BLE001 - the envelope for anything unexpected
        err = ApiError()
        status, body, headers = err.status, err.envelope(), err.headers
        log["error_code"] = err.code
        log["reason"] = f"{type(exc).__name__}: {exc}"[:500]
        log["stack_trace"] = traceback.format_exc()
    return _respond(request, status, body, headers, request_id, log, started)


@functions_framework.errorhandler(404)
def _framework_not_found(_exc: HTTPException) -> flask.Response:
    """The framework answers /robots.txt and /favicon.ico itself; keep the envelope there too."""
    err = NotFound()
    request_id = _request_id(flask.request.headers.get("X-Request-Id"))
    log = {"request_id": request_id, "error_code": err.code}
    return _respond(flask.request, err.status, err.envelope(), err.headers, request_id, log, time.perf_counter())


def _request_id(incoming: str | None) -> str:
    if incoming and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return secrets.token_hex(16)


def _respond(request: flask.Request, status: int, body: dict[str, Any], headers: dict[str, str],
             request_id: str, log: dict[str, Any], started: float) -> flask.Response:
    response = flask.Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")
    response.headers.update(headers)
    response.headers["X-Request-Id"] = request_id
    response.headers["Cache-Control"] = "no-store"
    _log_request(request, status, log, started)
    return response


def _log_request(request: flask.Request, status: int, log: dict[str, Any], started: float) -> None:
    stack = log.pop("stack_trace", None)
    entry: dict[str, Any] = {
        "severity": logs.severity_for(status),
        # Error Reporting groups entries whose message is a stack trace.
        "message": stack or f"{request.method} {request.path} {status}",
        "httpRequest": {
            "requestMethod": request.method,
            "requestUrl": request.path,
            "status": status,
            "latency": f"{time.perf_counter() - started:.6f}s",
        },
    }
    try:
        project = get_settings().firestore.project
    except ConfigError:
        project = None
    entry.update(logs.trace_field(project, request.headers.get("X-Cloud-Trace-Context")))
    entry.update(log)
    logs.emit(entry)
