"""Storage events: an upload is settled the moment GCS finalizes its object in the staging bucket.

GCS publishes an OBJECT_FINALIZE notification (payload JSON_API_V1: the
object resource) for the staging bucket's upload prefixes to a Pub/Sub topic;
a push subscription delivers each message to `POST /internal/storage-events`
with a Google-signed OIDC token (checked in main.py, as the sweep's is).

Delivery is at least once, in any order, so every outcome is idempotent and
the HTTP status is the acknowledgement:

- pending upload: settled by lib/uploads/settling.py `land` (checked, then placed at
  its served name and `completed`, or `rejected`), by the same conditional
  write the lifecycle uses, so a racing cancel, GET or sweep agrees on one outcome;
- already completed or rejected: nothing changes (a repeat), except that an event
  still owed is published (its first attempt may have died between write and publish);
- cancelled or expired (its bytes landed after all, or landed after `expires_at`): that
  generation of the object is deleted, anything at its served name too, the upload keeps its state;
- the placement's own object in the served bucket (which has no notification
  in Terraform, but an emulator may publish it): ignored;
- an object we do not know (another bucket or prefix, no record): ignored;
- another event type: ignored.

Each of those is a 2xx. A body that is not a push envelope is a 400 (Pub/Sub
retries it, then dead-letters it); Firestore or Storage unavailable is a 503
(Pub/Sub redelivers).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.cloud import firestore
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator

from lib.platform.errors import InvalidEvent, UploadNotFound
from lib.platform.push import Push
from lib.uploads import gcs_sessions, lifecycle, naming, settling

FINALIZE = "OBJECT_FINALIZE"
INT64_MAX = 2**63 - 1
# An object name the service makes: `{prefix}{workspace}/{32 hex}.{ext}` (lib/uploads/naming.py new_upload).
_PREFIXES = "|".join(re.escape(prefix) for prefix in naming.PREFIXES.values())
_OBJECT = re.compile(rf"(?:{_PREFIXES})[A-Za-z0-9_-]{{1,64}}/([0-9a-f]{{32}})\.[a-z0-9]{{1,10}}")


@dataclass(frozen=True)
class Event:
    event_type: str
    bucket: str
    object_name: str
    message_id: str
    obj: gcs_sessions.StoredObject | None  # set for OBJECT_FINALIZE
    upload_id: str | None  # the upload owning object_name, if the service made such a name

    def log_fields(self) -> dict[str, str]:
        """What the request's log line says of the event."""
        fields = {"event_type": self.event_type, "message_id": self.message_id[:64]}
        return fields if self.upload_id is None else {**fields, "upload_id": self.upload_id}


def from_push(push: Push) -> Event:
    """The storage event a pushed message carries (lib/platform/push.py read the envelope).

    Raises:
        InvalidEvent: not a GCS notification.
    """
    try:
        event_type, bucket, name = (push.attributes[k] for k in ("eventType", "bucketId", "objectId"))
    except KeyError as exc:
        raise InvalidEvent(f"the message lacks the attribute {exc.args[0]}") from None
    obj = _finalized(push.data, push.attributes) if event_type == FINALIZE else None
    return Event(event_type, bucket, name, push.message_id, obj, upload_id_for(name))


def _finalized(data: bytes, attributes: dict[str, str]) -> gcs_sessions.StoredObject:
    """The object resource (payload JSON_API_V1) the message's data holds."""
    if not data:
        raise InvalidEvent("an OBJECT_FINALIZE message has no data (payload format JSON_API_V1 expected)")
    try:
        resource = json.loads(data)
    except (ValueError, RecursionError):
        raise InvalidEvent("the message data is not JSON") from None
    if not isinstance(resource, dict):
        raise InvalidEvent("the message data is not a JSON object")
    if not resource.get("generation"):  # the notification's attribute says it too
        resource = {**resource, "generation": attributes.get("objectGeneration")}
    try:
        found = _ObjectResource.model_validate(resource)
    except ValidationError as exc:
        raise InvalidEvent(_resource_failure(exc)) from None
    return gcs_sessions.StoredObject(
        size=found.size, generation=found.generation, crc32c=found.crc32c, md5=found.md5Hash, created=found.timeCreated
    )


