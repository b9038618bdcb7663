"""Uploads: content types, ids and object naming, and the GCS side of a
session's life: minting it, cancelling it, finding the object it made.

Everything but `mint_session`, `cancel_session`, `stored_object` and
`delete_object` is pure and tested without emulators.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import requests
from google.api_core import exceptions as gexc
from google.cloud import storage

from lib.clients import STORAGE_RETRY, STORAGE_TIMEOUT, upstream
from lib.errors import UnsupportedContentType, ValidationFailed
from lib.mediatypes import ALIASES, CONTENT_TYPES, EXTENSIONS
from lib.models import ORIGIN

SUPPORTED = sorted(CONTENT_TYPES)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

def normalize_content_type(value: str) -> str:
    """Canonical media type for `value`, or an error the client can act on.

    Drops parameters (`; codecs=...`) and surrounding spaces, lower-cases
    (ASCII only: no Unicode case mapping can turn something else into a
    supported type), resolves aliases. `content_type_pattern()` states the
    same rule as a regular expression for the OpenAPI document.

    Raises:
        ValidationFailed: it holds control characters.
        UnsupportedContentType: it is not on the allow-list.
    """
    if _CONTROL.search(value):
        raise ValidationFailed(
            details={"fields": [{"field": "content_type", "type": "control_characters",
                                 "message": "content_type must not contain control characters"}]}
        )
    essence = value.split(";", 1)[0].strip(" ")
    if not essence.isascii():
        raise UnsupportedContentType(SUPPORTED)
    essence = ALIASES.get(essence.lower(), essence.lower())
    if essence not in CONTENT_TYPES:
        raise UnsupportedContentType(SUPPORTED)
    return essence

def content_type_pattern() -> str:
    """The accepted `content_type` values as one regular expression (JSON Schema dialect)."""
    def caseless(name: str) -> str:
        # Escape only what is syntax: ECMA regexes in unicode mode reject `\-`.
        return "".join(f"[{c}{c.upper()}]" if c.isalpha() else "\\" + c if c in ".+" else c for c in name)

    names = "|".join(caseless(name) for name in sorted({*CONTENT_TYPES, *ALIASES}))
    # `(?![\s\S])` ends the string in both ECMA and Python regexes; `$` would
    # also match before a trailing newline in Python, which the service refuses.
    return f"^ *(?:{names}) *(?:;[^\\x00-\\x1f\\x7f-\\x9f]*)?(?![\\s\\S])"

def choose_extension(filename: str | None, content_type: str) -> str:
    """The filename's last suffix, ASCII-lower-cased, if it is one of the content
    type's usual extensions (`EXTENSIONS`); otherwise the type's own."""
    if filename and "." in filename:
        suffix = filename.rsplit(".", 1)[1]
        # ASCII only: str.lower() maps the Kelvin sign (U+212A) to "k".
        if suffix.isascii() and suffix.lower() in EXTENSIONS[content_type]:
            return suffix.lower()
    return CONTENT_TYPES[content_type]

# Test-mode objects live under their own prefix, which a bucket lifecycle rule
# deletes a day after upload (terraform/storage.tf).
PREFIXES = {"live": "uploads/", "test": "test-uploads/"}
UPLOAD_ID = re.compile(r"upl_[0-9a-f]{32}")

def new_upload(workspace_id: str, extension: str, mode: str) -> tuple[str, str]:
    """A new upload's id and object name, from one 128-bit random token.

    The object is `{prefix}{workspace}/{token}.{ext}` (prefix by the key's
    mode): unguessable, never client-chosen; the id is `upl_{token}`.
    """
    token = secrets.token_hex(16)
    return f"upl_{token}", f"{PREFIXES[mode]}{workspace_id}/{token}.{extension}"

def source_url(cdn_base_url: str, object_name: str) -> str:
    return f"{cdn_base_url}/{quote(object_name, safe='/')}"

def rfc3339(at: datetime) -> str:
    """RFC 3339 UTC, whole seconds: `2026-11-28T16:50:18Z`."""
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

def lifetime(now: datetime, ttl_seconds: int) -> tuple[datetime, datetime]:
    """(created_at, expires_at) for an upload made at `now`, in whole UTC seconds."""
    created = now.astimezone(timezone.utc).replace(microsecond=0)
    return created, created + timedelta(seconds=ttl_seconds)

def mint_session(client: storage.Client, bucket: str, object_name: str, content_type: str,
                 origin: str | None, size: int | None = None, crc32c: str | None = None,
                 md5: str | None = None) -> str:
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
        return blob.create_resumable_upload_session(
            content_type=content_type,
            size=size,
            origin=origin,
            if_generation_match=0,
            timeout=STORAGE_TIMEOUT,
            retry=STORAGE_RETRY,
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
            # Retried within the Storage budget, then a 503 (lib/clients.py upstream()).
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
    return StoredObject(size=blob.size, generation=blob.generation, crc32c=blob.crc32c, md5=blob.md5_hash,
                        created=blob.time_created)

def delete_object(client: storage.Client, bucket: str, object_name: str, generation: int) -> bool:
    """Delete that generation of the object; False if it is already gone (or replaced).

    Conditioned on the generation, so it can only ever delete the bytes it was told of.
    """
    try:
        with upstream():
            client.bucket(bucket).blob(object_name).delete(if_generation_match=generation, timeout=STORAGE_TIMEOUT,
                                                           retry=STORAGE_RETRY)
        return True
    except (gexc.NotFound, gexc.PreconditionFailed):
        return False

def browser_origin(header: str | None) -> str | None:
    """The request's `Origin` if it is a well-formed serialized origin, else None.

    Only a browser sends one, and only a well-formed one is worth binding the
    session to; anything else ("null", garbage) is dropped, never forwarded.
    """
    if header and ORIGIN.fullmatch(header):
        return header
    return None

def now() -> datetime:
    return datetime.now(timezone.utc)
