"""Webhook events and their delivery: each workspace is told when its uploads complete, are rejected, cancel or expire.

Format: the Standard Webhooks specification (signed with its own library,
`standardwebhooks`). The body is `{"type", "timestamp", "data"}`, `data` the
upload exactly as `GET /v1/uploads/{id}` returns it; the headers are
`webhook-id` (the same on every retry of one event), `webhook-timestamp` and
`webhook-signature` (`v1,<base64>`; two, space-separated, while a rotated
secret's predecessor still signs).

The path, all at least once, every step's HTTP status its acknowledgement:

1. A state change is stored (lib/uploads/lifecycle.py `transition`, whoever made it)
   together with `webhook_owed_at`; then one *event* message (the upload id)
   is published to the webhooks topic. If that publish fails, the owed mark
   stays and the sweep publishes it again (lib/uploads/sweep.py).
2. The event message is pushed to `POST /internal/webhooks`: `fan_out`
   publishes one *delivery* message per endpoint of the upload's workspace
   and mode, carrying the exact body, then clears the owed mark.
3. Each delivery message is pushed to the same route: `deliver` signs and
   POSTs it (lib/webhooks/targets.py checks the URL, lib/webhooks/outbound.py sends) and records the attempt. A
   2xx within 10 s acknowledges; anything else answers 502 and Pub/Sub
   retries that (event, endpoint) pair alone, with exponential backoff, until
   it dead-letters it; the dead-letter topic's push (`POST
   /internal/webhook-dead-letters`) records that too.

Endpoints and their secrets are lib/webhooks/endpoints.py's; the attempts each
delivery records are lib/webhooks/attempts.py's (written in batches, off the
request's path).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from google.cloud import firestore

from lib.api import views
from lib.platform import clock
from lib.platform.clients import Publisher, shared
from lib.platform.errors import InvalidEvent, ServiceUnavailable, UploadNotFound, failure
from lib.platform.push import Push
from lib.uploads import lifecycle, naming
from lib.webhooks import attempts, endpoints, outbound, targets
from lib.webhooks.endpoints import Endpoint, EndpointCache

EVENT_TYPES = {lifecycle.COMPLETED: "upload.completed", lifecycle.REJECTED: "upload.rejected",
               lifecycle.CANCELLED: "upload.cancelled", lifecycle.EXPIRED: "upload.expired"}
# Message attributes: which step a message is for.
KIND_EVENT, KIND_DELIVERY = "event", "delivery"


def event_id(upload_id: str, event_type: str) -> str:
    """The event's id, the same however often it is published: the `webhook-id` header."""
    return "evt_" + hashlib.sha256(f"{upload_id}:{event_type}".encode()).hexdigest()[:32]


# -- step 1: the owed event ---------------------------------------------------------------------

class Announcer:
    """Publishes the event message of each state change to the webhooks topic.

    Called with a record whose change was just stored (lifecycle.Announce), it
    never fails the request: the change is stored whatever happens here, so a
    failed publish (Pub/Sub down, or misconfigured) leaves the event owed for
    the sweep and tells `on_owed` why (for the request's log line).
    """

    def __init__(self, publisher: Publisher, topic: str, on_owed: Callable[[str], None] = lambda reason: None):
        self._publisher = publisher
        self._topic = topic
        self._on_owed = on_owed

    def publish(self, records: list[lifecycle.Record]) -> None:
        """Publish the event message of each settled record.

        Raises:
            ServiceUnavailable: Pub/Sub did not take them all (the owed marks stay; the sweep retries).
        """
        # The id is in the data too: the dead-letter route needs nothing from the attributes.
        self._publisher.publish(self._topic, [(record.id.encode(), {"kind": KIND_EVENT, "upload_id": record.id})
                                              for record in records])

    def __call__(self, record: lifecycle.Record) -> None:
        try:
            self.publish([record])
        except Exception as exc:  # noqa: BLE001 - the change is stored; the owed mark brings the event back
            self._on_owed(failure(exc))


# -- step 2: fan-out ----------------------------------------------------------------------------

