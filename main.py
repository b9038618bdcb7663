"""Cloud Function entrypoints `uploads` (the API, the sweep, storage events) and `deliveries` (webhook pushes):
the settings checked at start-up, each function's routing table, and handlers that read the request, call lib
and say what to answer. lib/platform/http.py serves (routing, bodies, the envelope, the log line); lib/wiring.py
holds the parts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flask
import functions_framework
from werkzeug.exceptions import HTTPException

from lib import wiring
from lib.api import auth, create, views
from lib.platform import clock, config, http, logs, oidc, push, server
from lib.platform.errors import (
    DeliveryDeferred,
    ServiceUnavailable,
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


def create_upload(request: flask.Request, raw: bytes, _params: dict[str, str]) -> http.Result:
    """POST /v1/uploads: authenticate, then create (lib/api/create.py)."""
    key = _authenticate(request)
    created = create.create(
        WIRING.db(),
        WIRING.gcs(),
        SETTINGS,
        WIRING.limiting(),
        key,
        request.headers.get("Idempotency-Key"),
        raw,
        request.headers.get("Origin"),
    )
    if created.replayed:
        return 200, created.body, {**created.headers, "Idempotent-Replayed": "true"}
    return 201, created.body, created.headers


def get_limits(request: flask.Request, _raw: bytes, _params: dict[str, str]) -> http.Result:
    """GET /v1/limits: the key's workspace's limits and where its mode stands (lib/limits/counters.py)."""
    key = _authenticate(request)
    return 200, *views.limits(WIRING.db(), WIRING.limiting(), key.workspace_id, key.mode)


def get_upload(request: flask.Request, _raw: bytes, params: dict[str, str]) -> http.Result:
    """GET /v1/uploads/{id}: the upload, its status brought up to date."""
    record = _own_upload(request, params["upload_id"])
    record = settling.refresh(
        WIRING.db(),
        WIRING.storage(),
        record,
        clock.now(),
        lambda exc: logs.note(unsettled=exc.reason),
        announce=WIRING.announcer(),
    )
    return 200, views.view(record, SETTINGS.cdn_base_url).model_dump(), {}


def cancel_upload(request: flask.Request, _raw: bytes, params: dict[str, str]) -> http.Result:
    """POST /v1/uploads/{id}/cancel: cancel the session; idempotent; 409 once completed."""
    record = _own_upload(request, params["upload_id"])
    record = settling.cancel(WIRING.db(), WIRING.storage(), record, announce=WIRING.announcer())
    return 200, views.view(record, SETTINGS.cdn_base_url).model_dump(), {}


def run_sweep(request: flask.Request, _raw: bytes, _params: dict[str, str]) -> http.Result:
    """POST /internal/sweep (Cloud Scheduler, OIDC): expire uploads pending past expires_at (lib/uploads/sweep.py)."""
    oidc.verify(
        request.headers.get("Authorization"), SETTINGS.sweep_audience, SETTINGS.sweep_service_account, WIRING.certs()
    )
    slice_ = sweep.shards(request.args.get("shards"))
    logs.note(sweep_shards=f"{slice_.start}-{slice_.stop - 1}")  # also when the sweep's query fails
    # Many uploads settle in one sweep: what each verification read is not the request's to log.
    report = sweep.run(
        WIRING.db(), dataclasses.replace(WIRING.storage(), noting=False), clock.now(), slice_, WIRING.announcer()
    )
    logs.note(**report.log)
    if report.result.failed:
        # Done work stays done; the scheduler's retry (or the next run) takes the rest.
        raise ServiceUnavailable(retry_after=30, details={"sweep": report.result.as_dict()})
    return 200, report.result.as_dict(), {}


def storage_event(request: flask.Request, raw: bytes, _params: dict[str, str]) -> http.Result:
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
    logs.note(**event.log_fields())
    outcome = storage_events.handle(WIRING.db(), WIRING.storage(), event, WIRING.announcer())
    logs.note(outcome=outcome)
    return 200, {"outcome": outcome}, {}


def webhook_message(request: flask.Request, raw: bytes, _params: dict[str, str]) -> http.Result:
    """POST /internal/webhooks (Pub/Sub push, OIDC): fan an event out, or deliver it to one endpoint."""
    handled = pushes.handle(
        WIRING.db(),
        _webhook_push(request, raw),
        SETTINGS.webhooks_topic,
        WIRING.publisher,
        SETTINGS.cdn_base_url,
        SETTINGS.webhook_allow_private_targets,
        clock.now(),
    )
    logs.note(**handled.log)
    if handled.deferred:
        raise DeliveryDeferred(reason=f"{pushes.MAX_IN_FLIGHT_PER_ENDPOINT} deliveries to it in flight here")
    if handled.failed:
        raise WebhookDeliveryFailed()
    return 200, handled.body, {}


def webhook_dead_letter(request: flask.Request, raw: bytes, _params: dict[str, str]) -> http.Result:
    """POST /internal/webhook-dead-letters (the dead-letter topic's push, OIDC): record what Pub/Sub gave up on."""
    handled = pushes.dead_letter(WIRING.db(), _webhook_push(request, raw, messages.Message.dead_lettered), clock.now())
    logs.note(**handled.log)
    return 200, handled.body, {}


def _webhook_push(
    request: flask.Request,
    raw: bytes,
    read: Callable[[push.Push], messages.Message] = messages.Message.from_push,
) -> messages.Message:
    message = read(
        push.receive(
            request.headers.get("Authorization"),
            raw,
            push.audience(request.host, SETTINGS.webhooks_audience),
            SETTINGS.webhooks_service_account,
            WIRING.certs(),
            "webhooks",
            messages.INVALID_PUSH,
        )
    )
    logs.note(**message.log_fields())
    return message


def _authenticate(request: flask.Request) -> auth.ApiKey:
    address = auth.client_address(request.headers.get("X-Forwarded-For"), request.remote_addr, SETTINGS.api_lb_address)
    # A flood of made-up keys from one address stops costing Firestore reads past its limit (lib/limits/counters.py).
    guard = WIRING.limiting().limiter.guard(address, enforced=not auth.is_loopback(address))
    key = auth.authenticate(
        WIRING.db(), request.headers.get("Authorization"), auth.lookup_cache(SETTINGS.api_key_cache_ttl_seconds), guard
    )
    logs.note(workspace_id=key.workspace_id, key_prefix=key.prefix)
    return key


def _own_upload(request: flask.Request, upload_id: str) -> lifecycle.Record:
    """The caller's upload (404 if it is not theirs)."""
    key = _authenticate(request)
    record = lifecycle.load(WIRING.db(), key.workspace_id, key.mode, upload_id)
    logs.note(upload_id=record.id)
    return record


def health(_request: flask.Request, _raw: bytes, _params: dict[str, str]) -> http.Result:
    """Liveness for uptime checks: no authentication, no upstream call, nothing
    about the deployment. An answer means an instance is serving this code."""
    return 200, {"status": "ok"}, {}


# Cloud Run reserves some paths ending in "z" (its known issues advise avoiding
# them all), so the uptime check probes /health; /healthz is the usual name.
_HEALTH: http.Routes = (("/health", {"GET": health}), ("/healthz", {"GET": health}))
# Two functions from this one source: `uploads` serves the API, the scheduler and storage events;
# `deliveries` serves the webhook pushes, so a slow receiver holds a thread of its own instances,
# never one of the API's (docs/operations.md, "Two functions").
UPLOADS_ROUTES: http.Routes = (
    ("/v1/uploads", {"POST": create_upload}),
    ("/v1/uploads/{upload_id}", {"GET": get_upload}),
    ("/v1/uploads/{upload_id}/cancel", {"POST": cancel_upload}),
    ("/v1/limits", {"GET": get_limits}),
    ("/internal/sweep", {"POST": run_sweep}),
    ("/internal/storage-events", {"POST": storage_event}),
    *_HEALTH,
)
DELIVERIES_ROUTES: http.Routes = (
    ("/internal/webhooks", {"POST": webhook_message}),
    ("/internal/webhook-dead-letters", {"POST": webhook_dead_letter}),
    *_HEALTH,
)
# Every route of either function (the API document lists them all).
ROUTES: http.Routes = (*UPLOADS_ROUTES, *DELIVERIES_ROUTES[: -len(_HEALTH)])


UPLOADS, DELIVERIES = http.router(UPLOADS_ROUTES), http.router(DELIVERIES_ROUTES)


@functions_framework.http
def uploads(request: flask.Request) -> flask.Response:
    """The API function: uploads, the sweep, storage events."""
    return http.serve(request, UPLOADS, SETTINGS.firestore.project)


@functions_framework.http
def deliveries(request: flask.Request) -> flask.Response:
    """The webhooks function: fan-out, deliveries and dead letters, pushed by Pub/Sub."""
    return http.serve(request, DELIVERIES, SETTINGS.firestore.project)


@functions_framework.errorhandler(404)
def _framework_not_found(_exc: HTTPException) -> flask.Response:
    """The framework answers /robots.txt and /favicon.ico itself; keep the envelope there too."""
    return http.not_found(SETTINGS.firestore.project)
