"""A workspace's own limits (`workspace_limits/{workspace_id}`, set by ops), the deployment's defaults for what
it leaves out; read through a per-instance cache. The collection's one reader and writer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from lib.platform import logs
from lib.platform.clients import FIRESTORE_ATTEMPT_TIMEOUT, TtlLru, shared

COLLECTION = "workspace_limits"
# A change made by `set-limits` is seen within this (plus one Firestore read).
LIMITS_CACHE_SECONDS = 4.0


@dataclass(frozen=True)
class Limits:
    creates_per_minute: int
    max_pending_uploads: int


def _cache() -> TtlLru[Limits]:
    return shared(("workspace_limits",), lambda: TtlLru[Limits](LIMITS_CACHE_SECONDS, 10_000))


def for_workspace(db: firestore.Client, workspace_id: str, defaults: Limits) -> Limits:
    """The workspace's limits: its own where ops set them, else `defaults`. A failed
    read uses the defaults for this request (logged) rather than fail the create."""
    cache = _cache()
    cached = cache.get(workspace_id)
    if cached is not None:
        return cached
    try:
        snap = db.collection(COLLECTION).document(workspace_id).get(timeout=FIRESTORE_ATTEMPT_TIMEOUT)
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        logs.note(limits_read_failed=type(exc).__name__)
        return defaults
    limits = of(snap.to_dict() if snap.exists else None, defaults)
    cache.put(workspace_id, limits)
    return limits


def of(data: dict[str, Any] | None, defaults: Limits) -> Limits:
    """The limits a `workspace_limits` document sets, the defaults for what it leaves out or
    holds in any form but a positive whole number (the CLI writes only those)."""
    data = data or {}

    def figure(name: str, default: int) -> int:
        value = data.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default

    return Limits(
        figure("creates_per_minute", defaults.creates_per_minute),
        figure("max_pending_uploads", defaults.max_pending_uploads),
    )


def set_limits(
    db: firestore.Client, workspace_id: str, creates_per_minute: int | None, max_pending_uploads: int | None
) -> dict[str, Any]:
    """Set a workspace's own figures (None: leave as is); the document as stored."""
    changes: dict[str, Any] = {"updated_at": firestore.SERVER_TIMESTAMP}
    if creates_per_minute is not None:
        changes["creates_per_minute"] = creates_per_minute
    if max_pending_uploads is not None:
        changes["max_pending_uploads"] = max_pending_uploads
    ref = db.collection(COLLECTION).document(workspace_id)
    ref.set(changes, merge=True)
    return ref.get().to_dict() or {}


def stored(db: firestore.Client, workspace_id: str) -> dict[str, Any] | None:
    """The workspace's own figures as stored (None: it has none)."""
    snap = db.collection(COLLECTION).document(workspace_id).get()
    return snap.to_dict() if snap.exists else None
