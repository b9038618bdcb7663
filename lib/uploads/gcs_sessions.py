"""Resumable sessions and the objects they make: minting and cancelling a
session, finding, reading (ranges), placing and deleting the object it made.
Every call is bounded (lib/platform/clients.py) and a transient failure is our 503."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import requests
from google.api_core import exceptions as gexc
from google.cloud import storage

from lib.platform.clients import REWRITE_TIMEOUT, STORAGE_RETRY, STORAGE_TIMEOUT, upstream
from lib.platform.errors import ObjectChanged


def mint_session(
    client: storage.Client,
    bucket: str,
    object_name: str,
    content_type: str,
    origin: str | None,
    size: int | None = None,
    crc32c: str | None = None,
    md5: str | None = None,
) -> str:
    """Initiate a GCS resumable upload session and return its URL (a bearer secret).

    The content type is set on the blob before the session is created so the
    object is stored with it whatever the PUT says; `if_generation_match=0`
    means the session can only ever create, never overwrite; `origin` makes GCS
    answer the browser's CORS checks on the session URL; `size` (sent as
    `X-Upload-Content-Length`) makes GCS refuse any other length. `crc32c` and
    `md5` go into the initiation's object metadata (`crc32c`, `md5Hash`), so GCS
    refuses to finalize bytes that do not match them
    (https://cloud.google.com/storage/docs/data-validation): the final PUT
    fails with 400 and no object is made.
    """
    blob = client.bucket(bucket).blob(object_name)
    blob.content_type = content_type
    # Setting them marks them changed: the library sends changed writable fields at initiation.
    if crc32c is not None:
        blob.crc32c = crc32c
    if md5 is not None:
        blob.md5_hash = md5
    with upstream():
        return str(
            blob.create_resumable_upload_session(
                content_type=content_type,
                size=size,
                origin=origin,
                if_generation_match=0,
                timeout=STORAGE_TIMEOUT,
                retry=STORAGE_RETRY,
            )
        )


# What a DELETE on a session URL answers once the session takes no more bytes:
# 499 is GCS's "cancelled"; 404/410 a session already gone.
_SESSION_ENDED = frozenset({499, 404, 410})
# What STORAGE_RETRY retries. Any other answer (a 501 from a stand-in, a 400)
# is returned for the caller to settle by the bucket, never raised as a 500.
_TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


def cancel_session(http: requests.Session, session_url: str) -> int:
    """Cancel a resumable session (DELETE on its URL), so it accepts no more bytes.

    Returns the HTTP status; `session_ended(status)` says whether it means the
    session is cancelled or gone. Anything else (a session that had just
    finished answers with its object) is for the caller's next look at the
    bucket to settle.

    Raises:
        ServiceUnavailable: GCS is unavailable or slow (after retries).
    """

    def attempt() -> int:
        status = http.delete(session_url, headers={"Content-Length": "0"}, timeout=STORAGE_TIMEOUT).status_code
        if status in _TRANSIENT_STATUSES:
            # Retried within the Storage budget, then a 503 (lib/platform/clients.py upstream()).
            raise gexc.from_http_status(status, "cancelling an upload session")
        return status

    with upstream():
        return STORAGE_RETRY(attempt)()


def session_ended(status: int) -> bool:
    return status in _SESSION_ENDED


@dataclass(frozen=True)
class StoredObject:
    """What GCS says of a finalized object (from a lookup or a storage event)."""

    size: int
    generation: int
    crc32c: str | None
    md5: str | None
    created: datetime  # when it was finalized: the upload's completed_at


def stored_object(client: storage.Client, bucket: str, object_name: str) -> StoredObject | None:
    """The object if it exists (its upload completed), else None."""
    with upstream():
        blob = client.bucket(bucket).get_blob(object_name, timeout=STORAGE_TIMEOUT, retry=STORAGE_RETRY)
    if blob is None:
        return None
    return StoredObject(
        size=blob.size, generation=blob.generation, crc32c=blob.crc32c, md5=blob.md5_hash, created=blob.time_created
    )


def delete_object(client: storage.Client, bucket: str, object_name: str, generation: int) -> bool:
    """Delete that generation of the object; False if it is already gone (or replaced).

    Conditioned on the generation, so it can only ever delete the bytes it was told of.
    """
    try:
        with upstream():
            client.bucket(bucket).blob(object_name).delete(
                if_generation_match=generation, timeout=STORAGE_TIMEOUT, retry=STORAGE_RETRY
            )
        return True
    except (gexc.NotFound, gexc.PreconditionFailed):
        return False


def ranged(client: storage.Client, bucket: str, object_name: str, generation: int) -> Callable[[int, int], bytes]:
    """Reads of bytes [start, end) of that generation of the object (lib/media/sandbox.py's `fetch`).

    A ranged read carries no checksum to check (GCS states the whole object's): the bytes are
    as TLS delivered them. If that generation is gone (deleted or replaced meanwhile), the read
    is a 503: whoever settles it next sees the bucket as it is then.
    """
    blob = client.bucket(bucket).blob(object_name, generation=generation)

    def fetch(start: int, end: int) -> bytes:
        try:
            with upstream():
                data: bytes = blob.download_as_bytes(
                    start=start,
                    end=end - 1,
                    raw_download=True,
                    checksum=None,
                    timeout=STORAGE_TIMEOUT,
                    retry=STORAGE_RETRY,
                )
        except gexc.NotFound:
            raise ObjectChanged("the object changed while it was read") from None
        return data

    return fetch


def place(
    client: storage.Client, staging_bucket: str, bucket: str, object_name: str, generation: int, content_type: str
) -> StoredObject:
    """Put that generation of the staging object at the same name in the served bucket, by one rewrite.

    Within one location and storage class a rewrite completes in a single request (in a dual-region,
    once the object has replicated: docs/design-media.md quotes Google's page); otherwise its token is
    followed until it is done.
    `if_generation_match=0`: the served name is only ever created, never replaced. If it exists
    already, it is this upload's own earlier placement (nothing else writes that name, and its
    staging name is written once): that object is the answer.

    Raises:
        ServiceUnavailable: Storage is unavailable; ObjectChanged: the staging object went away meanwhile.
    """
    source = client.bucket(staging_bucket).blob(object_name, generation=generation)
    target = client.bucket(bucket).blob(object_name)
    target.content_type = content_type
    token: str | None = None
    try:
        with upstream():
            while True:  # one request within one location and storage class; a token otherwise
                token, _, _ = target.rewrite(
                    source,
                    token=token,
                    if_generation_match=0,
                    if_source_generation_match=generation,
                    timeout=REWRITE_TIMEOUT,
                    retry=STORAGE_RETRY,
                )
                if token is None:
                    break
    except (gexc.PreconditionFailed, gexc.NotFound):
        placed = stored_object(client, bucket, object_name)
        if placed is None:
            raise ObjectChanged("the staging object went away while it was placed") from None
        return placed
    return StoredObject(
        size=target.size,
        generation=target.generation,
        crc32c=target.crc32c,
        md5=target.md5_hash,
        created=target.time_created,
    )
