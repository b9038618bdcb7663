"""What the API shows: an upload record as GET returns it and a webhook event carries it as its `data`; a
workspace's limits as GET /v1/limits does."""

from __future__ import annotations

from typing import Any

from google.cloud import firestore

from lib.api.create import Limiting
from lib.api.models import LimitsOut, MediaFacts, Rejection, Upload
from lib.limits import counters, quotas
from lib.platform import clock
from lib.uploads import lifecycle, naming


def view(record: lifecycle.Record, cdn_base_url: str) -> Upload:
    """The upload as the API shows it: GET's body, and the `data` of its webhook events."""
    rejection = record.rejection
    media = record.media
    return Upload(
        id=record.id,
        status=record.state,
        source_url=naming.source_url(cdn_base_url, record.object_name),
        content_type=record.content_type,
        size_bytes=record.size_bytes,
        created_at=clock.rfc3339(record.created_at),
        expires_at=clock.rfc3339(record.expires_at),
        completed_at=clock.rfc3339(record.completed_at) if record.completed_at else None,
        crc32c=record.crc32c,
        md5=record.md5,
        rejection=Rejection(code=rejection[0], message=rejection[1]) if rejection else None,
        media=MediaFacts(**media) if media else None,
    )


def limits(
    db: firestore.Client, limiting: Limiting, workspace_id: str, mode: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """GET /v1/limits: a workspace's limits and where its mode stands, and the RateLimit fields."""
    if not limiting.limiter.enabled:
        return LimitsOut.off(mode).model_dump(), {}
    figures = quotas.for_workspace(db, workspace_id, limiting.defaults)
    usage = limiting.limiter.usage(workspace_id, mode)
    out = LimitsOut.counted(mode, figures.creates_per_minute, figures.max_pending_uploads, usage.creates, usage.pending)
    return out.model_dump(), counters.headers(figures, usage)
