"""Webhooks: each workspace is told when its uploads complete, are rejected, cancel or expire.

Format: the Standard Webhooks specification (signed with its own library,
`standardwebhooks`). The body is `{"type", "timestamp", "data"}`, `data` the
upload exactly as `GET /v1/uploads/{id}` returns it; the headers are
`webhook-id` (the same on every retry of one event), `webhook-timestamp` and
`webhook-signature` (`v1,<base64>`; two, space-separated, while a rotated
secret's predecessor still signs).

The path, all at least once, every step's HTTP status its acknowledgement:

1. A state change is stored (lib/lifecycle.py `transition`, whoever made it)
   together with `webhook_owed_at`; then one *event* message (the upload id)
   is published to the webhooks topic. If that publish fails, the owed mark
   stays and the sweep publishes it again (`owed`).
2. The event message is pushed to `POST /internal/webhooks`: `fan_out`
   publishes one *delivery* message per endpoint of the upload's workspace
   and mode, carrying the exact body, then clears the owed mark.
3. Each delivery message is pushed to the same route: `deliver` signs and
   POSTs it (lib/targets.py guards the request) and records the attempt. A
   2xx within 10 s acknowledges; anything else answers 502 and Pub/Sub
   retries that (event, endpoint) pair alone, with exponential backoff, until
   it dead-letters it; the dead-letter topic's push (`POST
   /internal/webhook-dead-letters`) records that too.

Records: `webhook_endpoints/{we_...}` (the signing secrets live here and
nowhere else: never logged, never in a delivery record) and
`webhook_deliveries/{auto}` (one per attempt, deleted by a TTL policy on
`expire_at` after 7 days).

What a delivery costs beyond its POST is kept off its path: an instance
remembers an endpoint it read for ENDPOINT_CACHE_SECONDS (so a removed
endpoint, or a rotated secret, takes effect within that long), and attempt
rows are written in batches by a background writer (`AttemptLog`), within
a fraction of a second and off the request's path.
"""

from __future__ import annotations

import atexit
import base64
import functools
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, NamedTuple

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from standardwebhooks.webhooks import Webhook

from lib import lifecycle, logs, targets, uploads as media
from lib.clients import FIRESTORE_ATTEMPT_TIMEOUT, FIRESTORE_RETRY, Publisher, TtlLru, shared, upstream
from lib.errors import InvalidEvent
from lib.push import Push

ENDPOINTS = "webhook_endpoints"
DELIVERIES = "webhook_deliveries"
EVENT_TYPES = {lifecycle.COMPLETED: "upload.completed", lifecycle.REJECTED: "upload.rejected",
               lifecycle.CANCELLED: "upload.cancelled", lifecycle.EXPIRED: "upload.expired"}
# The old secret keeps signing beside the new one for this long after a rotation.
ROTATION_OVERLAP = timedelta(hours=24)
# Delivery attempts are kept this long (Firestore TTL policy on `expire_at`).
DELIVERY_RETENTION = timedelta(days=7)
# An owed event older than this is published again by the sweep (step 1 above).
OWED_GRACE = timedelta(minutes=10)
# How long an instance trusts an endpoint it read: the longest a removed
# endpoint can still receive, or a rotated-in secret wait to sign.
ENDPOINT_CACHE_SECONDS = 5.0
ENDPOINT_ID_PREFIX = "we_"
SECRET_PREFIX = "whsec_"
# Message attributes: which step a message is for.
KIND_EVENT, KIND_DELIVERY = "event", "delivery"


@dataclass(frozen=True)
class Endpoint:
    id: str
    workspace_id: str
    mode: str
    url: str
    secret: str = field(repr=False)  # never in a repr, a log line or a traceback's message
    created_at: datetime
    previous_secret: str | None = field(default=None, repr=False)
    previous_secret_expires_at: datetime | None = None

    @classmethod
    def from_snapshot(cls, snap: Any) -> "Endpoint":
        data = snap.to_dict()
        return cls(snap.id, data["workspace_id"], data["mode"], data["url"], data["secret"], data["created_at"],
                   data.get("previous_secret"), data.get("previous_secret_expires_at"))

    def public(self) -> dict[str, Any]:
        """What ops may see of it: everything but the secrets."""
        return {"id": self.id, "url": self.url, "workspace_id": self.workspace_id, "mode": self.mode,
                "created_at": media.rfc3339(self.created_at),
                "previous_secret_expires_at": (media.rfc3339(self.previous_secret_expires_at)
                                               if self.previous_secret_expires_at else None)}

    def signing_secrets(self, now: datetime) -> list[str]:
        """The current secret, and the previous one while its overlap lasts."""
        if self.previous_secret and self.previous_secret_expires_at and now < self.previous_secret_expires_at:
            return [self.secret, self.previous_secret]
        return [self.secret]


