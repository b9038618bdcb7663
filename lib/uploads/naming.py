"""What an upload is called: its id, its object's name and extension, its
canonical content type and its source URL. Pure: no clock, no I/O."""

from __future__ import annotations

import re
import secrets
from urllib.parse import quote

from lib.media.mediatypes import ALIASES, CONTENT_TYPES, EXTENSIONS
from lib.platform.errors import UnsupportedContentType, ValidationFailed

SUPPORTED = sorted(CONTENT_TYPES)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def normalize_content_type(value: str) -> str:
    """Canonical media type for `value`, or an error the client can act on.

    Drops parameters (`; codecs=...`) and surrounding spaces, lower-cases
    (ASCII only: no Unicode case mapping can turn something else into a
    supported type), resolves aliases. (tests/helpers.py states the
    same rule as the OpenAPI document's regular expression.)

    Raises:
        ValidationFailed: it holds control characters.
        UnsupportedContentType: it is not on the allow-list.
    """
    if _CONTROL.search(value):
        raise ValidationFailed(
            details={
                "fields": [
                    {
                        "field": "content_type",
                        "type": "control_characters",
                        "message": "content_type must not contain control characters",
                    }
                ]
            }
        )
    essence = value.split(";", 1)[0].strip(" ")
    if not essence.isascii():
        raise UnsupportedContentType(SUPPORTED)
    essence = ALIASES.get(essence.lower(), essence.lower())
    if essence not in CONTENT_TYPES:
        raise UnsupportedContentType(SUPPORTED)
    return essence


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
