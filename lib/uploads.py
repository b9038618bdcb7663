"""Uploads: content types, object naming, and minting the resumable session.

Everything but `mint_session` is pure and tested without emulators.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

from google.cloud import storage

from lib.clients import STORAGE_RETRY, STORAGE_TIMEOUT, upstream
from lib.errors import UnsupportedContentType, ValidationFailed

# What the renderer takes, each with the extension its objects get when the
# filename offers none. Subtitles and fonts are here because caption and text
# elements reference them by source_url like any other media.
CONTENT_TYPES: dict[str, str] = {
    "video/mp4": "mp4",
    "video/quicktime": "mov",
    "video/webm": "webm",
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "audio/mpeg": "mp3",
    "audio/wav": "wav",
    "audio/aac": "aac",
    "audio/mp4": "m4a",
    "audio/ogg": "ogg",
    "text/vtt": "vtt",
    "application/x-subrip": "srt",
    "font/ttf": "ttf",
    "font/otf": "otf",
    "font/woff": "woff",
    "font/woff2": "woff2",
}

# Names browsers and tools commonly report for the same formats (a File's
# `type` for a .wav is audio/x-wav in some browsers); they are stored under the
# canonical name above.
ALIASES: dict[str, str] = {
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/mp3": "audio/mpeg",
    "audio/x-m4a": "audio/mp4",
    "image/jpg": "image/jpeg",
    "text/srt": "application/x-subrip",
}

SUPPORTED = sorted(CONTENT_TYPES)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_EXTENSION = re.compile(r"[a-z0-9]{1,10}")


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
    """The filename's last suffix if it is 1-10 of [a-z0-9] once lower-cased, else the type's own."""
    if filename and "." in filename:
        suffix = filename.rsplit(".", 1)[1].lower()
        if _EXTENSION.fullmatch(suffix):
            return suffix
    return CONTENT_TYPES[content_type]


def new_object_name(workspace_id: str, extension: str) -> str:
    """`uploads/{workspace}/{128 random bits as hex}.{ext}`: unguessable, never client-chosen."""
    return f"uploads/{workspace_id}/{secrets.token_hex(16)}.{extension}"


def source_url(cdn_base_url: str, object_name: str) -> str:
    return f"{cdn_base_url}/{quote(object_name, safe='/')}"


def expiry(now: datetime, ttl_seconds: int) -> str:
    """RFC 3339 UTC, whole seconds: `2026-11-28T16:50:18Z`."""
    at = now.astimezone(timezone.utc).replace(microsecond=0) + timedelta(seconds=ttl_seconds)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def mint_session(client: storage.Client, bucket: str, object_name: str, content_type: str,
                 origin: str | None) -> str:
    """Initiate a GCS resumable upload session and return its URL (a bearer secret).

    The content type is set on the blob before the session is created so the
    object is stored with it whatever the PUT says; `if_generation_match=0`
    means the session can only ever create, never overwrite; `origin` makes GCS
    answer the browser's CORS checks on the session URL.
    """
    blob = client.bucket(bucket).blob(object_name)
    blob.content_type = content_type
    with upstream():
        return blob.create_resumable_upload_session(
            content_type=content_type,
            origin=origin,
            if_generation_match=0,
            timeout=STORAGE_TIMEOUT,
            retry=STORAGE_RETRY,
        )


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")


def browser_origin(header: str | None) -> str | None:
    """The request's `Origin` if it is a well-formed serialized origin, else None.

    Only a browser sends one, and only a well-formed one is worth binding the
    session to; anything else ("null", garbage) is dropped, never forwarded.
    """
    if header and _ORIGIN.fullmatch(header):
        return header
    return None


def now() -> datetime:
    return datetime.now(timezone.utc)