def new_secret() -> str:
    """`whsec_` + base64 of 32 random bytes (the spec asks for 24 to 64)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def endpoint_ref(db: firestore.Client, endpoint_id: str) -> firestore.DocumentReference:
    return db.collection(ENDPOINTS).document(endpoint_id)


def create_endpoint(db: firestore.Client, workspace_id: str, mode: str, url: str, allow_private: bool,
                    now: datetime, resolver: targets.Resolver | None = None) -> Endpoint:
    """A new endpoint with a fresh secret, once its URL passes the delivery rules.

    Raises:
        targets.TargetRefused: the URL breaks a rule (nothing is stored).
    """
    targets.resolve(url, allow_private, resolver)
    endpoint = Endpoint(ENDPOINT_ID_PREFIX + secrets.token_hex(16), workspace_id, mode, url, new_secret(), now)
    with upstream():
        endpoint_ref(db, endpoint.id).create(
            {"workspace_id": workspace_id, "mode": mode, "url": url, "secret": endpoint.secret, "created_at": now},
            retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)
    return endpoint


def get_endpoint(db: firestore.Client, endpoint_id: str) -> Endpoint | None:
    if not endpoint_id.startswith(ENDPOINT_ID_PREFIX) or len(endpoint_id) > 64:
        return None
    with upstream():
        snap = endpoint_ref(db, endpoint_id).get(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)
    return Endpoint.from_snapshot(snap) if snap.exists else None


class EndpointCache:
    """Endpoints (and endpoints found missing) remembered per instance for
    ENDPOINT_CACHE_SECONDS; bounded and thread-safe."""

    MAX_ENTRIES = 10_000

    def __init__(self, ttl: float = ENDPOINT_CACHE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self._entries: TtlLru[tuple[Endpoint | None]] = TtlLru(ttl, self.MAX_ENTRIES, clock)

    def get(self, db: firestore.Client, endpoint_id: str) -> Endpoint | None:
        with self._lock:
            cached = self._entries.get(endpoint_id)
        if cached is not None:
            return cached[0]
        endpoint = get_endpoint(db, endpoint_id)
        with self._lock:
            self._entries.put(endpoint_id, (endpoint,))
        return endpoint


def endpoint_cache() -> EndpointCache:
    """The instance's endpoint cache."""
    return shared(("webhook_endpoint_cache",), EndpointCache)


def list_endpoints(db: firestore.Client, workspace_id: str, mode: str | None = None) -> list[Endpoint]:
    query = db.collection(ENDPOINTS).where(filter=FieldFilter("workspace_id", "==", workspace_id))
    if mode is not None:
        query = query.where(filter=FieldFilter("mode", "==", mode))
    with upstream():
        found = [Endpoint.from_snapshot(snap)
                 for snap in query.stream(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT * 2)]
    return sorted(found, key=lambda endpoint: (endpoint.created_at, endpoint.id))


def remove_endpoint(db: firestore.Client, endpoint_id: str) -> Endpoint | None:
    """Delete the endpoint; deliveries already queued for it are dropped when they come up."""
    endpoint = get_endpoint(db, endpoint_id)
    if endpoint is not None:
        with upstream():
            endpoint_ref(db, endpoint_id).delete(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)
    return endpoint


def rotate_secret(db: firestore.Client, endpoint_id: str, now: datetime) -> Endpoint | None:
    """A new current secret; the old one signs beside it for ROTATION_OVERLAP."""
    endpoint = get_endpoint(db, endpoint_id)
    if endpoint is None:
        return None
    rotated = Endpoint(endpoint.id, endpoint.workspace_id, endpoint.mode, endpoint.url, new_secret(),
                       endpoint.created_at, endpoint.secret, now + ROTATION_OVERLAP)
    with upstream():
        endpoint_ref(db, endpoint_id).update(
            {"secret": rotated.secret, "previous_secret": rotated.previous_secret,
             "previous_secret_expires_at": rotated.previous_secret_expires_at, "rotated_at": now},
            retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)
    return rotated


def event_id(upload_id: str, event_type: str) -> str:
    """The event's id, the same however often it is published: the `webhook-id` header."""
    return "evt_" + hashlib.sha256(f"{upload_id}:{event_type}".encode()).hexdigest()[:32]


