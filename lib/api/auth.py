"""API keys: format, hashing, lookup.

A key is `fl_live_<secret>` or `fl_test_<secret>`, the secret 32 random bytes
in URL-safe base64 (43 characters). Firestore keeps only the key's SHA-256 as
the document id of `api_keys/{sha256}`; an unsalted hash is right for keys this
random (nothing to brute-force), and makes a lookup one get. Every failure is
the same 401 to the client; the reason goes to the log.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from lib.platform import oidc
from lib.platform.clients import FIRESTORE_ATTEMPT_TIMEOUT, FIRESTORE_RETRY, TtlLru, shared, upstream
from lib.platform.errors import InvalidApiKey

COLLECTION = "api_keys"
MODES = {"live": "fl_live_", "test": "fl_test_"}
SECRET_BYTES = 32
# Accept secrets of 32 to 64 bytes so longer keys can be issued later.
_KEY = re.compile(r"fl_(live|test)_[A-Za-z0-9_-]{43,86}")
WORKSPACE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class ApiKey:
    id: str  # the SHA-256 hex of the key: the document id, safe to show
    workspace_id: str
    prefix: str  # e.g. "fl_live_AbCd": enough to recognise a key in a list or a log
    mode: str  # "live" | "test"


def generate_key(mode: str) -> str:
    return MODES[mode] + secrets.token_urlsafe(SECRET_BYTES)


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def display_prefix(key: str) -> str:
    return key[: len("fl_live_") + 4]


def is_well_formed(key: str) -> bool:
    return _KEY.fullmatch(key) is not None


def bearer_key(authorization: str | None) -> str:
    """The key from an `Authorization: Bearer <key>` header, checked for form only.

    Raises:
        InvalidApiKey: missing header, another scheme, or not a key's shape.
    """
    key = oidc.bearer(authorization, InvalidApiKey)
    if not is_well_formed(key):
        raise InvalidApiKey("malformed API key")
    return key


class KeyLookupCache:
    """Key lookups remembered per instance, so a warm instance reads no Firestore
    for a key it has seen within `ttl` seconds; thread-safe.

    `ttl` is the longest a revoked key keeps working on an instance that saw it
    before the revocation. Failed lookups (unknown or revoked) are remembered for
    at most NEGATIVE_TTL, in a table of their own so that a flood of made-up keys
    cannot push the real ones out. Both tables are bounded.
    """

    NEGATIVE_TTL = 5.0
    MAX_ENTRIES = 10_000

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic):
        self._found: TtlLru[ApiKey] = TtlLru(ttl, self.MAX_ENTRIES, clock)
        self._refused: TtlLru[str] = TtlLru(min(ttl, self.NEGATIVE_TTL), self.MAX_ENTRIES, clock)

    def get(self, key_hash: str) -> ApiKey | str | None:
        """The cached key, the reason it was refused, or None when not cached."""
        return self._found.get(key_hash) or self._refused.get(key_hash)

    def found(self, key_hash: str, key: ApiKey) -> None:
        self._found.put(key_hash, key)

    def refused(self, key_hash: str, reason: str) -> None:
        self._refused.put(key_hash, reason)


def lookup_cache(ttl: float) -> KeyLookupCache:
    """The instance's cache of key lookups (one per TTL setting, made once)."""
    return shared(("key_lookup_cache", ttl), lambda: KeyLookupCache(ttl))


class Guard(Protocol):
    """What stands between a flood of made-up keys and Firestore (lib/limits/counters.py: per client address)."""

    def check(self) -> None:
        """Raises AuthenticationsLimited when the caller's address failed too often of late."""

    def failed(self) -> None:
        """The caller's key was looked up and refused."""


def client_address(forwarded_for: str | None, remote: str | None, load_balancer: str | None) -> str:
    """The address a request came from, as Google's front ends state it.

    Behind the external Application Load Balancer, X-Forwarded-For ends with
    `<client-ip>,<load-balancer-ip>`, after whatever the client sent itself
    (https://cloud.google.com/load-balancing/docs/https#x-forwarded-for_header): the entry before the
    balancer's own address (`load_balancer`, API_LB_ADDRESS) is the client's. Straight to the
    function's own URL, the last entry is the one Cloud Run's front end added. Without the header (a
    local run), the peer's address.
    """
    entries = [entry.strip() for entry in (forwarded_for or "").split(",") if entry.strip()]
    if load_balancer and len(entries) >= 2 and entries[-1] == load_balancer:
        return entries[-2][:64]
    if entries:
        return entries[-1][:64]
    return (remote or "unknown")[:64]


