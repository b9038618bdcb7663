"""Upload records and their states (pending, then completed, rejected, cancelled, expired); their one reader and writer.

One Firestore document per upload, `uploads/{upl_...}`. A record leaves
`pending` exactly once, by a write conditioned on the `update_time` it was
read at (`transition`), so a cancel, a GET, a storage event and a sweep racing
on one upload agree on one outcome: whoever writes second re-reads and reports
what the first decided. What decides it is lib/uploads/settling.py. Once settled, the
record forgets its session URL.

Every read and write of the collection is here, owed webhook marks included:
the sweep (lib/uploads/sweep.py) pages through `due` and settles each record, webhook
fan-out (lib/webhooks/fanout.py) loads a record and `clear_owed`s it, and the
sweep's republishing finds what is still `owed`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests
from google.api_core import exceptions as gexc
from google.cloud import firestore, storage
from google.cloud.firestore_v1.aggregation import AggregationQuery
from google.cloud.firestore_v1.base_query import FieldFilter

from lib.platform.clients import FIRESTORE_ATTEMPT_TIMEOUT, FIRESTORE_RETRY, upstream
from lib.platform.errors import UploadNotFound
from lib.uploads import naming

COLLECTION = "uploads"
PENDING, COMPLETED, REJECTED, CANCELLED, EXPIRED = "pending", "completed", "rejected", "cancelled", "expired"
# Fields the record holds. Queried: (sweep_shard, state, expires_at) by the sweep, (sweep_shard,
# webhook_owed_at) by its republishing of owed events, (workspace_id, mode, state) by `pending_count`.
FIELDS = (
    "workspace_id",
    "mode",
    "object_name",
    "content_type",
    "size_bytes",
    "created_at",
    "expires_at",
    "state",
    "session_url",
    "settled_at",
    "completed_at",
    "crc32c",
    "md5",
    "generation",
    "webhook_owed_at",
    "sweep_shard",
    "declared_crc32c",
    "declared_md5",
    "rejection_code",
    "rejection_message",
    "staged",
    "media",
    "media_bytes_read",
)
# expires_at and webhook_owed_at increase with time. A collection with a
# sequentially increasing indexed field takes about 500 writes a second
# (https://firebase.google.com/docs/firestore/solutions/shard-timestamp, which
# lifts it as here: a shard field leading the composite index, one query per
# shard, the timestamp itself left out of single-field indexing). Every upload
# writes the sweep's index twice (created pending, then settled): with
# SWEEP_SHARDS ranges, 64 x 500 / 2 = 16,000 uploads a second.
SHARD_FIELD = "sweep_shard"
SWEEP_SHARDS = 64


# Set with every state change while webhooks are on, cleared once the event is fanned out
# to the workspace's endpoints (`clear_owed`); the sweep publishes again what stays owed (`owed`).
OWED_FIELD = "webhook_owed_at"


def shard_of(upload_id: str) -> int:
    """The record's shard: from the id's random hex, so it is as even as the ids."""
    return int(upload_id[-4:], 16) % SWEEP_SHARDS


@dataclass(frozen=True)
class Record:
    id: str
    data: dict[str, Any]
    update_time: Any
    # True on the record `transition` returns when its own write stored the
    # change (False: another request settled it first, or nothing was written).
    ours: bool = False

    @classmethod
    def of(cls, snap: Any) -> Record:
        """The record a snapshot of an existing upload document holds."""
        return cls(snap.id, snap.to_dict() or {}, snap.update_time)

    @property
    def state(self) -> str:
        return str(self.data["state"])


# Told of each state change this process stored (lib/webhooks/fanout.py's Announcer; None while webhooks are off).
Announce = Callable[[Record], None]


@dataclass(frozen=True)
class Storage:
    """What settling a record needs besides Firestore: GCS (the client, the served bucket, the
    staging bucket sessions write to, plain HTTP for session URLs), who to tell that an upload
    left `pending` (lib/limits/counters.py gives its slot back; None: no limits), and the request's log
    line, for what verifying read (None: not logged)."""

    client: storage.Client
    bucket: str
    staging_bucket: str
    http: requests.Session
    release: Callable[[Record], None] | None = None
    log: dict[str, Any] | None = None

    def landing_bucket(self, record: Record) -> str:
        """Where the upload's session writes: the staging bucket, or (a record from before staging,
        with no `staged` field) the served bucket itself."""
        return self.staging_bucket if record.data.get("staged") else self.bucket


def new_fields(
    upload_id: str,
    workspace_id: str,
    mode: str,
    object_name: str,
    content_type: str,
    size_bytes: int | None,
    created_at: datetime,
    expires_at: datetime,
    session_url: str,
    crc32c: str | None = None,
    md5: str | None = None,
) -> dict[str, Any]:
    """A new pending record, its session writing to the staging bucket (`staged`). `size_bytes`,
    `crc32c` and `md5` are what the client declared (None: not declared): what lands is checked
    against them."""
    return {
        SHARD_FIELD: shard_of(upload_id),
        "workspace_id": workspace_id,
        "mode": mode,
        "object_name": object_name,
        "content_type": content_type,
        "size_bytes": size_bytes,
        "created_at": created_at,
        "expires_at": expires_at,
        "state": PENDING,
        "session_url": session_url,
        "declared_crc32c": crc32c,
        "declared_md5": md5,
        "staged": True,
    }


def ref(db: firestore.Client, upload_id: str) -> firestore.DocumentReference:
    return db.collection(COLLECTION).document(upload_id)


def creation(
    db: firestore.Client, upload_id: str, fields: dict[str, Any]
) -> tuple[firestore.DocumentReference, dict[str, Any]]:
    """A new upload's document and fields, for a caller that creates it in its own commit (idempotency.once)."""
    return ref(db, upload_id), fields