def sign(secrets_: list[str], message_id: str, at: datetime, body: str) -> str:
    """`webhook-signature`: one `v1,<base64>` per secret, space-separated."""
    return " ".join(_signer(secret).sign(message_id, at, body) for secret in secrets_)


@functools.lru_cache(maxsize=1024)
def _signer(secret: str) -> Webhook:
    # The library decodes the secret's base64 when constructed: once per secret, not per delivery.
    return Webhook(secret)


# -- step 1: the owed event ---------------------------------------------------------------------

def announce(publisher: Publisher, topic: str, records: list[lifecycle.Record]) -> None:
    """Publish the event message of each settled record.

    Raises:
        ServiceUnavailable: Pub/Sub did not take them all (the owed marks stay; the sweep retries).
    """
    publisher.publish(topic, [(b"", {"kind": KIND_EVENT, "upload_id": record.id}) for record in records])


def owed_query(db: firestore.Client, shard: int, cutoff: datetime, limit: int) -> firestore.Query:
    """One shard's records owing an event since before `cutoff` (terraform/firestore.tf upload_indexes.owed)."""
    return (db.collection(lifecycle.COLLECTION)
            .where(filter=FieldFilter(lifecycle.SHARD_FIELD, "==", shard))
            .where(filter=FieldFilter(lifecycle.OWED_FIELD, "<=", cutoff))
            .order_by(lifecycle.OWED_FIELD).limit(limit))


def owed(db: firestore.Client, now: datetime, limit: int = 200,
         shards: range = range(lifecycle.SWEEP_SHARDS)) -> list[lifecycle.Record]:
    """Settled records whose event was never fanned out, oldest first in each of
    `shards` (webhook_owed_at is sharded as the sweep's index is: lib/lifecycle.py).
    Each sweep job asks for its own slice, so no two jobs republish one event."""
    snaps = []
    for shard in shards:
        if len(snaps) >= limit:
            break
        query = owed_query(db, shard, now - OWED_GRACE, limit - len(snaps))
        with upstream():
            snaps += query.stream(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT * 2)
    return [lifecycle.Record(snap.id, snap.to_dict(), snap.update_time) for snap in snaps]


# -- step 2: fan-out ----------------------------------------------------------------------------

def event_body(record: lifecycle.Record, cdn_base_url: str) -> tuple[str, bytes]:
    """The event's type and the exact bytes every endpoint receives (and we sign)."""
    event_type = EVENT_TYPES[record.state]
    body = {"type": event_type, "timestamp": media.rfc3339(record.data["settled_at"]),
            "data": lifecycle.view(record, cdn_base_url).model_dump()}
    return event_type, json.dumps(body, separators=(",", ":")).encode()


def fan_out(db: firestore.Client, publisher: Publisher, topic: str, upload_id: str, cdn_base_url: str) -> int:
    """One delivery message per endpoint of the upload's workspace and mode; the owed mark cleared.

    Returns how many deliveries were queued.

    Raises:
        UploadNotFound: no such upload (the message is dropped).
        ServiceUnavailable: Firestore or Pub/Sub is down (Pub/Sub redelivers the event).
    """
    record = lifecycle.load_by_id(db, upload_id)
    if record.state not in EVENT_TYPES:
        return 0  # still pending: nothing happened to tell
    event_type, body = event_body(record, cdn_base_url)
    endpoints = list_endpoints(db, record.data["workspace_id"], record.data["mode"])
    if endpoints:
        attributes = {"kind": KIND_DELIVERY, "event_id": event_id(record.id, event_type), "event_type": event_type,
                      "upload_id": record.id}
        publisher.publish(topic, [(body, {**attributes, "endpoint_id": endpoint.id}) for endpoint in endpoints])
    if lifecycle.OWED_FIELD in record.data:
        with upstream():
            lifecycle.ref(db, record.id).update({lifecycle.OWED_FIELD: firestore.DELETE_FIELD},
                                                retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)
    return len(endpoints)


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
    def from_push(cls, push: Push) -> "Message":
        """Raises InvalidEvent: not one of our messages (lib/push.py read the envelope)."""
        kind = push.attributes.get("kind")
        if kind not in (KIND_EVENT, KIND_DELIVERY):
            raise InvalidEvent(f"the message's kind is {kind!r}, not event or delivery", INVALID_PUSH)
        if not isinstance(push.attributes.get("upload_id"), str):
            raise InvalidEvent("the message lacks the attribute upload_id", INVALID_PUSH)
        return cls(kind, push.message_id, push.attributes, push.data, push.attempt)

    def delivery(self) -> "Delivery":
        if self.kind != KIND_DELIVERY:
            raise InvalidEvent("not a delivery message", INVALID_PUSH)
        return Delivery.from_message(self.attributes, self.data, self.attempt)


