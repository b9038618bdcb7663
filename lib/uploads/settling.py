"""Settling a pending upload: its bytes checked (size, checksums, media), placed where they are served, or refused.

The session writes to the staging bucket, which nothing serves. When the object lands there (a
storage event, or a GET, cancel or sweep looking for itself), `land` decides:

1. `verdict`: the size and each declared checksum, from the object's metadata (no reads);
2. `examine`: the object's bytes, read in ranges within a counted budget and decoded in a sandboxed
   child, say whether it is the media declared and what it holds (lib/media/);
3. a match is placed at its served name in the uploads bucket by one rewrite (`gcs_sessions.place`,
   a single request within one location and storage class), then recorded `completed` with its
   `media`, and the staging object deleted. `source_url` answers 404 until then;
4. anything else is recorded `rejected`, and its bytes stay in the staging bucket, never served,
   until the bucket's lifecycle rule deletes them (docs/operations.md, "Verifying media").

Every step is idempotent, so a second settler (a redelivered event, a racing GET) reaches the same
outcome: the verdict depends only on the bytes, a placement finds its own earlier copy, and the
record's write is conditional (lib/uploads/lifecycle.py `transition`). Uploads created before staging
(no `staged` field) landed at their served name: they are examined there, and a rejected one is
deleted.

Cancelling and expiring first cancel the GCS session, then look for the object once more: an
upload that finished in between is settled as landed, never lost and never reported cancelled.

Whoever settles first decides, and is judged by the bytes' own finalize time: bytes finalized at or
after `expires_at` (a session stays writable past it on GCS) make the upload `expired`. A settler
whose conditional write loses undoes what it placed unless the winner completed it with that very
object, so a cancel or expiry that wrote first is never left serving bytes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from google.cloud import firestore

from lib import media
from lib.media.facts import CONTENT_MISMATCH, UNREADABLE_MEDIA
from lib.platform import logs
from lib.platform.errors import ObjectChanged, ServiceUnavailable, SessionNotEnded, UploadCompleted
from lib.uploads import gcs_sessions
from lib.uploads.lifecycle import (
    CANCELLED,
    COMPLETED,
    EXPIRED,
    PENDING,
    REJECTED,
    Announce,
    Record,
    Settlement,
    Storage,
    load_by_id,
    transition,
)

# Why an upload was rejected (its `rejection.code`).
SIZE_MISMATCH, CHECKSUM_MISMATCH = "size_mismatch", "checksum_mismatch"
_AGAIN = " It is not served; create a new upload and send the file again."
# The most a check may take, its reads and its decoding together (wall clock). Each read is bounded
# by Storage's timeouts, but many could add up past a push's ack deadline; past this the upload stays
# pending (a 503: the event is redelivered, a GET answers again), never a verdict that would depend
# on the clock.
CHECK_SECONDS = 10.0


def verdict(declared: dict[str, Any], obj: gcs_sessions.StoredObject) -> Settlement:
    """What the object's metadata says of a pending record (`declared`: Record.declared): `completed` if
    it is the size declared and has each checksum declared, else `rejected`.

    A checksum declared but not reported by Storage cannot be checked, so it is
    a mismatch too: nothing unverified is called completed.
    """
    size = declared.get("size_bytes")
    if size is not None and obj.size != size:
        return Settlement.reject(
            obj, SIZE_MISMATCH, f"{obj.size} bytes landed, but size_bytes declared {size}." + _AGAIN
        )
    for name, stored in (("crc32c", obj.crc32c), ("md5", obj.md5)):
        wanted = declared.get(f"declared_{name}")
        if wanted is not None and stored != wanted:
            landed = f"have {name} {stored}" if stored else f"have no {name} in Storage"
            return Settlement.reject(
                obj, CHECKSUM_MISMATCH, f"The bytes that landed {landed}, but {name} {wanted} was declared." + _AGAIN
            )
    return Settlement.complete(obj)


def examine(gcs: Storage, bucket: str, name: str, obj: gcs_sessions.StoredObject, content_type: str) -> Settlement:
    """What the object's bytes say (lib/media/: decoded in a sandboxed child, within a counted budget):
    `completed` with their `media`, or `rejected` (content_mismatch, unreadable_media); either with
    `media_bytes_read`, what the ranged reads took. A check that runs past CHECK_SECONDS, or whose
    engine cannot start, is a 503: the upload stays pending and is settled again, never a verdict
    that would depend on the clock."""
    fetch = gcs_sessions.ranged(gcs.client, bucket, name, obj.generation)
    try:
        found = media.check(content_type, obj.size, fetch, time.monotonic() + CHECK_SECONDS)
    except (media.CheckTimedOut, media.EngineFailed) as exc:
        raise ServiceUnavailable(reason=f"checking the object: {exc}") from None
    if gcs.noting:
        logs.note(
            media_bytes_read=found.usage.bytes_read,
            media_reads=found.usage.reads,
            media_cpu_ms=found.usage.cpu_ms,
            media_sandbox=found.usage.sandbox,
        )
        if found.failure:
            logs.note(media_failure=found.failure)
    if found.media is not None:
        settlement = Settlement.complete(obj, found.media.as_record())
    elif found.code == CONTENT_MISMATCH:
        settlement = Settlement.reject(
            obj, CONTENT_MISMATCH, f"{found.reason} Create a new upload that declares the file's own content type."
        )
    else:
        settlement = Settlement.reject(
            obj,
            UNREADABLE_MEDIA,
            f"The bytes begin as {content_type} but cannot be read as it: {found.reason}." + _AGAIN,
        )
    return replace(settlement, media_bytes_read=found.usage.bytes_read)


def land(
    db: firestore.Client,
    gcs: Storage,
    record: Record,
    obj: gcs_sessions.StoredObject,
    step: Callable[[], None] = lambda: None,
    announce: Announce | None = None,
) -> Record:
    """Settle a pending record whose object `obj` has landed (module docstring, steps 1-4).

    `step` is called before each upstream step (settle's deadline); `announce`
    is told of the change if this call stored it (`transition`). Returns the record
    as stored afterwards (another request's decision if it settled the record first:
    also when that one's cleanup took the object away while this one was reading it).

    If another request settled it first, and not as completed by what this call placed, the
    placement is undone (that generation deleted): a cancel or expiry that wrote first is never
    left serving bytes. Bytes finalized at or after `expires_at` make the upload `expired`,
    unchecked and never placed, whoever looks first.
    """
    staged = record.staged
    try:
        settlement = _decide(gcs, record, obj, staged, step)
    except ObjectChanged:
        current = load_by_id(db, record.id)
        if current.state != PENDING:
            return current
        raise
    step()
    settled = transition(db, record, settlement, announce, gcs.release)
    if settled.ours and settled.rejection is not None and gcs.noting:
        logs.note(rejection_code=settled.rejection[0])  # the alert on integrity rejections counts it
    name = record.object_name
    # What this call left at the served name: its placement, or a legacy upload's own object.
    served = settlement.generation if settlement.state == COMPLETED else None
    if settled.state == COMPLETED and settled.generation == served:
        if staged:
            forget_staged(gcs, name, obj.generation)
        return settled
    if served is not None:
        # Theirs stands and it is not this placement: undone before anyone is told otherwise (a 503 if
        # Storage fails: the event is redelivered, and `unserve` finishes it).
        gcs_sessions.delete_object(gcs.client, gcs.bucket, name, served)
    if settled.state in (CANCELLED, EXPIRED):
        forget_late(gcs, record, obj.generation)
    return settled


def _decide(
    gcs: Storage, record: Record, obj: gcs_sessions.StoredObject, staged: bool, step: Callable[[], None]
) -> Settlement:
    """How the record ends, its object checked, and placed if it passed."""
    where, name = gcs.landing_bucket(record), record.object_name
    if obj.created >= record.expires_at:
        # Finalized too late: judged by when its bytes landed, not by who looked first.
        return Settlement.expire()
    settlement = verdict(record.declared, obj)
    if settlement.state == COMPLETED:
        step()
        settlement = examine(gcs, where, name, obj, record.content_type)
    if settlement.state == REJECTED and not staged:
        # Landed at its served name: deleted before the record says so, so a wrong object is never left
        # behind a rejection (if the write then fails, a redelivery or a look at the bucket settles it).
        step()
        gcs_sessions.delete_object(gcs.client, where, name, obj.generation)
    if settlement.state == COMPLETED and staged:
        step()
        placed = gcs_sessions.place(
            gcs.client, gcs.staging_bucket, gcs.bucket, name, obj.generation, record.content_type
        )
        settlement = replace(settlement, generation=placed.generation, completed_at=placed.created)
    return settlement


def forget_late(gcs: Storage, record: Record, generation: int) -> None:
    """Delete the object a cancelled or expired upload's session made after all (conditioned on its
    generation). Staged bytes are never served, so Storage failing leaves them to the bucket's
    lifecycle rule; a legacy upload's landed at its served name, so that failure is a 503."""
    name = record.object_name
    if not record.staged:
        gcs_sessions.delete_object(gcs.client, gcs.bucket, name, generation)
        return
    forget_staged(gcs, name, generation)


def unserve(gcs: Storage, record: Record) -> bool:
    """Make sure nothing is served for an upload that did not complete (a placement whose
    record write lost, left by an instance that died before undoing it). True if it deleted one."""
    placed = gcs_sessions.stored_object(gcs.client, gcs.bucket, record.object_name)
    return placed is not None and gcs_sessions.delete_object(
        gcs.client, gcs.bucket, record.object_name, placed.generation
    )


def forget_staged(gcs: Storage, name: str, generation: int) -> None:
    """Delete a placed upload's staging object; if Storage is unavailable, the bucket's lifecycle rule will."""
    with contextlib.suppress(ServiceUnavailable):
        gcs_sessions.delete_object(gcs.client, gcs.staging_bucket, name, generation)


def refresh(
    db: firestore.Client,
    gcs: Storage,
    record: Record,
    now: datetime,
    on_unsettled: Callable[[SessionNotEnded], None] | None = None,
    announce: Announce | None = None,
) -> Record:
    """A pending record brought up to date: settled if its object has landed,
    expired (its session cancelled) if past `expires_at`, else unchanged.

    If its session cannot be cancelled (an unexpected answer), the record is returned as stored,
    still pending, and `on_unsettled` is told: a GET answers what is known; the sweep settles it later.
    """
    if record.state != PENDING:
        return record
    try:
        return settle(db, gcs, record, EXPIRED if now >= record.expires_at else None, announce=announce)
    except SessionNotEnded as exc:
        if on_unsettled is not None:
            on_unsettled(exc)
        return record


def cancel(db: firestore.Client, gcs: Storage, record: Record, announce: Announce | None = None) -> Record:
    """Cancel a pending upload. Cancelled, expired or rejected ones are returned as they are.

    Raises:
        UploadCompleted: the upload had completed (maybe just now).
    """
    if record.state == PENDING:
        record = settle(db, gcs, record, CANCELLED, announce=announce)
    if record.state == COMPLETED:
        raise UploadCompleted()
    return record


class OutOfTime(Exception):
    """A settle step would start after its deadline; the record stays pending."""


def settle(
    db: firestore.Client,
    gcs: Storage,
    record: Record,
    end: str | None,
    deadline: float | None = None,
    announce: Announce | None = None,
) -> Record:
    """Move a pending record on: `land` it if its object has landed; otherwise, when `end` is
    given, cancel its session and mark it `end`.

    `deadline` (time.monotonic()) bounds when an upstream step may *start*:
    a later step raises OutOfTime instead, leaving the record pending (a
    session cancelled but not yet recorded is settled by the next try).

    Returns the record as stored afterwards (another request's decision if it
    settled the record first).
    """

    def step() -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise OutOfTime()

    where = gcs.landing_bucket(record)
    obj = gcs_sessions.stored_object(gcs.client, where, record.object_name)
    if obj is None and end is not None:
        step()
        status = gcs_sessions.cancel_session(gcs.http, record.session_url)
        # The upload may have finished between the look and the cancel.
        step()
        obj = gcs_sessions.stored_object(gcs.client, where, record.object_name)
        if obj is None and not gcs_sessions.session_ended(status):
            # Neither cancelled nor finished: leave it pending for a later try.
            raise SessionNotEnded(status)
    if obj is not None:
        return land(db, gcs, record, obj, step, announce)
    if end is None:
        return record
    step()
    return transition(
        db, record, Settlement.cancel() if end == CANCELLED else Settlement.expire(), announce, gcs.release
    )
