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

from lib import auth, events, idempotency, lifecycle, logs, models, oidc, push, server, uploads as media, webhooks
from lib.clients import firestore_client, publisher, session_http, storage_client
from lib.config import ConfigError, Settings, get_settings
from lib.errors import (ApiError, MethodNotAllowed, NotFound, ServiceUnavailable, SessionNotEnded,
                        UploadNotFound, UploadTooLarge, UriTooLong, ValidationFailed, WebhookDeliveryFailed)

# Before functions-framework builds its gunicorn (it imports this module first).
server.install()

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

Result = tuple[int, dict[str, Any], dict[str, str]]
# Our longest route is ~50 characters; anything past this is refused before routing.
MAX_PATH_BYTES = 2048
# The sweep starts no record after SWEEP_BUDGET_SECONDS and no upstream step
# after SWEEP_BUDGET_SECONDS + SWEEP_GRACE_SECONDS; a step takes at most ~8 s
# (lib/clients.py), so a call ends by ~45 s, inside the function's timeout (60 s).
SWEEP_BUDGET_SECONDS = 25.0
SWEEP_GRACE_SECONDS = 12.0
# Records settled at once. Each is ~4 sequential upstream calls and almost no
# CPU, so the rate grows with workers until the instance's CPU binds (docs/operations.md,
# "Capacity"; bench (i)).
SWEEP_WORKERS = 32
# ?shards=A-B: the slice of lib/lifecycle.py's shards one scheduler job sweeps.
_SHARD_RANGE = re.compile(r"(?P<first>[0-9]{1,3})-(?P<last>[0-9]{1,3})")


def create_upload(request: flask.Request, raw: bytes, log: dict[str, Any], _params: dict[str, str]) -> Result:
    """POST /v1/uploads: authenticate, validate, (claim,) mint, record, (complete,) answer."""
    settings = get_settings()
    db = firestore_client(settings.firestore)
    key = _authenticate(request, log, db)

    idem_key = idempotency.parse_key(request.headers.get("Idempotency-Key"))
    upload = models.validate_upload_request(models.parse_json_object(raw))
    content_type = media.normalize_content_type(upload.content_type)
    if upload.size_bytes is not None and upload.size_bytes > settings.max_upload_bytes:
        raise UploadTooLarge(settings.max_upload_bytes)
    extension = media.choose_extension(upload.filename, content_type)
    # A backend minting for a browser names it; else a browser calling us directly is its own origin.
    origin = upload.cors_origin or media.browser_origin(request.headers.get("Origin"))

    def mint() -> tuple[models.UploadOut, str, dict[str, Any]]:
        upload_id, name = media.new_upload(key.workspace_id, extension, key.mode)
        url = media.mint_session(storage_client(settings.firestore.project), settings.upload_bucket, name,
                                 content_type, origin, upload.size_bytes, upload.crc32c, upload.md5)
        created, expires = media.lifetime(media.now(), settings.upload_url_ttl_seconds)
        out = models.UploadOut(
            id=upload_id,
            upload_url=url,
            source_url=media.source_url(settings.cdn_base_url, name),
            expires_at=media.rfc3339(expires),
        )
        record = lifecycle.new_fields(upload_id, key.workspace_id, key.mode, name, content_type, upload.size_bytes,
                                      created, expires, url, upload.crc32c, upload.md5)
        log["upload_id"] = upload_id
        return out, upload_id, record

    if idem_key is None:
        out, upload_id, record = mint()
        lifecycle.create_record(db, upload_id, record)
        return 201, out.model_dump(), {}

    def work() -> tuple[dict[str, Any], tuple[Any, dict[str, Any]]]:
        out, upload_id, record = mint()
        # One atomic commit: the upload is recorded if and only if the key completes.
        return out.model_dump(), (lifecycle.ref(db, upload_id), record)

    body, replayed = idempotency.once(db, key.workspace_id, key.mode, idem_key, upload.fingerprint(content_type),
                                      settings.idempotency_ttl_seconds, settings.idempotency_lease_seconds, work,
                                      on_claim_left=lambda: log.update(claim_left_to_lease=True))
    if not replayed:
        return 201, body, {}
    log["idempotent_replayed"] = True
    # In the model's field order (Firestore gives a map's keys back sorted).
    replay = {name: body[name] for name in models.UploadOut.model_fields if name in body}
    return 200, replay, {"Idempotent-Replayed": "true"}


def get_upload(request: flask.Request, _raw: bytes, log: dict[str, Any], params: dict[str, str]) -> Result:
    """GET /v1/uploads/{id}: the upload, its status brought up to date."""
    def unsettled(exc: SessionNotEnded) -> None:
        log["unsettled"] = exc.reason

    return _on_upload(request, log, params["upload_id"],
                      lambda db, gcs, record: lifecycle.refresh(db, gcs, record, media.now(), unsettled))


