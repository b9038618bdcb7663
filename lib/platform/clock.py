"""Time as the API states it: now in UTC, an upload's lifetime, RFC 3339 in whole seconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def now() -> datetime:
    return datetime.now(UTC)


def rfc3339(at: datetime) -> str:
    """RFC 3339 UTC, whole seconds: `2026-11-28T16:50:18Z`."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def lifetime(now: datetime, ttl_seconds: int) -> tuple[datetime, datetime]:
    """(created_at, expires_at) for an upload made at `now`, in whole UTC seconds."""
    created = now.astimezone(UTC).replace(microsecond=0)
    return created, created + timedelta(seconds=ttl_seconds)