def event_body(record: lifecycle.Record, cdn_base_url: str) -> tuple[str, bytes]:
    """The event's type and the exact bytes every endpoint receives (and we sign)."""
    event_type = EVENT_TYPES[record.state]
    body = {"type": event_type, "timestamp": clock.rfc3339(record.data["settled_at"]),
            "data": views.view(record, cdn_base_url).model_dump()}
    return event_type, json.dumps(body, separators=(",", ":"), allow_nan=False).encode()  # as main._respond


def fan_out(db: firestore.Client, publisher: Publisher, topic: str, upload_id: str, cdn_base_url: str) -> int:
    """One delivery message per enabled endpoint of the upload's workspace and mode; the owed mark cleared.

    Returns how many deliveries were queued.

    Raises:
        UploadNotFound: no such upload (the message is dropped).
        ServiceUnavailable: Firestore or Pub/Sub is down (Pub/Sub redelivers the event).
    """
    record = lifecycle.load_by_id(db, upload_id)
    if record.state not in EVENT_TYPES:
        return 0  # still pending: nothing happened to tell
    event_type, body = event_body(record, cdn_base_url)
    # A disabled endpoint gets nothing: no delivery message is queued for it at all.
    found = [endpoint for endpoint in endpoints.list_endpoints(db, record.data["workspace_id"], record.data["mode"])
             if endpoint.disabled_at is None]
    if found:
        attributes = {"kind": KIND_DELIVERY, "event_id": event_id(record.id, event_type), "event_type": event_type,
                      "upload_id": record.id}
        publisher.publish(topic, [(body, {**attributes, "endpoint_id": endpoint.id}) for endpoint in found])
    lifecycle.clear_owed(db, record)
    return len(found)


# -- the messages, as pushed --------------------------------------------------------------------

INVALID_PUSH = "The body is not a Pub/Sub push envelope of a webhook event or delivery."


class Message(NamedTuple):
    """A pushed webhooks message: an event to fan out, or one delivery."""

    kind: str
    message_id: str
    attributes: dict[str, str]
    data: bytes
    attempt: int | None  # Pub/Sub's deliveryAttempt (set when the subscription dead-letters)

    @property
    def upload_id(self) -> str | None:
        return self.attributes.get("upload_id")

    @classmethod
    def from_push(cls, push: Push) -> Message:
        """Raises InvalidEvent: not one of our messages (lib/platform/push.py read the envelope)."""
        kind = push.attributes.get("kind")
        if kind not in (KIND_EVENT, KIND_DELIVERY):
            raise InvalidEvent(f"the message's kind is {kind!r}, not event or delivery", INVALID_PUSH)
        if not isinstance(push.attributes.get("upload_id"), str):
            raise InvalidEvent("the message lacks the attribute upload_id", INVALID_PUSH)
        return cls(kind, push.message_id, push.attributes, push.data, push.attempt)

    def delivery(self) -> Delivery:
        if self.kind != KIND_DELIVERY:
            raise InvalidEvent("not a delivery message", INVALID_PUSH)
        return Delivery.from_message(self.attributes, self.data, self.attempt)

    @classmethod
    def dead_lettered(cls, push: Push) -> Message:
        """A message the dead-letter topic pushed: ours as sent, or, without our attributes, read from its data.

        Pub/Sub's page says a dead-lettered message is forwarded with attributes added
        (https://cloud.google.com/pubsub/docs/handling-failures), not in so many words that ours
        are kept, so nothing here rests on them: an event message's data is its upload id, and a
        delivery's is the event body, which names the upload and the event type (hence the event
        id). Only the endpoint is then unknown; the row says so.

        Raises InvalidEvent: neither.
        """
        if "kind" in push.attributes:
            return cls.from_push(push)
        body = _event_body(push.data)
        if body is not None:
            upload_id, event_type = body
            attributes = {"event_id": event_id(upload_id, event_type), "event_type": event_type,
                          "upload_id": upload_id}
            return cls(KIND_DELIVERY, push.message_id, attributes, push.data, push.attempt)
        text = push.data.decode("ascii", "replace")
        if naming.UPLOAD_ID.fullmatch(text):
            return cls(KIND_EVENT, push.message_id, {"upload_id": text}, push.data, push.attempt)
        raise InvalidEvent("a dead-lettered message that is neither an event nor a delivery of ours", INVALID_PUSH)