def create_record(db: firestore.Client, upload_id: str, fields: dict[str, Any]) -> None:
    """Record a new upload. A retry that finds its own first write is not an error."""
    try:
        with upstream():
            ref(db, upload_id).create(fields, retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)
    except gexc.AlreadyExists:
        # The id is 128 random bits: only our own write, its answer lost, can be there.
        pass


def load(db: firestore.Client, workspace_id: str, mode: str, upload_id: str) -> Record:
    """The caller's upload. Raises:
    UploadNotFound: no such id, or it belongs to another workspace or mode
        (the answer is the same: whether it exists elsewhere is not told).
    """
    record = load_by_id(db, upload_id)
    if record.data.get("workspace_id") != workspace_id or record.data.get("mode") != mode:
        raise UploadNotFound()
    return record


def load_by_id(db: firestore.Client, upload_id: str) -> Record:
    """The upload with this id, whoever's it is. Raises:
    UploadNotFound: no such id.
    """
    if not naming.UPLOAD_ID.fullmatch(upload_id):
        raise UploadNotFound()
    with upstream():
        snap = ref(db, upload_id).get(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)
    if not snap.exists:
        raise UploadNotFound()
    return Record.of(snap)


def transition(
    db: firestore.Client,
    record: Record,
    changes: dict[str, Any],
    announce: Announce | None = None,
    release: Callable[[Record], None] | None = None,
) -> Record:
    """Apply `changes` to a pending record, conditioned on the update_time it was read at.

    With `announce`, the write also marks the record's webhook event owed,
    and `announce` is called with the stored record once the write landed
    (only ours: whoever settled it first announces). `release` is told the
    same way, once per upload: its pending slot is free.

    Returns the record as stored afterwards: ours, or (if another request
    settled it first) theirs, which stands.
    """
    document = ref(db, record.id)
    owed = {OWED_FIELD: firestore.SERVER_TIMESTAMP} if announce is not None else {}
    try:
        with upstream():
            result = document.update(
                {**changes, **owed, "settled_at": firestore.SERVER_TIMESTAMP, "session_url": firestore.DELETE_FIELD},
                option=db.write_option(last_update_time=record.update_time),
                retry=FIRESTORE_RETRY,
                timeout=FIRESTORE_ATTEMPT_TIMEOUT,
            )
    except gexc.FailedPrecondition:
        # Settled by someone else first (or our own write, its answer lost): theirs stands.
        with upstream():
            snap = document.get(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)
        return Record.of(snap)
    # Ours landed: the stored record is the one we read plus our changes (no second read).
    data = {k: v for k, v in record.data.items() if k != "session_url"}
    data.update(changes, settled_at=result.update_time)
    if owed:
        data[OWED_FIELD] = result.update_time
    settled = Record(record.id, data, result.update_time, ours=True)
    if release is not None:
        release(settled)
    if announce is not None:
        announce(settled)
    return settled


def due_query(db: firestore.Client, shard: int, now: datetime, page_size: int) -> firestore.Query:
    """One shard's uploads pending past expires_at, oldest first (terraform/firestore.tf upload_indexes.sweep)."""
    return (
        db.collection(COLLECTION)
        .where(filter=FieldFilter(SHARD_FIELD, "==", shard))
        .where(filter=FieldFilter("state", "==", PENDING))
        .where(filter=FieldFilter("expires_at", "<=", now))
        .order_by("expires_at")
        .limit(page_size)
    )


