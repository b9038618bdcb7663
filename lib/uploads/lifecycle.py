"""Upload records stored and read: the uploads collection's one reader and writer (what a record is, and how a
pending one ends, is lib/uploads/records.py's; its names are re-exported here, the record's face).

One Firestore document per upload, `uploads/{upl_...}`. A record leaves
`pending` exactly once, by a write conditioned on the `update_time` it was
read at (`transition`, given a Settlement), so a cancel, a GET, a storage event and a sweep racing
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
from lib.uploads.records import (
    CANCELLED as CANCELLED,
)
from lib.uploads.records import (
    COMPLETED as COMPLETED,
)
from lib.uploads.records import (
    EXPIRED as EXPIRED,
)
from lib.uploads.records import (
    FIELDS as FIELDS,
)
from lib.uploads.records import (
    OWED_FIELD as OWED_FIELD,
)
from lib.uploads.records import (  # re-exported: lifecycle is the record's face
    PENDING as PENDING,
)
from lib.uploads.records import (
    REJECTED as REJECTED,
)
from lib.uploads.records import (
    SHARD_FIELD as SHARD_FIELD,
)
from lib.uploads.records import (
    SWEEP_SHARDS as SWEEP_SHARDS,
)
from lib.uploads.records import (
    Record as Record,
)
from lib.uploads.records import (
    Settlement as Settlement,
)
from lib.uploads.records import (
    State as State,
)
from lib.uploads.records import (
    new_fields as new_fields,
)
from lib.uploads.records import (
    shard_of as shard_of,
)

COLLECTION = "uploads"
# Told of each state change this process stored (lib/webhooks/fanout.py's Announcer; None while webhooks are off).
Announce = Callable[[Record], None]


@dataclass(frozen=True)
class Storage:
    """What settling a record needs besides Firestore: GCS (the client, the served bucket, the
    staging bucket sessions write to, plain HTTP for session URLs), who to tell that an upload
    left `pending` (lib/limits/counters.py gives its slot back; None: no limits), and whether what
    verifying read is noted on the request's log line (`noting`; the sweep, settling many at once, notes none)."""

    client: storage.Client
    bucket: str
    staging_bucket: str
    http: requests.Session
    release: Callable[[Record], None] | None = None
    noting: bool = True

    def landing_bucket(self, record: Record) -> str:
        """Where the upload's session writes: the staging bucket, or (a record from before staging,
        with no `staged` field) the served bucket itself."""
        return self.staging_bucket if record.staged else self.bucket


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
    if record.workspace_id != workspace_id or record.mode != mode:
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
    settlement: Settlement,
    announce: Announce | None = None,
    release: Callable[[Record], None] | None = None,
) -> Record:
    """Apply `settlement` to a pending record, conditioned on the update_time it was read at.

    With `announce`, the write also marks the record's webhook event owed,
    and `announce` is called with the stored record once the write landed
    (only ours: whoever settled it first announces). `release` is told the
    same way, once per upload: its pending slot is free.

    Returns the record as stored afterwards: ours, or (if another request
    settled it first) theirs, which stands.
    """
    document = ref(db, record.id)
    changes = settlement.changes()
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
    settled = record.settled_by(settlement, result.update_time, owed=bool(owed))
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
    if record.owed:
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