def cancel_upload(request: flask.Request, _raw: bytes, log: dict[str, Any], params: dict[str, str]) -> Result:
    """POST /v1/uploads/{id}/cancel: cancel the session; idempotent; 409 once completed."""
    return _on_upload(request, log, params["upload_id"], lifecycle.cancel)


def _on_upload(request: flask.Request, log: dict[str, Any], upload_id: str,
               act: Callable[[Any, lifecycle.Storage, lifecycle.Record], lifecycle.Record]) -> Result:
    """Authenticate, load the caller's upload, `act` on it, answer with it."""
    settings = get_settings()
    db = firestore_client(settings.firestore)
    key = _authenticate(request, log, db)
    record = lifecycle.load(db, key.workspace_id, key.mode, upload_id)
    log["upload_id"] = record.id
    record = act(db, _storage(settings, log), record)
    return 200, lifecycle.view(record, settings.cdn_base_url).model_dump(), {}


def run_sweep(request: flask.Request, _raw: bytes, log: dict[str, Any], _params: dict[str, str]) -> Result:
    """POST /internal/sweep (Cloud Scheduler, OIDC): expire uploads pending past expires_at."""
    settings = get_settings()
    oidc.verify(request.headers.get("Authorization"), settings.sweep_audience, settings.sweep_service_account,
                _certs(settings))
    failures: list[str] = []

    def on_error(upload_id: str, exc: BaseException) -> None:
        cause = exc.__cause__ or exc
        reason = getattr(exc, "reason", None)
        failures.append(f"{upload_id}: {type(cause).__name__}" + (f" ({reason})" if reason else ""))

    shards = _sweep_shards(request.args.get("shards"))
    log["sweep_shards"] = f"{shards.start}-{shards.stop - 1}"
    started = time.monotonic()
    db = firestore_client(settings.firestore)
    result = lifecycle.sweep(db, _storage(settings, log), media.now(), SWEEP_BUDGET_SECONDS, SWEEP_GRACE_SECONDS,
                             workers=SWEEP_WORKERS, on_error=on_error, shards=shards)
    log["sweep"] = result.as_dict()
    if failures:
        log["sweep_failures"] = failures[:20]
    if settings.webhooks_topic is not None and time.monotonic() - started < SWEEP_BUDGET_SECONDS:
        # Events whose publish failed after their state change was stored.
        try:
            owed = webhooks.owed(db, media.now(), shards=shards)
            if owed:
                webhooks.announce(publisher(settings.firestore.project), settings.webhooks_topic, owed)
            log["webhooks_republished"] = len(owed)
        except Exception as exc:  # noqa: BLE001 - the sweep's own work is done; the next run tries again
            log["webhooks_republish_failed"] = _failure(exc)
    if result.failed:
        # Done work stays done; the scheduler's retry (or the next run) takes the rest.
        raise ServiceUnavailable(retry_after=30, details={"sweep": result.as_dict()})
    return 200, result.as_dict(), {}


def _sweep_shards(value: str | None) -> range:
    """The shards a sweep call covers: all, or `A-B` (inclusive) from its scheduler job."""
    if value is None:
        return range(lifecycle.SWEEP_SHARDS)
    match = _SHARD_RANGE.fullmatch(value)
    if match is None or not int(match["first"]) <= int(match["last"]) < lifecycle.SWEEP_SHARDS:
        raise ValidationFailed(details={"fields": [{
            "field": "shards", "type": "invalid",
            "message": f"shards must be A-B with 0 <= A <= B < {lifecycle.SWEEP_SHARDS}"}]})
    return range(int(match["first"]), int(match["last"]) + 1)


def storage_event(request: flask.Request, raw: bytes, log: dict[str, Any], _params: dict[str, str]) -> Result:
    """POST /internal/storage-events (Pub/Sub push, OIDC): a finalized object completes its upload."""
    settings = get_settings()
    event = events.from_push(push.receive(request.headers.get("Authorization"), raw, settings.events_audience,
                                          settings.events_service_account, _certs(settings), "events"))
    log.update(event_type=event.event_type, message_id=event.message_id[:64])
    if event.upload_id is not None:
        log["upload_id"] = event.upload_id
    outcome = events.handle(firestore_client(settings.firestore), _storage(settings, log), event)
    log["outcome"] = outcome
    return 200, {"outcome": outcome}, {}