def due(db: firestore.Client, shard: int, now: datetime, page_size: int, after: Any = None) -> tuple[list[Record], Any]:
    """A page of `due_query`, and the cursor the next page starts after
    (`after`: the previous page's cursor).

    Raises:
        ServiceUnavailable: Firestore is unavailable.
    """
    query = due_query(db, shard, now, page_size)
    if after is not None:
        query = query.start_after(after)
    with upstream():
        snaps = list(query.get(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT))
    return [Record.of(snap) for snap in snaps], (snaps[-1] if snaps else after)


def owed_query(db: firestore.Client, shard: int, cutoff: datetime, limit: int) -> firestore.Query:
    """One shard's records owing an event since before `cutoff` (terraform/firestore.tf upload_indexes.owed)."""
    return (
        db.collection(COLLECTION)
        .where(filter=FieldFilter(SHARD_FIELD, "==", shard))
        .where(filter=FieldFilter(OWED_FIELD, "<=", cutoff))
        .order_by(OWED_FIELD)
        .limit(limit)
    )


def owed(db: firestore.Client, cutoff: datetime, limit: int = 200, shards: range = range(SWEEP_SHARDS)) -> list[Record]:
    """Settled records whose webhook event has been owed since before `cutoff`
    (never fanned out), oldest first in each of `shards`: webhook_owed_at is
    sharded as the sweep's index is, so each sweep job asks for its own slice
    and no two jobs republish one event."""
    snaps: list[Any] = []
    for shard in shards:
        if len(snaps) >= limit:
            break
        with upstream():
            snaps += owed_query(db, shard, cutoff, limit - len(snaps)).stream(
                retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT * 2
            )
    return [Record.of(snap) for snap in snaps]


def pending_count(db: firestore.Client, workspace_id: str, mode: str) -> int:
    """How many of a workspace's uploads in `mode` are pending (firestore.tf upload_indexes.pending), for
    ops: unlike the limiter's count, one past expires_at counts until the sweep expires it."""
    with upstream():
        # Typed as a list of results, it is a list of lists of them (one list per read).
        result: Any = (
            AggregationQuery(pending_query(db, workspace_id, mode))
            .count()
            .get(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT * 2)
        )
    return int(result[0][0].value)


def pending_expiries(db: firestore.Client, workspace_id: str, mode: str) -> dict[str, datetime]:
    """Each of a workspace's pending uploads in `mode` and its expires_at (the limiter rebuilds its
    count from these: lib/limits/counters.py). One read per upload, paged by the client."""
    with upstream():
        snaps = list(
            pending_query(db, workspace_id, mode)
            .select(["expires_at"])
            .stream(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT * 4)
        )
    return {snap.id: snap.get("expires_at") for snap in snaps}


def recorded(db: firestore.Client, upload_ids: list[str]) -> set[str]:
    """Which of these uploads have a record (in any state): one read each."""
    if not upload_ids:
        return set()
    with upstream():
        snaps = db.get_all(
            [ref(db, upload_id) for upload_id in upload_ids],
            field_paths=["state"],
            retry=FIRESTORE_RETRY,
            timeout=FIRESTORE_ATTEMPT_TIMEOUT * 2,
        )
        return {snap.id for snap in snaps if snap.exists}


def pending_query(db: firestore.Client, workspace_id: str, mode: str) -> firestore.Query:
    return (
        db.collection(COLLECTION)
        .where(filter=FieldFilter("workspace_id", "==", workspace_id))
        .where(filter=FieldFilter("mode", "==", mode))
        .where(filter=FieldFilter("state", "==", PENDING))
    )


def clear_owed(db: firestore.Client, record: Record) -> None:
    """The record's webhook event is fanned out: it is owed no more."""
    if OWED_FIELD in record.data:
        with upstream():
            ref(db, record.id).update(
                {OWED_FIELD: firestore.DELETE_FIELD}, retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT
            )


def backfill_shards(db: firestore.Client, page_size: int = 500) -> tuple[int, int]:
    """Give every upload record that has no `sweep_shard` its shard: the one-off migration to the
    sharded indexes (docs/operations.md, "Capacity"); by document id, reading only that field;
    idempotent. Returns (records read, records given a shard)."""
    read = given = 0
    query = db.collection(COLLECTION).select([SHARD_FIELD]).order_by("__name__").limit(page_size)
    cursor = None
    while True:
        page = query.start_after(cursor) if cursor is not None else query
        with upstream():
            snaps = list(page.get(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT))
        batch = db.batch()
        missing = [snap for snap in snaps if SHARD_FIELD not in (snap.to_dict() or {})]
        for snap in missing:
            batch.update(snap.reference, {SHARD_FIELD: shard_of(snap.id)})
        if missing:
            with upstream():
                batch.commit(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)
        read, given = read + len(snaps), given + len(missing)
        if len(snaps) < page_size:
            return read, given
        cursor = snaps[-1]