# -- step 3: delivery ---------------------------------------------------------------------------

class Delivery(NamedTuple):
    """One delivery message: which event goes to which endpoint, and its exact body."""

    endpoint_id: str
    event_id: str
    event_type: str
    upload_id: str
    body: bytes
    attempt: int | None

    @classmethod
    def from_message(cls, attributes: dict[str, str], data: bytes, attempt: int | None) -> "Delivery":
        try:
            data.decode()
        except UnicodeDecodeError:
            raise InvalidEvent("a delivery message's body is not UTF-8", INVALID_PUSH) from None
        try:
            return cls(attributes["endpoint_id"], attributes["event_id"], attributes["event_type"],
                       attributes["upload_id"], data, attempt)
        except KeyError as exc:
            raise InvalidEvent(f"a delivery message lacks the attribute {exc.args[0]}", INVALID_PUSH) from None


class Outcome(NamedTuple):
    delivered: bool
    result: targets.Result | None  # None: nothing was sent (the endpoint is gone)
    refused: str | None = None  # why the URL was refused at this delivery

    @property
    def label(self) -> str:
        if self.result is None and self.refused is None:
            return "endpoint_removed"
        return "delivered" if self.delivered else "failed"


def deliver(db: firestore.Client, delivery: Delivery, allow_private: bool, now: datetime,
            resolver: targets.Resolver | None = None, endpoints: EndpointCache | None = None,
            record: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
    """Sign and send one event to one endpoint, then record the attempt.

    The URL's rules are checked again here (DNS may have changed since the
    endpoint was added). `endpoints` answers from the instance's cache
    (default: a read each time); `record` takes the attempt's row (default:
    written before this returns; the function hands it to its AttemptLog).

    Raises:
        ServiceUnavailable: the endpoint could not be read (Pub/Sub redelivers).
    """
    endpoint = endpoints.get(db, delivery.endpoint_id) if endpoints else get_endpoint(db, delivery.endpoint_id)
    if endpoint is None:
        return Outcome(False, None)
    body = delivery.body.decode()
    try:
        target = targets.resolve(endpoint.url, allow_private, resolver)
    except targets.TargetRefused as exc:
        outcome = Outcome(False, targets.Result(None, "refused_target", 0.0), refused=str(exc))
    else:
        headers = {
            "content-type": "application/json",
            "user-agent": "Framelane-Webhooks/1",
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": sign(endpoint.signing_secrets(now), delivery.event_id, now, body),
        }
        result = targets.post(target, delivery.body, headers)
        outcome = Outcome(result.ok, result)
    row = attempt_row(endpoint, delivery, outcome.result, now)
    if record is not None:
        record(row)
    else:
        write_rows(db, [row])
    return outcome


def attempt_row(endpoint: Endpoint | None, delivery: Delivery, result: targets.Result | None, now: datetime,
                dead_lettered: bool = False, workspace: tuple[str, str] | None = None) -> dict[str, Any]:
    """One attempt, as webhook-deliveries shows it: never a secret, never the receiver's body."""
    workspace_id, mode = (endpoint.workspace_id, endpoint.mode) if endpoint else (workspace or (None, None))
    return {
        "workspace_id": workspace_id,
        "at": now,
        "mode": mode,
        "endpoint_id": delivery.endpoint_id,
        "url": endpoint.url if endpoint else None,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "upload_id": delivery.upload_id,
        "attempt": delivery.attempt,
        "status": result.status if result else None,
        "error": "dead_lettered" if dead_lettered else (result.error if result else None),
        "latency_ms": result.latency_ms if result else None,
        "dead_lettered": dead_lettered,
    }


# Attempts per webhook_deliveries document (a few hundred bytes each, far below the 1 MiB limit).
ROWS_PER_DOCUMENT = 500


def write_rows(db: firestore.Client, rows: list[dict[str, Any]]) -> None:
    """Store attempts: one document per workspace and up to ROWS_PER_DOCUMENT of its attempts.

    A document holds `workspace_id` and `at` (its newest attempt's time: what
    webhook-deliveries queries), `expire_at` (the TTL field: `at` + 7 days)
    and `attempts`, the rows as one JSON string. One document for many
    attempts, rather than one each: a write per attempt costs a delivery more
    CPU than its POST (make bench, (f)) and Firestore bills per document
    written.
    """
    by_workspace: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        by_workspace.setdefault(row["workspace_id"], []).append(row)
    documents = []
    for workspace_id, own in by_workspace.items():
        for start in range(0, len(own), ROWS_PER_DOCUMENT):
            chunk = own[start:start + ROWS_PER_DOCUMENT]
            newest = max(row["at"] for row in chunk)
            attempts = [{**{k: v for k, v in row.items() if k != "workspace_id"}, "at": row["at"].isoformat()}
                        for row in chunk]
            documents.append({"workspace_id": workspace_id, "at": newest, "expire_at": newest + DELIVERY_RETENTION,
                              "attempts": json.dumps(attempts, separators=(",", ":"))})
    for start in range(0, len(documents), 500):  # Firestore's limit of writes per commit
        batch = db.batch()
        for document in documents[start:start + 500]:
            batch.create(db.collection(DELIVERIES).document(), document)
        with upstream():
            batch.commit(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)


class AttemptLog:
    """Attempt rows written in batches by one background thread, off the deliveries' path.

    A row is written within about MAX_DELAY seconds (at once when MAX_BATCH
    are waiting). If Firestore is down the rows wait for the next try (at most
    MAX_PENDING of them; beyond that the oldest are dropped, and the log says
    how many). The instance's exit flushes what is left. What is lost: the
    rows of an instance killed outright; the deliveries themselves are not
    affected.
    """

    MAX_BATCH = 400
    MAX_DELAY = 0.2
    MAX_PENDING = 20_000

    def __init__(self, db: firestore.Client):
        self._db = db
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._wake = threading.Event()
        threading.Thread(target=self._run, name="webhook-attempts", daemon=True).start()
        atexit.register(self.flush)

    def add(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._rows.append(row)
            dropped = len(self._rows) - self.MAX_PENDING
            if dropped > 0:
                del self._rows[:dropped]
            full = len(self._rows) >= self.MAX_BATCH
        if dropped > 0:
            logs.emit({"severity": "ERROR", "message": "webhook attempt rows dropped", "dropped": dropped})
        if full:
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.MAX_DELAY)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        with self._flushing:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return
            try:
                write_rows(self._db, rows)
            except Exception as exc:  # noqa: BLE001 - kept for the next try, said in the log
                with self._lock:
                    self._rows[:0] = rows
                logs.emit({"severity": "ERROR", "message": "webhook attempt rows not recorded yet; retrying",
                           "rows": len(rows), "reason": type(exc.__cause__ or exc).__name__})


def attempt_log(db: firestore.Client) -> AttemptLog:
    """The instance's attempt writer."""
    return shared(("webhook_attempt_log", id(db)), lambda: AttemptLog(db))


def dead_lettered(db: firestore.Client, delivery: Delivery, now: datetime) -> str:
    """A delivery Pub/Sub gave up on: recorded, so `webhook-deliveries` shows it."""
    endpoint = get_endpoint(db, delivery.endpoint_id)
    workspace = None
    if endpoint is None:
        try:
            record = lifecycle.load_by_id(db, delivery.upload_id)
            workspace = (record.data["workspace_id"], record.data["mode"])
        except Exception:  # noqa: BLE001 - the row is still worth writing without its workspace
            workspace = None
    write_rows(db, [attempt_row(endpoint, delivery, None, now, dead_lettered=True, workspace=workspace)])
    return "dead_letter_recorded"


def recent_deliveries(db: firestore.Client, workspace_id: str, limit: int) -> list[dict[str, Any]]:
    """The workspace's latest `limit` attempts, newest first.

    Documents come newest first (the (workspace_id, at desc) index); a
    document's `at` is its newest attempt, so once `limit` attempts are in
    hand and the next document is older than the oldest of them, no later
    document can hold a newer one.
    """
    query = (db.collection(DELIVERIES).where(filter=FieldFilter("workspace_id", "==", workspace_id))
             .order_by("at", direction=firestore.Query.DESCENDING))
    found: list[dict[str, Any]] = []
    with upstream():
        for snap in query.stream(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT * 2):
            document = snap.to_dict()
            if len(found) >= limit:
                found.sort(key=lambda row: row["at"], reverse=True)
                del found[limit:]
                if document["at"] < found[-1]["at"]:
                    break
            for row in json.loads(document["attempts"]):
                found.append({**row, "at": datetime.fromisoformat(row["at"])})
    found.sort(key=lambda row: row["at"], reverse=True)
    fields = ("event_id", "event_type", "upload_id", "endpoint_id", "url", "mode", "attempt", "status", "error",
              "latency_ms", "dead_lettered")
    return [{"at": media.rfc3339(row["at"]), **{name: row.get(name) for name in fields}} for row in found[:limit]]
