"""Webhook endpoints and their signing secrets: the one room that holds secrets.

`webhook_endpoints/{we_...}` holds each endpoint's URL and its secrets
(`whsec_` + base64 of 32 random bytes, as the Standard Webhooks specification
asks); a rotated secret's predecessor keeps signing beside it for
ROTATION_OVERLAP. Secrets are never logged, never in a repr, never in a
delivery record; `Endpoint.public()` is what ops may see. `sign` makes the
`webhook-signature` header with the specification's own library.

An instance remembers an endpoint it read for ENDPOINT_CACHE_SECONDS
(`EndpointCache`), so a removed endpoint, or a rotated secret, takes effect
within that long.
"""

from __future__ import annotations

import base64
import functools
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from standardwebhooks.webhooks import Webhook

from lib.platform import clock
from lib.platform.clients import FIRESTORE_ATTEMPT_TIMEOUT, FIRESTORE_RETRY, TtlLru, shared, upstream
from lib.webhooks import targets

ENDPOINTS = "webhook_endpoints"
# The old secret keeps signing beside the new one for this long after a rotation.
ROTATION_OVERLAP = timedelta(hours=24)
# How long an instance trusts an endpoint it read: the longest a removed
# endpoint can still receive, or a rotated-in secret wait to sign.
ENDPOINT_CACHE_SECONDS = 5.0
ENDPOINT_ID_PREFIX = "we_"
# What `create_endpoint` makes; anything else names no endpoint (and is never a Firestore path).
ENDPOINT_ID = re.compile(r"we_[0-9a-f]{32}")
SECRET_PREFIX = "whsec_"
# An endpoint that has failed every delivery for this long is disabled: Svix's rule ("If all
# attempts to a specific endpoint fail for a period of 5 days, the endpoint will be disabled",
# https://docs.svix.com/retries). Stripe disables failing endpoints too but publishes no figure.
# The clock starts at the first failure after the last success (`failing_since`).
DISABLE_AFTER = timedelta(days=5)


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
    # Every delivery since this time has failed (None: the last one succeeded, or none failed).
    failing_since: datetime | None = None
    # Set once it has failed for DISABLE_AFTER: nothing more is sent until `enable` clears it.
    disabled_at: datetime | None = None

    @classmethod
    def from_snapshot(cls, snap: Any) -> Endpoint:
        data = snap.to_dict()
        return cls(
            snap.id,
            data["workspace_id"],
            data["mode"],
            data["url"],
            data["secret"],
            data["created_at"],
            data.get("previous_secret"),
            data.get("previous_secret_expires_at"),
            data.get("failing_since"),
            data.get("disabled_at"),
        )

    def public(self) -> dict[str, Any]:
        """What ops may see of it: everything but the secrets."""

        def at(value: datetime | None) -> str | None:
            return clock.rfc3339(value) if value else None

        return {
            "id": self.id,
            "url": self.url,
            "workspace_id": self.workspace_id,
            "mode": self.mode,
            "created_at": clock.rfc3339(self.created_at),
            "previous_secret_expires_at": at(self.previous_secret_expires_at),
            "status": "disabled" if self.disabled_at else "failing" if self.failing_since else "enabled",
            "failing_since": at(self.failing_since),
            "disabled_at": at(self.disabled_at),
        }

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


def create_endpoint(
    db: firestore.Client,
    workspace_id: str,
    mode: str,
    url: str,
    allow_private: bool,
    now: datetime,
    resolver: targets.Resolver | None = None,
) -> Endpoint:
    """A new endpoint with a fresh secret, once its URL passes the delivery rules.

    Raises:
        targets.TargetRefused: the URL breaks a rule (nothing is stored).
    """
    targets.resolve(url, allow_private, resolver)
    endpoint = Endpoint(ENDPOINT_ID_PREFIX + secrets.token_hex(16), workspace_id, mode, url, new_secret(), now)
    with upstream():
        endpoint_ref(db, endpoint.id).create(
            {"workspace_id": workspace_id, "mode": mode, "url": url, "secret": endpoint.secret, "created_at": now},
            retry=FIRESTORE_RETRY,
            timeout=FIRESTORE_ATTEMPT_TIMEOUT,
        )
    return endpoint


def get_endpoint(db: firestore.Client, endpoint_id: str) -> Endpoint | None:
    """The endpoint with this id; None if there is none, or the id is not one we make."""
    if not ENDPOINT_ID.fullmatch(endpoint_id):
        return None
    with upstream():
        snap = endpoint_ref(db, endpoint_id).get(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)
    return Endpoint.from_snapshot(snap) if snap.exists else None


