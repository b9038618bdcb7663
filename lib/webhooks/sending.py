"""Step 3 of a webhook event's path: one delivery signed, its URL checked again, POSTed, and the attempt recorded."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

from google.cloud import firestore

from lib.webhooks import attempts, endpoints, outbound, targets
from lib.webhooks.endpoints import Endpoint, EndpointCache
from lib.webhooks.messages import Delivery


class Outcome(NamedTuple):
    delivered: bool
    result: outbound.Result | None  # None: nothing was sent (the endpoint is gone or disabled)
    refused: str | None = None  # why the URL was refused at this delivery
    disabled: bool = False  # the endpoint is disabled (nothing sent), or this failure disabled it

    @property
    def label(self) -> str:
        if self.result is None and self.refused is None:
            return "endpoint_disabled" if self.disabled else "endpoint_removed"
        return "delivered" if self.delivered else "failed"


def deliver(
    db: firestore.Client,
    delivery: Delivery,
    allow_private: bool,
    now: datetime,
    resolver: targets.Resolver | None = None,
    cache: EndpointCache | None = None,
    record: Callable[[dict[str, Any]], None] | None = None,
) -> Outcome:
    """Sign and send one event to one endpoint, then record the attempt.

    The URL's rules are checked again here (DNS may have changed since the
    endpoint was added). `cache` answers from the instance's cache
    (default: a read each time); `record` takes the attempt's row (default:
    written before this returns; the function hands it to its AttemptLog).

    Raises:
        ServiceUnavailable: the endpoint could not be read (Pub/Sub redelivers).
    """
    endpoint = cache.get(db, delivery.endpoint_id) if cache else endpoints.get_endpoint(db, delivery.endpoint_id)
    if endpoint is None:
        return Outcome(False, None)
    if endpoint.disabled_at is not None:
        return Outcome(False, None, disabled=True)  # acknowledged unsent, as for a removed endpoint
    outcome = _send(endpoint, delivery, allow_private, now, resolver)
    if endpoints.record_health(db, endpoint, outcome.delivered, now) == "disabled":
        outcome = outcome._replace(disabled=True)
    row = attempt_of(endpoint, delivery, outcome.result, now)
    if record is not None:
        record(row)
    else:
        attempts.write_rows(db, [row])
    return outcome


def _send(
    endpoint: Endpoint, delivery: Delivery, allow_private: bool, now: datetime, resolver: targets.Resolver | None
) -> Outcome:
    """The delivery's POST to the endpoint's URL, checked again; all of it ends by DELIVERY_TIMEOUT_SECONDS."""
    deadline = time.monotonic() + outbound.DELIVERY_TIMEOUT_SECONDS
    try:
        target = targets.resolve(
            endpoint.url,
            allow_private,
            resolver,
            timeout=min(targets.RESOLVE_TIMEOUT_SECONDS, outbound.DELIVERY_TIMEOUT_SECONDS),
        )
    except targets.TargetRefused as exc:
        return Outcome(False, outbound.Result(None, "refused_target", 0.0), refused=str(exc))
    headers = {
        "content-type": "application/json",
        "user-agent": "Framelane-Webhooks/1",
        "webhook-id": delivery.event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": endpoints.sign(
            endpoint.signing_secrets(now), delivery.event_id, now, delivery.body.decode()
        ),
    }
    result = outbound.post(target, delivery.body, headers, timeout=max(deadline - time.monotonic(), 0.0))
    return Outcome(result.ok, result)


def attempt_of(
    endpoint: Endpoint | None,
    delivery: Delivery,
    result: outbound.Result | None,
    now: datetime,
    dead_lettered: bool = False,
    workspace: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The attempt log's row (lib/webhooks/attempts.py `Attempt`) for this delivery and what came of it."""
    workspace_id, mode = (endpoint.workspace_id, endpoint.mode) if endpoint else (workspace or (None, None))
    return attempts.Attempt(
        workspace_id=workspace_id,
        mode=mode,
        endpoint_id=delivery.endpoint_id or None,
        url=endpoint.url if endpoint else None,
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        upload_id=delivery.upload_id,
        attempt=delivery.attempt,
        at=now,
        status=result.status if result else None,
        error="dead_lettered" if dead_lettered else (result.error if result else None),
        latency_ms=result.latency_ms if result else None,
        dead_lettered=dead_lettered,
    ).row()