def _event_body(data: bytes) -> tuple[str, str] | None:
    """(upload id, event type) of an event body as event_body() makes it, or None."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return None
    if not isinstance(body, dict) or body.get("type") not in EVENT_TYPES.values():
        return None
    upload = body.get("data")
    upload_id = upload.get("id") if isinstance(upload, dict) else None
    return (upload_id, body["type"]) if isinstance(upload_id, str) and naming.UPLOAD_ID.fullmatch(upload_id) else None


# -- step 3: delivery ---------------------------------------------------------------------------

class Delivery(NamedTuple):
    """One delivery message: which event goes to which endpoint, and its exact body."""

    endpoint_id: str  # "": a dead-lettered delivery whose attributes did not survive (unknown)
    event_id: str
    event_type: str
    upload_id: str
    body: bytes
    attempt: int | None

    @classmethod
    def from_message(cls, attributes: dict[str, str], data: bytes, attempt: int | None) -> Delivery:
        try:
            data.decode()
        except UnicodeDecodeError:
            raise InvalidEvent("a delivery message's body is not UTF-8", INVALID_PUSH) from None
        endpoint_id = attributes.get("endpoint_id", "")
        if not endpoint_id and "kind" in attributes:  # as we send it, a delivery always names its endpoint
            raise InvalidEvent("a delivery message lacks the attribute endpoint_id", INVALID_PUSH)
        try:
            return cls(endpoint_id, attributes["event_id"], attributes["event_type"], attributes["upload_id"],
                       data, attempt)
        except KeyError as exc:
            raise InvalidEvent(f"a delivery message lacks the attribute {exc.args[0]}", INVALID_PUSH) from None


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


def deliver(db: firestore.Client, delivery: Delivery, allow_private: bool, now: datetime,
            resolver: targets.Resolver | None = None, cache: EndpointCache | None = None,
            record: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
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
    body = delivery.body.decode()
    # The whole delivery, the lookup included, ends by outbound.DELIVERY_TIMEOUT_SECONDS.
    deadline = time.monotonic() + outbound.DELIVERY_TIMEOUT_SECONDS
    try:
        target = targets.resolve(endpoint.url, allow_private, resolver,
                                 timeout=min(targets.RESOLVE_TIMEOUT_SECONDS, outbound.DELIVERY_TIMEOUT_SECONDS))
    except targets.TargetRefused as exc:
        outcome = Outcome(False, outbound.Result(None, "refused_target", 0.0), refused=str(exc))
    else:
        headers = {
            "content-type": "application/json",
            "user-agent": "Framelane-Webhooks/1",
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": endpoints.sign(endpoint.signing_secrets(now), delivery.event_id, now, body),
        }
        result = outbound.post(target, delivery.body, headers, timeout=max(deadline - time.monotonic(), 0.0))
        outcome = Outcome(result.ok, result)
    if endpoints.record_health(db, endpoint, outcome.delivered, now) == "disabled":
        outcome = outcome._replace(disabled=True)
    row = attempt_row(endpoint, delivery, outcome.result, now)
    if record is not None:
        record(row)
    else:
        attempts.write_rows(db, [row])
    return outcome


def attempt_row(endpoint: Endpoint | None, delivery: Delivery, result: outbound.Result | None, now: datetime,
                dead_lettered: bool = False, workspace: tuple[str, str] | None = None) -> dict[str, Any]:
    """The attempt log's row (lib/webhooks/attempts.py `Attempt`) for this delivery and what came of it."""
    workspace_id, mode = (endpoint.workspace_id, endpoint.mode) if endpoint else (workspace or (None, None))
    return attempts.Attempt(
        workspace_id=workspace_id, mode=mode, endpoint_id=delivery.endpoint_id or None,
        url=endpoint.url if endpoint else None, event_id=delivery.event_id, event_type=delivery.event_type,
        upload_id=delivery.upload_id, attempt=delivery.attempt, at=now,
        status=result.status if result else None,
        error="dead_lettered" if dead_lettered else (result.error if result else None),
        latency_ms=result.latency_ms if result else None, dead_lettered=dead_lettered).row()