def webhook_message(request: flask.Request, raw: bytes, log: dict[str, Any], _params: dict[str, str]) -> Result:
    """POST /internal/webhooks (Pub/Sub push, OIDC): fan an event out, or deliver it to one endpoint."""
    settings = get_settings()
    message = _webhook_push(request, raw, log, settings)
    db = firestore_client(settings.firestore)
    if message.kind == webhooks.KIND_EVENT:
        if settings.webhooks_topic is None:
            raise ServiceUnavailable(reason="WEBHOOKS_TOPIC is not set: cannot fan out")
        try:
            queued = webhooks.fan_out(db, publisher(settings.firestore.project), settings.webhooks_topic,
                                      message.upload_id, settings.cdn_base_url)
        except UploadNotFound:
            log["outcome"] = "ignored_unknown_upload"
            return 200, {"outcome": "ignored_unknown_upload"}, {}
        log.update(outcome="fanned_out", deliveries=queued)
        return 200, {"outcome": "fanned_out", "deliveries": queued}, {}

    delivery = message.delivery()
    log.update(event_id=delivery.event_id, endpoint_id=delivery.endpoint_id[:64], attempt=delivery.attempt)

    outcome = webhooks.deliver(db, delivery, settings.webhook_allow_private_targets, media.now(),
                               endpoints=webhooks.endpoint_cache(), record=webhooks.attempt_log(db).add)
    log["outcome"] = outcome.label
    if outcome.result is not None:
        log.update(receiver_status=outcome.result.status, receiver_error=outcome.result.error,
                   receiver_latency_ms=outcome.result.latency_ms)
    if outcome.refused is not None:
        log["refused"] = outcome.refused
    if outcome.label == "failed":
        log["severity"] = "WARNING"  # the customer's endpoint failed, not us
        raise WebhookDeliveryFailed()
    return 200, {"outcome": outcome.label}, {}


def webhook_dead_letter(request: flask.Request, raw: bytes, log: dict[str, Any], _params: dict[str, str]) -> Result:
    """POST /internal/webhook-dead-letters (the dead-letter topic's push, OIDC): record what Pub/Sub gave up on."""
    settings = get_settings()
    message = _webhook_push(request, raw, log, settings)
    db = firestore_client(settings.firestore)
    if message.kind == webhooks.KIND_EVENT:
        # The event stays owed on its record: the sweep publishes it again.
        log.update(outcome="event_dead_lettered", severity="ERROR")
        return 200, {"outcome": "event_dead_lettered"}, {}
    delivery = message.delivery()
    log.update(event_id=delivery.event_id, endpoint_id=delivery.endpoint_id[:64])
    outcome = webhooks.dead_lettered(db, delivery, media.now())
    log.update(outcome=outcome, severity="WARNING")
    return 200, {"outcome": outcome}, {}


def _webhook_push(request: flask.Request, raw: bytes, log: dict[str, Any], settings: Settings) -> webhooks.Message:
    message = webhooks.Message.from_push(push.receive(
        request.headers.get("Authorization"), raw, settings.webhooks_audience, settings.webhooks_service_account,
        _certs(settings), "webhooks", webhooks.INVALID_PUSH))
    log.update(kind=message.kind, message_id=message.message_id[:64])
    if message.upload_id:
        log["upload_id"] = message.upload_id[:64]
    return message


def _certs(settings: Settings) -> oidc.CertCache:
    """The instance's cache of Google's certificates, for every OIDC-checked route."""
    return oidc.cert_cache(settings.oidc_certs_url, session_http())


def _authenticate(request: flask.Request, log: dict[str, Any], db: Any) -> auth.ApiKey:
    key = auth.authenticate(db, request.headers.get("Authorization"),
                            auth.lookup_cache(get_settings().api_key_cache_ttl_seconds))
    log.update(workspace_id=key.workspace_id, key_prefix=key.prefix)
    return key


def _failure(exc: BaseException) -> str:
    """What went wrong, for the log: the backend's error behind our 503, else the error itself."""
    cause = exc.__cause__ if isinstance(exc, ServiceUnavailable) else None
    return type(cause or exc).__name__


def _storage(settings: Settings, log: dict[str, Any]) -> lifecycle.Storage:
    return lifecycle.Storage(storage_client(settings.firestore.project), settings.upload_bucket, session_http(),
                             _announcer(settings, log))


def _announcer(settings: Settings, log: dict[str, Any]) -> Callable[[lifecycle.Record], None] | None:
    """Publishes each state change's webhook event; a failure leaves it owed, for the sweep."""
    if settings.webhooks_topic is None:
        return None
    topic = settings.webhooks_topic

    def announce(record: lifecycle.Record) -> None:
        # The state change is stored whatever happens here, and the answer must say so: a failed
        # publish (Pub/Sub down, or misconfigured) leaves the event owed for the sweep, and the log says why.
        try:
            webhooks.announce(publisher(settings.firestore.project), topic, [record])
        except Exception as exc:  # noqa: BLE001
            log["webhook_owed"] = _failure(exc)

    return announce