class _ObjectResource(BaseModel):
    """The object resource an OBJECT_FINALIZE notification carries (payload JSON_API_V1). GCS states
    size and generation as decimal strings; Firestore stores 64-bit integers, as GCS states both, so
    anything outside is not GCS's."""

    model_config = ConfigDict(extra="ignore")

    size: int = Field(ge=0, le=INT64_MAX)
    generation: int = Field(gt=0, le=INT64_MAX)
    timeCreated: datetime
    crc32c: StrictStr | None = None
    md5Hash: StrictStr | None = None

    @field_validator("size", "generation", mode="before")
    @classmethod
    def _whole(cls, value: Any) -> int:  # any JSON value; what int() refuses is refused
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError("not a whole number") from None

    @field_validator("timeCreated", mode="before")
    @classmethod
    def _time(cls, value: object) -> datetime:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))  # RFC 3339, as GCS writes it


def _resource_failure(exc: ValidationError) -> str:
    """The 400's reason for the first thing wrong with an object resource."""
    error = exc.errors()[0]
    if error["loc"] and error["loc"][0] in ("crc32c", "md5Hash"):
        return "the object resource's checksums are not strings"
    if error["type"] in ("greater_than", "greater_than_equal", "less_than_equal"):
        return "the object resource's size or generation is out of range"
    return "the object resource lacks a whole size, generation or timeCreated"


def upload_id_for(object_name: str) -> str | None:
    """The id of the upload that owns `object_name`, if the service made such a name."""
    match = _OBJECT.fullmatch(object_name)
    return f"upl_{match.group(1)}" if match else None


def handle(
    db: firestore.Client, gcs: lifecycle.Storage, event: Event, announce: lifecycle.Announce | None = None
) -> str:
    """Apply one storage event; what became of it (for the answer and the log).

    Raises:
        ServiceUnavailable: Firestore or Storage is unavailable (Pub/Sub redelivers).
    """
    if event.event_type != FINALIZE:
        return "ignored_event_type"
    record = _named_record(db, gcs, event)
    if record is None:
        return "ignored_unknown_object"
    staged = record.staged
    if staged and event.bucket == gcs.bucket:
        return "ignored_placement"  # our own rewrite of a verified upload
    if event.bucket != gcs.landing_bucket(record):
        return "ignored_unknown_object"
    assert event.obj is not None  # from_push sets it for every FINALIZE
    was_pending = record.state == lifecycle.PENDING
    if was_pending:
        record = settling.land(db, gcs, record, event.obj, announce=announce)
    elif announce is not None and record.owed:
        # Settled, its event still owed: the attempt that settled it may have died between its write and
        # its publish. A redelivery finishes that (the event's id is the same, so a repeat is one event).
        announce(record)
    if record.state == lifecycle.COMPLETED:
        return "completed" if was_pending else "duplicate"
    return _unserved(gcs, event, record, was_pending, staged)


def _unserved(gcs: lifecycle.Storage, event: Event, record: lifecycle.Record, was_pending: bool, staged: bool) -> str:
    """A finalized object whose upload is not completed: no bytes of it may stay where they would be served."""
    assert event.obj is not None  # from_push sets it for every FINALIZE
    if record.state == lifecycle.REJECTED:
        if not was_pending and not staged:
            # Landed at its served name: make sure the refused bytes are gone (a repeat).
            gcs_sessions.delete_object(gcs.client, event.bucket, event.object_name, event.obj.generation)
        return "rejected" if was_pending else "duplicate"
    # Cancelled or expired, and yet these bytes are there: nothing keeps them, and nothing is served
    # (a settler that placed them and lost the race may have died before undoing it).
    gcs_sessions.delete_object(gcs.client, event.bucket, event.object_name, event.obj.generation)
    if staged:
        settling.unserve(gcs, record)
    return "deleted_late_object"


def _named_record(db: firestore.Client, gcs: lifecycle.Storage, event: Event) -> lifecycle.Record | None:
    """The record of the upload whose object the event names, if it is one of ours, in one of our buckets."""
    if event.bucket not in (gcs.bucket, gcs.staging_bucket) or event.upload_id is None:
        return None
    try:
        record = lifecycle.load_by_id(db, event.upload_id)
    except UploadNotFound:
        return None
    return record if record.object_name == event.object_name else None
