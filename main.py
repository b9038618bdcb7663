"""Cloud Function entrypoint `uploads`: route, read the request, call lib, render.

Every response is JSON, carries `X-Request-Id` and `Cache-Control: no-store`
(bodies hold bearer URLs), and every non-2xx body is the error envelope. One
structured log line is written per request (lib/platform/logs.py).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import traceback
from collections.abc import Callable
from typing import Any

import flask
import functions_framework
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule

from lib import wiring
from lib.api import auth, create, models, views
from lib.limits import counters, quotas
from lib.platform import clock, config, logs, oidc, push, server
from lib.platform.errors import (
    ApiError,
    DeliveryDeferred,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    UriTooLong,
    WebhookDeliveryFailed,
)
from lib.uploads import lifecycle, settling, storage_events, sweep
from lib.webhooks import messages, pushes


def _load_settings() -> config.Settings:
    """Read and check every setting now: a bad one stops the function from starting, so a
    revision that sets one never passes its startup probe and never serves (traffic stays on
    the revision serving before: docs/operations.md, "Configuration"), and the log names the
    setting and why."""
    try:
        return config.load()
    except config.ConfigError as exc:
        logs.emit({"severity": "CRITICAL", "message": f"the function cannot start: {exc}"})
        raise


SETTINGS = _load_settings()
WIRING = wiring.Wiring(SETTINGS)
# Before functions-framework builds its gunicorn (it imports this module first).
server.install(SETTINGS.request_deadline_seconds)

Result = tuple[int, dict[str, Any], dict[str, str]]
# Our longest route is ~50 characters; anything past this is refused before routing.
MAX_PATH_BYTES = 2048


def create_upload(request: flask.Request, raw: bytes, log: dict[str, Any], _params: dict[str, str]) -> Result:
    """POST /v1/uploads: authenticate, then create (lib/api/create.py)."""
    key = _authenticate(request, log)
    created = create.create(
        WIRING.db(),
        WIRING.gcs(),
        SETTINGS,
        WIRING.limiting(),
        key,
        request.headers.get("Idempotency-Key"),
        raw,
        request.headers.get("Origin"),
        log,
    )
    if created.replayed:
        return 200, created.body, {**created.headers, "Idempotent-Replayed": "true"}
    return 201, created.body, created.headers


def get_limits(request: flask.Request, _raw: bytes, log: dict[str, Any], _params: dict[str, str]) -> Result:
    """GET /v1/limits: the key's workspace's limits and where its mode stands (lib/limits/counters.py)."""
    key = _authenticate(request, log)
    limiting = WIRING.limiting()
    if not limiting.limiter.enabled:
        return 200, models.LimitsOut.off(key.mode).model_dump(), {}
    figures = quotas.for_workspace(WIRING.db(), key.workspace_id, limiting.defaults, log)
    usage = limiting.limiter.usage(key.workspace_id, key.mode, log)
    out = models.LimitsOut.counted(
        key.mode, figures.creates_per_minute, figures.max_pending_uploads, usage.creates, usage.pending
    )
    return 200, out.model_dump(), counters.headers(figures, usage)


def get_upload(request: flask.Request, _raw: bytes, log: dict[str, Any], params: dict[str, str]) -> Result:
    """GET /v1/uploads/{id}: the upload, its status brought up to date."""
    record = _own_upload(request, log, params["upload_id"])
    record = settling.refresh(
        WIRING.db(),
        WIRING.storage(log),
        record,
        clock.now(),
        lambda exc: log.update(unsettled=exc.reason),
        announce=WIRING.announcer(log),
    )
    return 200, views.view(record, SETTINGS.cdn_base_url).model_dump(), {}


def cancel_upload(request: flask.Request, _raw: bytes, log: dict[str, Any], params: dict[str, str]) -> Result:
    """POST /v1/uploads/{id}/cancel: cancel the session; idempotent; 409 once completed."""
    record = _own_upload(request, log, params["upload_id"])
    record = settling.cancel(WIRING.db(), WIRING.storage(log), record, announce=WIRING.announcer(log))
    return 200, views.view(record, SETTINGS.cdn_base_url).model_dump(), {}


def run_sweep(request: flask.Request, _raw: bytes, log: dict[str, Any], _params: dict[str, str]) -> Result:
    """POST /internal/sweep (Cloud Scheduler, OIDC): expire uploads pending past expires_at (lib/uploads/sweep.py)."""
    oidc.verify(
        request.headers.get("Authorization"), SETTINGS.sweep_audience, SETTINGS.sweep_service_account, WIRING.certs()
    )
    slice_ = sweep.shards(request.args.get("shards"))
    log["sweep_shards"] = f"{slice_.start}-{slice_.stop - 1}"  # also when the sweep's query fails
    # Many uploads settle in one sweep: what each verification read is not the request's to log.
    report = sweep.run(
        WIRING.db(), dataclasses.replace(WIRING.storage(log), log=None), clock.now(), slice_, WIRING.announcer(log)
    )
    log.update(report.log)
    if report.result.failed:
        # Done work stays done; the scheduler's retry (or the next run) takes the rest.
        raise ServiceUnavailable(retry_after=30, details={"sweep": report.result.as_dict()})
    return 200, report.result.as_dict(), {}


def storage_event(request: flask.Request, raw: bytes, log: dict[str, Any], _params: dict[str, str]) -> Result:
    """POST /internal/storage-events (Pub/Sub push, OIDC): a finalized object completes its upload."""
    event = storage_events.from_push(
        push.receive(
            request.headers.get("Authorization"),
            raw,
            SETTINGS.events_audience,
            SETTINGS.events_service_account,
            WIRING.certs(),
            "events",
        )
    )
    log.update(event_type=event.event_type, message_id=event.message_id[:64])
    if event.upload_id is not None:
        log["upload_id"] = event.upload_id
    log["outcome"] = storage_events.handle(WIRING.db(), WIRING.storage(log), event, WIRING.announcer(log))
    return 200, {"outcome": log["outcome"]}, {}


def webhook_message(request: flask.Request, raw: bytes, log: dict[str, Any], _params: dict[str, str]) -> Result:
    """POST /internal/webhooks (Pub/Sub push, OIDC): fan an event out, or deliver it to one endpoint."""
    handled = pushes.handle(
        WIRING.db(),
        _webhook_push(request, raw, log),
        SETTINGS.webhooks_topic,
        WIRING.publisher,
        SETTINGS.cdn_base_url,
        SETTINGS.webhook_allow_private_targets,
        clock.now(),
    )
    log.update(handled.log)
    if handled.deferred:
        raise DeliveryDeferred(reason=f"{pushes.MAX_IN_FLIGHT_PER_ENDPOINT} deliveries to it in flight here")
    if handled.failed:
        raise WebhookDeliveryFailed()
    return 200, handled.body, {}


def webhook_dead_letter(request: flask.Request, raw: bytes, log: dict[str, Any], _params: dict[str, str]) -> Result:
    """POST /internal/webhook-dead-letters (the dead-letter topic's push, OIDC): record what Pub/Sub gave up on."""
    handled = pushes.dead_letter(
        WIRING.db(), _webhook_push(request, raw, log, messages.Message.dead_lettered), clock.now()
    )
    log.update(handled.log)
    return 200, handled.body, {}


def _webhook_push(
    request: flask.Request,
    raw: bytes,
    log: dict[str, Any],
    read: Callable[[push.Push], messages.Message] = messages.Message.from_push,
) -> messages.Message:
    message = read(
        push.receive(
            request.headers.get("Authorization"),
            raw,
            _audience(request, SETTINGS.webhooks_audience),
            SETTINGS.webhooks_service_account,
            WIRING.certs(),
            "webhooks",
            messages.INVALID_PUSH,
        )
    )
    log.update(kind=message.kind, message_id=message.message_id[:64])
    if message.upload_id:
        log["upload_id"] = message.upload_id[:64]
    return message


def _audience(request: flask.Request, audience: str | None) -> str | None:
    """The audience a push's token must carry: as set, or (config.OWN_URL) the URL the push reached. Set so
    only behind Cloud Run's IAM check, which has already required the token's audience to be this service's
    run.app URL (https://cloud.google.com/run/docs/configuring/custom-audiences): this checks it again."""
    return f"https://{request.host}" if audience == config.OWN_URL else audience


def _authenticate(request: flask.Request, log: dict[str, Any]) -> auth.ApiKey:
    address = auth.client_address(request.headers.get("X-Forwarded-For"), request.remote_addr, SETTINGS.api_lb_address)
    # A flood of made-up keys from one address stops costing Firestore reads past its limit (lib/limits/counters.py).
    guard = WIRING.limiting().limiter.guard(address, log, enforced=not auth.is_loopback(address))
    key = auth.authenticate(
        WIRING.db(), request.headers.get("Authorization"), auth.lookup_cache(SETTINGS.api_key_cache_ttl_seconds), guard
    )
    log.update(workspace_id=key.workspace_id, key_prefix=key.prefix)
    return key


def _own_upload(request: flask.Request, log: dict[str, Any], upload_id: str) -> lifecycle.Record:
    """The caller's upload (404 if it is not theirs)."""
    key = _authenticate(request, log)
    record = lifecycle.load(WIRING.db(), key.workspace_id, key.mode, upload_id)
    log["upload_id"] = record.id
    return record


def health(_request: flask.Request, _raw: bytes, _log: dict[str, Any], _params: dict[str, str]) -> Result:
    """Liveness for uptime checks: no authentication, no upstream call, nothing
    about the deployment. An answer means an instance is serving this code."""
    return 200, {"status": "ok"}, {}


# (request, its body as read, the log line's fields, the path's parameters)
Handler = Callable[[flask.Request, bytes, dict[str, Any], dict[str, str]], Result]
# Each route's template (`/v1/uploads/{upload_id}`: the log line's `route`, a label of the request
# metrics that stays few-valued) and the methods it answers.
Routes = tuple[tuple[str, dict[str, Handler]], ...]
# Cloud Run reserves some paths ending in "z" (its known issues advise avoiding
# them all), so the uptime check probes /health; /healthz is the usual name.
_HEALTH: Routes = (("/health", {"GET": health}), ("/healthz", {"GET": health}))
# Two functions from this one source: `uploads` serves the API, the scheduler and storage events;
# `deliveries` serves the webhook pushes, so a slow receiver holds a thread of its own instances,
# never one of the API's (docs/operations.md, "Two functions").
UPLOADS_ROUTES: Routes = (
    ("/v1/uploads", {"POST": create_upload}),
    ("/v1/uploads/{upload_id}", {"GET": get_upload}),
    ("/v1/uploads/{upload_id}/cancel", {"POST": cancel_upload}),
    ("/v1/limits", {"GET": get_limits}),
    ("/internal/sweep", {"POST": run_sweep}),
    ("/internal/storage-events", {"POST": storage_event}),
    *_HEALTH,
)
DELIVERIES_ROUTES: Routes = (
    ("/internal/webhooks", {"POST": webhook_message}),
    ("/internal/webhook-dead-letters", {"POST": webhook_dead_letter}),
    *_HEALTH,
)
# Every route of either function (the API document lists them all).
ROUTES: Routes = (*UPLOADS_ROUTES, *DELIVERIES_ROUTES[: -len(_HEALTH)])
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


UPLOADS, DELIVERIES = router(UPLOADS_ROUTES), router(DELIVERIES_ROUTES)


@functions_framework.http
def uploads(request: flask.Request) -> flask.Response:
    """The API function: uploads, the sweep, storage events."""
    return _serve(request, UPLOADS)


@functions_framework.http
def deliveries(request: flask.Request) -> flask.Response:
    """The webhooks function: fan-out, deliveries and dead letters, pushed by Pub/Sub."""
    return _serve(request, DELIVERIES)


def _serve(request: flask.Request, route: Router) -> flask.Response:
    started = time.perf_counter()
    request_id = logs.request_id(request.headers.get("X-Request-Id"))
    # `route` is replaced by the matched route's template; "(none)": no route matched.
    log: dict[str, Any] = {"request_id": request_id, "route": "(none)"}
    try:
        if len(request.path) > MAX_PATH_BYTES:
            raise UriTooLong(MAX_PATH_BYTES)
        # Every request's body is read (at most 64 KiB, each read bounded by
        # lib/platform/server.py) before anything can answer early: otherwise
        # functions-framework reads it after our answer, unbounded by us.
        server.headers_read()
        try:
            raw = models.read_body(request.stream, request.content_length, before_read=server.in_time)
        except server.BODY_FRAMING_ERRORS as exc:
            raise server.body_refusal(exc) from None
        server.body_read()
        methods, params, log["route"] = route(request.path)
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
        internal = ApiError()
        status, body, headers = internal.status, internal.envelope(), internal.headers
        log["error_code"] = internal.code
        log["reason"] = f"{type(exc).__name__}: {exc}"[:500]
        log["stack_trace"] = traceback.format_exc()
    return _respond(request, status, body, headers, request_id, log, started)


@functions_framework.errorhandler(404)
def _framework_not_found(_exc: HTTPException) -> flask.Response:
    """The framework answers /robots.txt and /favicon.ico itself; keep the envelope there too."""
    err = NotFound()
    request_id = logs.request_id(flask.request.headers.get("X-Request-Id"))
    log = {"request_id": request_id, "route": "(none)", "error_code": err.code}
    return _respond(flask.request, err.status, err.envelope(), err.headers, request_id, log, time.perf_counter())


def _respond(
    request: flask.Request,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str],
    request_id: str,
    log: dict[str, Any],
    started: float,
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
    _log_request(request, status, log, started)
    return response


def _log_request(request: flask.Request, status: int, log: dict[str, Any], started: float) -> None:
    logs.emit(
        logs.request_line(
            request.method,
            request.path,
            status,
            time.perf_counter() - started,
            log,
            SETTINGS.firestore.project,
            request.headers.get("X-Cloud-Trace-Context"),
        )
    )