def health(_request: flask.Request, _raw: bytes, _log: dict[str, Any], _params: dict[str, str]) -> Result:
    """Liveness for uptime checks: no authentication, no upstream call, nothing
    about the deployment. An answer means an instance is serving this code."""
    return 200, {"status": "ok"}, {}


# (request, its body as read, the log line's fields, the path's parameters)
Handler = Callable[[flask.Request, bytes, dict[str, Any], dict[str, str]], Result]
# Path patterns (whole-path matches) and the methods each answers.
ROUTES: tuple[tuple[re.Pattern[str], dict[str, Handler]], ...] = (
    (re.compile(r"/v1/uploads"), {"POST": create_upload}),
    (re.compile(r"/v1/uploads/(?P<upload_id>[^/]+)"), {"GET": get_upload}),
    (re.compile(r"/v1/uploads/(?P<upload_id>[^/]+)/cancel"), {"POST": cancel_upload}),
    (re.compile(r"/internal/sweep"), {"POST": run_sweep}),
    (re.compile(r"/internal/storage-events"), {"POST": storage_event}),
    (re.compile(r"/internal/webhooks"), {"POST": webhook_message}),
    (re.compile(r"/internal/webhook-dead-letters"), {"POST": webhook_dead_letter}),
    # Cloud Run reserves some paths ending in "z" (its known issues advise avoiding
    # them all), so the uptime check probes /health; /healthz is the usual name.
    (re.compile(r"/health"), {"GET": health}),
    (re.compile(r"/healthz"), {"GET": health}),
)
# Each route's path as a template (`/v1/uploads/{upload_id}`): the log line's
# `route`, a label of the request metrics that stays few-valued.
TEMPLATES = {pattern: re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern.pattern) for pattern, _ in ROUTES}


def _route(path: str) -> tuple[dict[str, Handler], dict[str, str], str]:
    for pattern, methods in ROUTES:
        match = pattern.fullmatch(path)
        if match:
            return methods, match.groupdict(), TEMPLATES[pattern]
    raise NotFound()


@functions_framework.http
def uploads(request: flask.Request) -> flask.Response:
    started = time.perf_counter()
    request_id = _request_id(request.headers.get("X-Request-Id"))
    # `route` is replaced by the matched route's template; "(none)": no route matched.
    log: dict[str, Any] = {"request_id": request_id, "route": "(none)"}
    try:
        if len(request.path) > MAX_PATH_BYTES:
            raise UriTooLong(MAX_PATH_BYTES)
        # Every request's body is read (at most 64 KiB, each read bounded by
        # lib/server.py) before anything can answer early: otherwise
        # functions-framework reads it after our answer, unbounded by us.
        raw = models.read_body(request.stream, request.content_length)
        methods, params, log["route"] = _route(request.path)
        handler = methods.get(request.method)
        if handler is None:
            raise MethodNotAllowed(tuple(methods))
        status, body, headers = handler(request, raw, log, params)
    except ApiError as err:
        status, body, headers = err.status, err.envelope(), err.headers
        log["error_code"] = err.code
        if err.reason is not None:
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
    log = {"request_id": request_id, "route": "(none)", "error_code": err.code}
    return _respond(flask.request, err.status, err.envelope(), err.headers, request_id, log, time.perf_counter())


def _request_id(incoming: str | None) -> str:
    if incoming and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return secrets.token_hex(16)


def _respond(request: flask.Request, status: int, body: dict[str, Any], headers: dict[str, str],
             request_id: str, log: dict[str, Any], started: float) -> flask.Response:
    # Ends with a newline, so a shell prompt after curl starts on a line of its own.
    payload = json.dumps(body, separators=(",", ":")) + "\n"
    # functions-framework reads the rest of the request body after each response
    # unless the response is streamed. A response that closes the connection
    # (408: the body stalled; 413: it is too large) is streamed, so it does not.
    content = iter([payload]) if headers.get("Connection") == "close" else payload
    response = flask.Response(content, status=status, mimetype="application/json")
    response.headers.update(headers)
    response.headers["X-Request-Id"] = request_id
    response.headers["Cache-Control"] = "no-store"
    _log_request(request, status, log, started)
    return response


def _log_request(request: flask.Request, status: int, log: dict[str, Any], started: float) -> None:
    stack = log.pop("stack_trace", None)
    path = logs.bounded(request.path)
    entry: dict[str, Any] = {
        "severity": logs.severity_for(status),
        # Error Reporting groups entries whose message is a stack trace.
        "message": stack or f"{logs.bounded(request.method, 16)} {path} {status}",
        "httpRequest": {
            "requestMethod": logs.bounded(request.method, 16),
            "requestUrl": path,
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