def is_loopback(address: str) -> bool:
    """A caller on this machine: only a local run (`make run`, the tests) sees one. On Cloud Run every
    request comes through Google's front end, which always states the client in X-Forwarded-For."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def authenticate(
    db: firestore.Client, authorization: str | None, cache: KeyLookupCache, guard: Guard | None = None
) -> ApiKey:
    """The active key behind the header. Malformed keys never reach Firestore;
    keys looked up recently are answered from `cache` without it; a key neither
    cached nor malformed is looked up only if `guard` lets its caller's address.

    Raises:
        InvalidApiKey: missing, malformed, unknown or revoked.
        AuthenticationsLimited: the address sent too many unknown or revoked keys of late.
        ServiceUnavailable: Firestore is down or slow.
    """
    key = bearer_key(authorization)
    key_hash = key_id(key)
    cached = cache.get(key_hash)
    if isinstance(cached, ApiKey):
        return cached
    if cached is not None:
        raise InvalidApiKey(f"{cached} (cached)")
    if guard is not None:
        guard.check()
    with upstream():
        snap = (
            db.collection(COLLECTION).document(key_hash).get(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)
        )
    doc = snap.to_dict() if snap.exists else None
    if doc is None or doc.get("revoked_at") is not None:
        reason = f"{'unknown' if doc is None else 'revoked'} API key {display_prefix(key)}"
        cache.refused(key_hash, reason)
        if guard is not None:
            guard.failed()
        raise InvalidApiKey(reason)
    found = ApiKey(id=snap.id, workspace_id=doc["workspace_id"], prefix=doc["prefix"], mode=doc["mode"])
    cache.found(key_hash, found)
    return found


def create_key(db: firestore.Client, workspace_id: str, name: str | None, mode: str) -> tuple[str, ApiKey]:
    """Mint a key and store its hash; the plaintext is returned once and never stored."""
    key = generate_key(mode)
    record = ApiKey(id=key_id(key), workspace_id=workspace_id, prefix=display_prefix(key), mode=mode)
    db.collection(COLLECTION).document(record.id).create(
        {
            "workspace_id": workspace_id,
            "name": name,
            "prefix": record.prefix,
            "mode": mode,
            "created_at": datetime.now(UTC),
            "revoked_at": None,
        }
    )
    return key, record


_LISTED = ("prefix", "mode", "name", "created_at", "revoked_at")


def list_keys(db: firestore.Client, workspace_id: str) -> list[dict[str, Any]]:
    """The workspace's keys as stored, oldest first: id, prefix, mode, name, created_at, revoked_at
    (never the key: only its hash is stored)."""
    query = db.collection(COLLECTION).where(filter=FieldFilter("workspace_id", "==", workspace_id))
    with upstream():
        rows = [
            {"id": snap.id, **{name: doc.get(name) for name in _LISTED}}
            for snap in query.stream(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT * 2)
            for doc in [snap.to_dict() or {}]
        ]
    return sorted(rows, key=lambda row: row["created_at"] or datetime.min.replace(tzinfo=UTC))


class KeyChanged(Exception):
    """The key's record changed between revoke's read and its write: nothing was written."""


@dataclass(frozen=True)
class Revoked:
    key_id: str
    prefix: str | None
    revoked_at: datetime  # the first revocation's time: revoking again changes nothing


def revoke(db: firestore.Client, key_id: str, now: datetime) -> Revoked | None:
    """Revoke the key with this id (None: there is none). Conditioned on the record as read, so a
    concurrent change is never overwritten.

    Raises:
        KeyChanged: the record changed meanwhile (run it again).
        ServiceUnavailable: Firestore is unavailable.
    """
    ref = db.collection(COLLECTION).document(key_id)
    with upstream():
        snap = ref.get(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)
    if not snap.exists:
        return None
    revoked_at = snap.get("revoked_at")
    if revoked_at is None:
        revoked_at = now
        try:
            with upstream():
                ref.update(
                    {"revoked_at": revoked_at},
                    option=db.write_option(last_update_time=snap.update_time),
                    retry=FIRESTORE_RETRY,
                    timeout=FIRESTORE_ATTEMPT_TIMEOUT,
                )
        except gexc.FailedPrecondition:
            raise KeyChanged(key_id) from None
    return Revoked(key_id, snap.get("prefix"), revoked_at)
