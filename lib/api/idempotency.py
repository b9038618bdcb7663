"""Idempotency-Key records: a request runs at most once per key (`once`), by claim, replay, complete, release.

A small state machine over one Firestore document per (workspace, mode, key),
id = SHA-256 of the three: a test key and a live key of one workspace never
share a record, as they never share an upload. The common case is a new key,
so a request first *creates* its claim (`create()` is a conditional write: exactly one racer wins); on
"already exists" it reads the record and branches on its state:

    different fingerprint           -> 409 idempotency_key_reused
    completed                       -> replay the stored 201 body with 200
    in progress, lease running      -> 409 idempotency_key_in_use + Retry-After
    in progress, lease run out      -> take the claim over (a crashed request)
    past expires_at                 -> treat as absent: take it over

Every write after the claim is conditioned on the claim's `update_time`, so
of two requests that both think they own a key only one can complete it: the
other answers 409 and its URL is never returned. That is the invariant: racers
on one key never receive two different upload URLs.

A request that fails after claiming deletes its claim (conditioned the same
way); if even that fails, the lease frees the key.

`once` runs that whole cycle around the work it is given (as AWS Lambda
Powertools' `idempotent_function` does); `begin`, `complete` and `release` are
its steps.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from lib.platform.clients import FIRESTORE_ATTEMPT_TIMEOUT, FIRESTORE_CLEANUP_TIMEOUT, FIRESTORE_RETRY, upstream
from lib.platform.errors import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidIdempotencyKey

COLLECTION = "idempotency_keys"
IN_PROGRESS, COMPLETED = "in_progress", "completed"
_PRINTABLE = re.compile(r"[\x20-\x7e]{1,255}")


def parse_key(header: str | None) -> str | None:
    """The Idempotency-Key header's value; None when absent.

    Raises:
        InvalidIdempotencyKey: empty, longer than 255, or not printable ASCII.
    """
    if header is None:
        return None
    if not _PRINTABLE.fullmatch(header):
        raise InvalidIdempotencyKey()
    return header


def record_id(workspace_id: str, mode: str, key: str) -> str:
    """The record's document id. The NUL cannot occur in any part, so ids cannot collide."""
    return hashlib.sha256("\x00".join((workspace_id, mode, key)).encode("utf-8")).hexdigest()


@dataclass
class Claim:
    """This request owns the key until it completes or releases the claim."""

    ref: firestore.DocumentReference
    token: str
    update_time: Any


@dataclass(frozen=True)
class Replay:
    body: dict[str, Any]


# What `once` runs: the response body, and a document to create in the same
# commit as the key's completion (None: nothing more to store).
Work = Callable[[], tuple[dict[str, Any], tuple[firestore.DocumentReference, dict[str, Any]] | None]]


def once(
    db: firestore.Client,
    workspace_id: str,
    mode: str,
    key: str,
    fingerprint: str,
    ttl_seconds: int,
    lease_seconds: int,
    work: Work,
    on_claim_left: Callable[[], None] = lambda: None,
) -> tuple[dict[str, Any], bool]:
    """Run `work` at most once for this key and request: (its body, False); or,
    for a request the key already completed, (the stored body, True).

    `fingerprint` says what the request means (`models.UploadRequest.fingerprint`):
    the same key with another meaning is refused. If `work` (or storing its
    result) fails, the claim is released so a retry can run afresh;
    `on_claim_left` is told when even that failed (the lease frees the key).

    Raises:
        IdempotencyKeyReused, IdempotencyKeyInUse: as `begin` and `complete`.
        ServiceUnavailable: Firestore is down or slow.
        Whatever `work` raises.
    """
    claim = begin(db, workspace_id, mode, key, fingerprint, ttl_seconds, lease_seconds)
    if isinstance(claim, Replay):
        return claim.body, True
    try:
        body, also_create = work()
        complete(db, claim, body, also_create)
    except BaseException:
        # Nothing this request stored may block the client's retry.
        if not release(db, claim):
            on_claim_left()
        raise
    return body, False


def begin(
    db: firestore.Client,
    workspace_id: str,
    mode: str,
    key: str,
    body_fingerprint: str,
    ttl_seconds: int,
    lease_seconds: int,
) -> Claim | Replay:
    """Claim the key for this request, or return the stored response to replay.

    Raises:
        IdempotencyKeyReused: the key was used with another body.
        IdempotencyKeyInUse: another request holds the key right now.
        ServiceUnavailable: Firestore is down or slow.
    """
    ref = db.collection(COLLECTION).document(record_id(workspace_id, mode, key))
    claim = _ClaimFields(workspace_id, mode, body_fingerprint, secrets.token_hex(16), ttl_seconds, lease_seconds)
    # Two rounds cover a record deleted (released) between our create and get.
    for _ in range(2):
        try:
            with upstream():
                result = ref.create(
                    claim.at(datetime.now(UTC)), retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT
                )
            return Claim(ref, claim.token, result.update_time)
        except gexc.AlreadyExists:
            pass
        with upstream():
            snap = ref.get(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)
        if not snap.exists:
            continue
        doc = snap.to_dict() or {}
        now = datetime.now(UTC)
        if doc.get("claim_token") == claim.token:
            # Our own create went through but its answer was lost and retried.
            return Claim(ref, claim.token, snap.update_time)
        replay = _judge(doc, body_fingerprint, now)
        return replay if replay is not None else _take_over(db, ref, snap, claim, now)
    raise IdempotencyKeyInUse()