class EndpointCache:
    """Endpoints (and endpoints found missing) remembered per instance for
    ENDPOINT_CACHE_SECONDS; bounded and thread-safe."""

    MAX_ENTRIES = 10_000

    def __init__(self, ttl: float = ENDPOINT_CACHE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self._entries: TtlLru[tuple[Endpoint | None]] = TtlLru(ttl, self.MAX_ENTRIES, clock)

    def forget(self, endpoint_id: str) -> None:
        """Read it afresh next time (this instance just changed it)."""
        self._entries.pop(endpoint_id)

    def get(self, db: firestore.Client, endpoint_id: str) -> Endpoint | None:
        cached = self._entries.get(endpoint_id)
        if cached is not None:
            return cached[0]
        endpoint = get_endpoint(db, endpoint_id)
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
        found = [
            Endpoint.from_snapshot(snap)
            for snap in query.stream(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT * 2)
        ]
    return sorted(found, key=lambda endpoint: (endpoint.created_at, endpoint.id))


def remove_endpoint(db: firestore.Client, endpoint_id: str) -> Endpoint | None:
    """Delete the endpoint; deliveries already queued for it are dropped when they come up."""
    endpoint = get_endpoint(db, endpoint_id)
    if endpoint is not None:
        with upstream():
            endpoint_ref(db, endpoint_id).delete(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)
    return endpoint


def record_health(db: firestore.Client, endpoint: Endpoint, delivered: bool, now: datetime) -> str | None:
    """Keep the endpoint's failure clock after one of its deliveries; written only when it
    changes (the first failure after a success, a success after failures, the disabling).

    Returns "disabled" when this failure disabled it, else None.
    """
    if delivered:
        changes: dict[str, Any] = {"failing_since": firestore.DELETE_FIELD} if endpoint.failing_since else {}
    elif endpoint.failing_since is None:
        changes = {"failing_since": now}
    elif now - endpoint.failing_since >= DISABLE_AFTER and endpoint.disabled_at is None:
        changes = {"disabled_at": now}
    else:
        changes = {}
    if not changes:
        return None
    with upstream():
        endpoint_ref(db, endpoint.id).update(changes, retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)
    endpoint_cache().forget(endpoint.id)
    return "disabled" if "disabled_at" in changes else None


def enable(db: firestore.Client, endpoint_id: str) -> Endpoint | None:
    """Deliver to a disabled endpoint again, its failure clock reset."""
    endpoint = get_endpoint(db, endpoint_id)
    if endpoint is not None:
        with upstream():
            endpoint_ref(db, endpoint_id).update(
                {"disabled_at": firestore.DELETE_FIELD, "failing_since": firestore.DELETE_FIELD},
                retry=FIRESTORE_RETRY,
                timeout=FIRESTORE_ATTEMPT_TIMEOUT,
            )
    return get_endpoint(db, endpoint_id)


def rotate_secret(db: firestore.Client, endpoint_id: str, now: datetime) -> Endpoint | None:
    """A new current secret; the old one signs beside it for ROTATION_OVERLAP."""
    endpoint = get_endpoint(db, endpoint_id)
    if endpoint is None:
        return None
    rotated = Endpoint(
        endpoint.id,
        endpoint.workspace_id,
        endpoint.mode,
        endpoint.url,
        new_secret(),
        endpoint.created_at,
        endpoint.secret,
        now + ROTATION_OVERLAP,
    )
    with upstream():
        endpoint_ref(db, endpoint_id).update(
            {
                "secret": rotated.secret,
                "previous_secret": rotated.previous_secret,
                "previous_secret_expires_at": rotated.previous_secret_expires_at,
                "rotated_at": now,
            },
            retry=FIRESTORE_RETRY,
            timeout=FIRESTORE_ATTEMPT_TIMEOUT,
        )
    return rotated


def sign(secrets_: list[str], message_id: str, at: datetime, body: str) -> str:
    """`webhook-signature`: one `v1,<base64>` per secret, space-separated."""
    return " ".join(_signer(secret).sign(message_id, at, body) for secret in secrets_)


@functools.lru_cache(maxsize=1024)
def _signer(secret: str) -> Webhook:
    # The library decodes the secret's base64 when constructed: once per secret, not per delivery.
    return Webhook(secret)
