"""The two webhooks push routes: `POST /internal/webhooks` (fan an event out, or make one delivery, within its
endpoint's share of this instance) and `POST /internal/webhook-dead-letters` (record what Pub/Sub gave up on)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.cloud import firestore

from lib.platform.clients import Publisher, shared
from lib.platform.errors import ServiceUnavailable, UploadNotFound
from lib.uploads import lifecycle
from lib.webhooks import attempts, endpoints
from lib.webhooks.fanout import KIND_EVENT, fan_out
from lib.webhooks.messages import Delivery, Message
from lib.webhooks.sending import Outcome, attempt_of, deliver

# Deliveries to one endpoint an instance makes at once (of its deliveries_concurrency, 40):
# past it a delivery is deferred (429, so Pub/Sub retries it after its backoff), so that one
# slow or failing endpoint cannot hold every delivery thread.
MAX_IN_FLIGHT_PER_ENDPOINT = 4


class InFlight:
    """Deliveries in flight per endpoint on this instance, each endpoint capped; thread-safe."""

    def __init__(self, cap: int = MAX_IN_FLIGHT_PER_ENDPOINT):
        self._cap = cap
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    @contextlib.contextmanager
    def slot(self, endpoint_id: str) -> Iterator[bool]:
        """Whether a delivery to `endpoint_id` may go now; its slot is held while inside."""
        with self._lock:
            held = self._counts.get(endpoint_id, 0)
            admitted = held < self._cap
            if admitted:
                self._counts[endpoint_id] = held + 1
        try:
            yield admitted
        finally:
            if admitted:
                with self._lock:
                    left = self._counts[endpoint_id] - 1
                    if left:
                        self._counts[endpoint_id] = left
                    else:
                        del self._counts[endpoint_id]


def in_flight() -> InFlight:
    """The instance's count of deliveries in flight per endpoint."""
    return shared(("webhook_in_flight",), InFlight)


@dataclass(frozen=True)
class Handled:
    """What a pushed message came to: the answer's outcome and the log line's fields.
    `failed`: the receiver did not take the delivery (the route answers 502, so Pub/Sub retries);
    `deferred`: it was not sent, its endpoint's share being in flight here (429, retried later)."""

    body: dict[str, Any]
    log: dict[str, Any]
    failed: bool = False
    deferred: bool = False


def handle(
    db: firestore.Client,
    message: Message,
    topic: str | None,
    publisher: Callable[[], Publisher],
    cdn_base_url: str,
    allow_private: bool,
    now: datetime,
) -> Handled:
    """`POST /internal/webhooks`: fan an event out (step 2), or deliver one (step 3).

    `publisher` gives the instance's Pub/Sub publisher (only fan-out needs it).

    Raises:
        ServiceUnavailable: webhooks are off here (no topic) or a backend is down (Pub/Sub redelivers).
        InvalidEvent: a delivery message lacks what it needs.
    """
    if message.kind == KIND_EVENT:
        return _fan_out(db, message, topic, publisher, cdn_base_url)
    delivery = message.delivery()
    log: dict[str, Any] = {
        "event_id": delivery.event_id,
        "endpoint_id": delivery.endpoint_id[:64],
        "attempt": delivery.attempt,
    }
    with in_flight().slot(delivery.endpoint_id) as admitted:
        if not admitted:  # logged with its event and endpoint, as any delivery is
            log["outcome"] = "deferred"
            return Handled({"outcome": "deferred"}, log, deferred=True)
        outcome = deliver(
            db, delivery, allow_private, now, cache=endpoints.endpoint_cache(), record=attempts.attempt_log(db).add
        )
    return Handled({"outcome": outcome.label}, {**log, **_outcome_log(outcome)}, failed=outcome.label == "failed")


def _fan_out(
    db: firestore.Client, message: Message, topic: str | None, publisher: Callable[[], Publisher], cdn_base_url: str
) -> Handled:
    if topic is None:
        raise ServiceUnavailable(reason="WEBHOOKS_TOPIC is not set: cannot fan out")
    try:
        queued = fan_out(db, publisher(), topic, message.upload_id or "", cdn_base_url)
    except UploadNotFound:
        return Handled({"outcome": "ignored_unknown_upload"}, {"outcome": "ignored_unknown_upload"})
    return Handled({"outcome": "fanned_out", "deliveries": queued}, {"outcome": "fanned_out", "deliveries": queued})


def _outcome_log(outcome: Outcome) -> dict[str, Any]:
    """A delivery's log fields: what the receiver answered, or why nothing was sent."""
    log: dict[str, Any] = {"outcome": outcome.label}
    if outcome.result is not None:
        log.update(
            receiver_status=outcome.result.status,
            receiver_error=outcome.result.error,
            receiver_latency_ms=outcome.result.latency_ms,
        )
    if outcome.refused is not None:
        log["refused"] = outcome.refused
    if outcome.label == "failed":
        log["severity"] = "WARNING"  # the customer's endpoint failed, not us
        if outcome.disabled:
            log["endpoint_disabled"] = (
                f"every delivery failed for {endpoints.DISABLE_AFTER.days} days: nothing "
                "more is sent until `python -m lib.admin enable-webhook` re-enables it"
            )
    return log


def dead_letter(db: firestore.Client, message: Message, now: datetime) -> Handled:
    """`POST /internal/webhook-dead-letters`: record what Pub/Sub gave up on."""
    if message.kind == KIND_EVENT:
        # The event stays owed on its record: the sweep publishes it again.
        return Handled({"outcome": "event_dead_lettered"}, {"outcome": "event_dead_lettered", "severity": "ERROR"})
    delivery = message.delivery()
    outcome = dead_lettered(db, delivery, now)
    return Handled(
        {"outcome": outcome},
        {
            "event_id": delivery.event_id,
            "endpoint_id": (delivery.endpoint_id or "unknown")[:64],
            "outcome": outcome,
            "severity": "WARNING",
        },
    )


def dead_lettered(db: firestore.Client, delivery: Delivery, now: datetime) -> str:
    """A delivery Pub/Sub gave up on: recorded, so `webhook-deliveries` shows it."""
    endpoint = endpoints.get_endpoint(db, delivery.endpoint_id) if delivery.endpoint_id else None
    workspace = None
    if endpoint is None:
        try:
            record = lifecycle.load_by_id(db, delivery.upload_id)
            workspace = (record.workspace_id, record.mode)
        except Exception:  # noqa: BLE001 - the row is still worth writing without its workspace
            workspace = None
    attempts.write_rows(db, [attempt_of(endpoint, delivery, None, now, dead_lettered=True, workspace=workspace)])
    return "dead_letter_recorded"
