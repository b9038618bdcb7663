"""Webhook events and their delivery: each workspace is told when its uploads complete, are rejected, cancel or expire.

Format: the Standard Webhooks specification (signed with its own library,
`standardwebhooks`). The body is `{"type", "timestamp", "data"}`, `data` the
upload exactly as `GET /v1/uploads/{id}` returns it; the headers are
`webhook-id` (the same on every retry of one event), `webhook-timestamp` and
`webhook-signature` (`v1,<base64>`; two, space-separated, while a rotated
secret's predecessor still signs).

This module is steps 1 and 2; lib/webhooks/messages.py reads the pushed messages,
lib/webhooks/sending.py makes step 3's POST, lib/webhooks/pushes.py answers the two push routes.

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

import hashlib
import json
from collections.abc import Callable

from google.cloud import firestore

from lib.api import views
from lib.platform import clock
from lib.platform.clients import Publisher
from lib.platform.errors import failure
from lib.uploads import lifecycle
from lib.webhooks import endpoints

EVENT_TYPES = {
    lifecycle.COMPLETED: "upload.completed",
    lifecycle.REJECTED: "upload.rejected",
    lifecycle.CANCELLED: "upload.cancelled",
    lifecycle.EXPIRED: "upload.expired",
}
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
        self._publisher.publish(
            self._topic, [(record.id.encode(), {"kind": KIND_EVENT, "upload_id": record.id}) for record in records]
        )

    def __call__(self, record: lifecycle.Record) -> None:
        try:
            self.publish([record])
        except Exception as exc:  # noqa: BLE001 - the change is stored; the owed mark brings the event back
            self._on_owed(failure(exc))


# -- step 2: fan-out ----------------------------------------------------------------------------


def event_body(record: lifecycle.Record, cdn_base_url: str) -> tuple[str, bytes]:
    """The event's type and the exact bytes every endpoint receives (and we sign)."""
    event_type = EVENT_TYPES[record.state]
    body = {
        "type": event_type,
        "timestamp": clock.rfc3339(record.settled_at),
        "data": views.view(record, cdn_base_url).model_dump(),
    }
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
    found = [
        endpoint
        for endpoint in endpoints.list_endpoints(db, record.workspace_id, record.mode)
        if endpoint.disabled_at is None
    ]
    if found:
        attributes = {
            "kind": KIND_DELIVERY,
            "event_id": event_id(record.id, event_type),
            "event_type": event_type,
            "upload_id": record.id,
        }
        publisher.publish(topic, [(body, {**attributes, "endpoint_id": endpoint.id}) for endpoint in found])
    lifecycle.clear_owed(db, record)
    return len(found)
