"""API keys: format, hashing, lookup.

A key is `fl_live_<secret>` or `fl_test_<secret>`, the secret 32 random bytes
in URL-safe base64 (43 characters). Firestore keeps only the key's SHA-256 as
the document id of `api_keys/{sha256}`; an unsalted hash is right for keys this
random (nothing to brute-force), and makes a lookup one get. Every failure is
the same 401 to the client; the reason goes to the log.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from google.cloud import firestore

from lib.clients import FIRESTORE_ATTEMPT_TIMEOUT, FIRESTORE_RETRY, upstream
from lib.errors import InvalidApiKey

COLLECTION = "api_keys"
MODES = {"live": "fl_live_", "test": "fl_test_"}
SECRET_BYTES = 32
# Accept secrets of 32 to 64 bytes so longer keys can be issued later.
_KEY = re.compile(r"fl_(live|test)_[A-Za-z0-9_-]{43,86}")
WORKSPACE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class ApiKey:
    id: str            # the SHA-256 hex of the key: the document id, safe to show
    workspace_id: str
    prefix: str        # e.g. "fl_live_AbCd": enough to recognise a key in a list or a log
    mode: str          # "live" | "test"


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
    if not authorization:
        raise InvalidApiKey("missing Authorization header")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer":
        raise InvalidApiKey("Authorization scheme is not Bearer")
    key = credentials.strip()
    if not is_well_formed(key):
        raise InvalidApiKey("malformed API key")
    return key


def authenticate(db: firestore.Client, authorization: str | None) -> ApiKey:
    """The active key behind the header. Malformed keys never reach Firestore.

    Raises:
        InvalidApiKey: missing, malformed, unknown or revoked.
        ServiceUnavailable: Firestore is down or slow.
    """
    key = bearer_key(authorization)
    with upstream():
        snap = db.collection(COLLECTION).document(key_id(key)).get(
            retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT
        )
    if not snap.exists:
        raise InvalidApiKey(f"unknown API key {display_prefix(key)}")
    doc = snap.to_dict() or {}
    if doc.get("revoked_at") is not None:
        raise InvalidApiKey(f"revoked API key {display_prefix(key)}")
    return ApiKey(id=snap.id, workspace_id=doc["workspace_id"], prefix=doc["prefix"], mode=doc["mode"])


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
            "created_at": datetime.now(timezone.utc),
            "revoked_at": None,
        }
    )
    return key, record
