"""The API's view of an upload record: what GET returns and what a webhook event carries as its `data`."""

from __future__ import annotations

from lib.api.models import MediaFacts, Rejection, Upload
from lib.platform import clock
from lib.uploads import lifecycle, naming


def view(record: lifecycle.Record, cdn_base_url: str) -> Upload:
    """The upload as the API shows it: GET's body, and the `data` of its webhook events."""
    data = record.data
    return Upload(
        id=record.id,
        status=data["state"],
        source_url=naming.source_url(cdn_base_url, data["object_name"]),
        content_type=data["content_type"],
        size_bytes=data.get("size_bytes"),
        created_at=clock.rfc3339(data["created_at"]),
        expires_at=clock.rfc3339(data["expires_at"]),
        completed_at=clock.rfc3339(data["completed_at"]) if data.get("completed_at") else None,
        crc32c=data.get("crc32c"),
        md5=data.get("md5"),
        rejection=(
            Rejection(code=data["rejection_code"], message=data["rejection_message"])
            if data["state"] == lifecycle.REJECTED
            else None
        ),
        media=MediaFacts(**data["media"]) if data["state"] == lifecycle.COMPLETED and data.get("media") else None,
    )