@dataclass(frozen=True)
class _ClaimFields:
    """What a claim of the key stores, as of the moment it is written."""

    workspace_id: str
    mode: str
    fingerprint: str
    token: str
    ttl_seconds: int
    lease_seconds: int

    def at(self, now: datetime) -> dict[str, Any]:
        return {
            "workspace_id": self.workspace_id,
            "mode": self.mode,
            "fingerprint": self.fingerprint,
            "state": IN_PROGRESS,
            "claim_token": self.token,
            "response": None,
            "created_at": now,
            "lease_expires_at": now + timedelta(seconds=self.lease_seconds),
            # Firestore's TTL policy deletes on this field; we also treat a
            # record past it as absent, since TTL deletion lags by up to a day.
            "expires_at": now + timedelta(seconds=self.ttl_seconds),
        }


def _take_over(
    db: firestore.Client,
    ref: firestore.DocumentReference,
    snap: firestore.DocumentSnapshot[Any],
    claim: _ClaimFields,
    now: datetime,
) -> Claim:
    """A crashed request's claim, or an expired record, taken over: only if nobody else has written it since
    `snap` was read.

    Raises:
        IdempotencyKeyInUse: somebody did.
    """
    try:
        with upstream():
            result = ref.update(
                claim.at(now),
                option=db.write_option(last_update_time=snap.update_time),
                retry=FIRESTORE_RETRY,
                timeout=FIRESTORE_ATTEMPT_TIMEOUT,
            )
        return Claim(ref, claim.token, result.update_time)
    except (gexc.FailedPrecondition, gexc.NotFound):
        raise IdempotencyKeyInUse() from None


def _judge(doc: dict[str, Any], body_fingerprint: str, now: datetime) -> Replay | None:
    """What another request's record of the key means for this one: a Replay of
    its answer, or None when it may be taken over (expired, or its lease ran out).

    Raises:
        IdempotencyKeyReused: the key was used with another body.
        IdempotencyKeyInUse: its request is still running.
    """
    if doc["expires_at"] <= now:
        return None
    if doc["fingerprint"] != body_fingerprint:
        raise IdempotencyKeyReused()
    if doc["state"] == COMPLETED:
        return Replay(doc["response"])
    remaining = (doc["lease_expires_at"] - now).total_seconds()
    if remaining > 0:
        raise IdempotencyKeyInUse(retry_after=min(max(1, math.ceil(remaining)), 5))
    return None


def complete(
    db: firestore.Client,
    claim: Claim,
    response_body: dict[str, Any],
    also_create: tuple[firestore.DocumentReference, dict[str, Any]] | None = None,
) -> None:
    """Store the response under the claim; only the claim's owner can.

    `also_create` is a document created in the same atomic commit (the upload
    record), so it exists if and only if the key completes.

    Raises:
        IdempotencyKeyInUse: the claim was taken over (our lease ran out), so
            this request's result must not be returned.
        ServiceUnavailable: Firestore is down or slow; the caller releases.
    """
    batch = db.batch()
    if also_create is not None:
        batch.create(*also_create)
    batch.update(
        claim.ref,
        {"state": COMPLETED, "response": response_body},
        option=db.write_option(last_update_time=claim.update_time),
    )
    try:
        with upstream():
            claim.update_time = batch.commit(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)[-1].update_time
            return
    except (gexc.FailedPrecondition, gexc.NotFound, gexc.AlreadyExists):
        pass
    # The commit may have landed with its answer lost, so a retry saw our own
    # writes as a conflict: look before concluding the claim was lost.
    with upstream():
        snap = claim.ref.get(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)
    doc = snap.to_dict() or {}
    if doc.get("claim_token") == claim.token and doc.get("state") == COMPLETED and doc.get("response") == response_body:
        return
    raise IdempotencyKeyInUse()


def release(db: firestore.Client, claim: Claim) -> bool:
    """Delete our claim after a failure so a retry can go ahead. Best effort.

    Returns whether the claim is known to be gone; if not, its lease frees it.
    """
    try:
        claim.ref.delete(
            option=db.write_option(last_update_time=claim.update_time),
            retry=None,
            timeout=FIRESTORE_CLEANUP_TIMEOUT,
        )
        return True
    except Exception:  # noqa: BLE001 - the lease is the fallback; the caller logs
        return False