def dead_lettered(db: firestore.Client, delivery: Delivery, now: datetime) -> str:
    """A delivery Pub/Sub gave up on: recorded, so `webhook-deliveries` shows it."""
    endpoint = endpoints.get_endpoint(db, delivery.endpoint_id) if delivery.endpoint_id else None
    workspace = None
    if endpoint is None:
        try:
            record = lifecycle.load_by_id(db, delivery.upload_id)
            workspace = (record.data["workspace_id"], record.data["mode"])
        except Exception:  # noqa: BLE001 - the row is still worth writing without its workspace
            workspace = None
    attempts.write_rows(db, [attempt_row(endpoint, delivery, None, now, dead_lettered=True, workspace=workspace)])
    return "dead_letter_recorded"


# -- the two push routes ------------------------------------------------------------------------

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


def handle(db: firestore.Client, message: Message, topic: str | None, publisher: Callable[[], Publisher],
           cdn_base_url: str, allow_private: bool, now: datetime) -> Handled:
    """`POST /internal/webhooks`: fan an event out (step 2), or deliver one (step 3).

    `publisher` gives the instance's Pub/Sub publisher (only fan-out needs it).

    Raises:
        ServiceUnavailable: webhooks are off here (no topic) or a backend is down (Pub/Sub redelivers).
        InvalidEvent: a delivery message lacks what it needs.
    """
    if message.kind == KIND_EVENT:
        if topic is None:
            raise ServiceUnavailable(reason="WEBHOOKS_TOPIC is not set: cannot fan out")
        try:
            queued = fan_out(db, publisher(), topic, message.upload_id or "", cdn_base_url)
        except UploadNotFound:
            return Handled({"outcome": "ignored_unknown_upload"}, {"outcome": "ignored_unknown_upload"})
        return Handled({"outcome": "fanned_out", "deliveries": queued}, {"outcome": "fanned_out", "deliveries": queued})

    delivery = message.delivery()
    log: dict[str, Any] = {"event_id": delivery.event_id, "endpoint_id": delivery.endpoint_id[:64],
                           "attempt": delivery.attempt}
    with in_flight().slot(delivery.endpoint_id) as admitted:
        if not admitted:  # logged with its event and endpoint, as any delivery is
            log["outcome"] = "deferred"
            return Handled({"outcome": "deferred"}, log, deferred=True)
        outcome = deliver(db, delivery, allow_private, now, cache=endpoints.endpoint_cache(),
                          record=attempts.attempt_log(db).add)
    log["outcome"] = outcome.label
    if outcome.result is not None:
        log.update(receiver_status=outcome.result.status, receiver_error=outcome.result.error,
                   receiver_latency_ms=outcome.result.latency_ms)
    if outcome.refused is not None:
        log["refused"] = outcome.refused
    if outcome.label == "failed":
        log["severity"] = "WARNING"  # the customer's endpoint failed, not us
        if outcome.disabled:
            log["endpoint_disabled"] = (f"every delivery failed for {endpoints.DISABLE_AFTER.days} days: nothing "
                                        "more is sent until `python -m lib.admin enable-webhook` re-enables it")
    return Handled({"outcome": outcome.label}, log, failed=outcome.label == "failed")


def dead_letter(db: firestore.Client, message: Message, now: datetime) -> Handled:
    """`POST /internal/webhook-dead-letters`: record what Pub/Sub gave up on."""
    if message.kind == KIND_EVENT:
        # The event stays owed on its record: the sweep publishes it again.
        return Handled({"outcome": "event_dead_lettered"}, {"outcome": "event_dead_lettered", "severity": "ERROR"})
    delivery = message.delivery()
    outcome = dead_lettered(db, delivery, now)
    return Handled({"outcome": outcome}, {"event_id": delivery.event_id,
                                          "endpoint_id": (delivery.endpoint_id or "unknown")[:64],
                                          "outcome": outcome, "severity": "WARNING"})
