"""Request and response bodies of the uploads API (the seed's schemas,
extended), and the strict reading of a request body into them."""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr, field_validator
from pydantic import ValidationError as PydanticValidationError

from lib.media.facts import sane_dimension, sane_duration
from lib.platform.errors import InvalidJson, ValidationFailed

# An origin exactly as browsers serialize it in `Origin` (the HTML standard's
# serialization: scheme://host[:port], lower-case, no path, no default port):
# a host that is an ASCII DNS name of LDH labels (IDNs in their xn-- form; at
# most 253 characters; its last label not a number, which a browser reads as
# an IPv4 address), an IPv4 address in dotted-decimal form, or a bracketed IPv6
# address; a port from 1 to 65535 without leading zeros, never the scheme's
# default. The pattern says it all (the OpenAPI document states it as is) but
# that an IPv6 address may be written in any valid form: `is_origin` takes its
# canonical form, which is the one browsers send.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_END = r"(?::|(?![\s\S]))"  # where a host ends: its port, or the end of the origin
_DNS = rf"(?=[^:]{{1,253}}{_END})(?:{_LABEL}\.)*(?![0-9]+{_END}){_LABEL}"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"(?:{_OCTET}\.){{3}}{_OCTET}"
_H = r"[0-9a-f]{1,4}"
_IPV6 = (
    rf"(?:(?:{_H}:){{7}}{_H}|(?:{_H}:){{1,7}}:|(?:{_H}:){{1,6}}:{_H}|(?:{_H}:){{1,5}}(?::{_H}){{1,2}}"
    rf"|(?:{_H}:){{1,4}}(?::{_H}){{1,3}}|(?:{_H}:){{1,3}}(?::{_H}){{1,4}}|(?:{_H}:){{1,2}}(?::{_H}){{1,5}}"
    rf"|{_H}:(?::{_H}){{1,6}}|:(?:(?::{_H}){{1,7}}|:))"
)
_HOST = rf"(?:{_IPV4}(?={_END})|{_DNS}|\[{_IPV6}\])"
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
ORIGIN = re.compile(rf"http://{_HOST}(?::(?!80(?![0-9])){_PORT})?|https://{_HOST}(?::(?!443(?![0-9])){_PORT})?")
_BRACKETED = re.compile(r"\[([^\]]+)\]")


def is_origin(value: str) -> bool:
    """Whether `value` is an origin as a browser sends it (ORIGIN), an IPv6 address in any valid form."""
    return ORIGIN.fullmatch(value) is not None


def canonical_origin(value: str) -> str:
    """`value` (an origin: `is_origin`) with its IPv6 address, if any, in canonical form."""
    return _BRACKETED.sub(lambda m: f"[{ipaddress.IPv6Address(m.group(1))}]", value, count=1)


def browser_origin(header: str | None) -> str | None:
    """The request's `Origin` if it is a well-formed serialized origin, else None.

    Only a browser sends one, and only a well-formed one is worth binding the
    session to; anything else ("null", garbage) is dropped, never forwarded.
    """
    if header and is_origin(header):
        return canonical_origin(header)
    return None


class UploadRequest(BaseModel):
    # Strict: a number is not a content type, and an unknown field is a typo the
    # client wants to hear about rather than have silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    content_type: StrictStr
    filename: StrictStr | None = None
    # Bound into the session, so GCS refuses any other length. The upper limit
    # is a setting (MAX_UPLOAD_BYTES), checked by the caller.
    size_bytes: StrictInt | None = Field(default=None, gt=0)

    # The object's checksums as GCS writes them (base64 of the big-endian CRC32C,
    # of the MD5 digest). Bound into the session, so GCS refuses other bytes.
    crc32c: StrictStr | None = None
    md5: StrictStr | None = None

    # The browser origin that will PUT the bytes, when the request comes from the
    # customer's backend rather than that browser: bound to the session in place
    # of the request's own Origin header (Mux calls it cors_origin too).
    cors_origin: StrictStr | None = None

    def fingerprint(self, content_type: str) -> str:
        """What this request means, as its Idempotency-Key's record compares it:
        SHA-256 of every validated field as canonical JSON, with the content type
        as stored (`content_type`), so equivalent bodies (keys in another order,
        2048 and 2048.0, a null and an absent field, `video/MP4` and `video/mp4`)
        are one request. (Bodies hold no lone surrogates: `parse_json_object`
        refuses them, so UTF-8 always encodes.)"""
        meaning = {**self.model_dump(), "content_type": content_type}
        canonical = json.dumps(meaning, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @field_validator("size_bytes", mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        # JSON has one number type: 2048.0 is the integer 2048 (JSON Schema
        # agrees), so take it as such. Fractions, strings and booleans still fail.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("cors_origin")
    @classmethod
    def _origin(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not is_origin(value):
            raise ValueError(
                "must be an origin as a browser sends it: scheme://host[:port], lower-case, no path, no default port"
            )
        return canonical_origin(value)

    @field_validator("crc32c")
    @classmethod
    def _crc32c(cls, value: str | None) -> str | None:
        return _base64_digest(value, 4)

    @field_validator("md5")
    @classmethod
    def _md5(cls, value: str | None) -> str | None:
        return _base64_digest(value, 16)


def _base64_digest(value: str | None, size: int) -> str | None:
    """`value` if it is the canonical base64 (with padding) of `size` bytes."""
    if value is None:
        return None
    try:
        digest = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"must be the base64 of a {size}-byte digest") from None
    if len(digest) != size or base64.b64encode(digest).decode() != value:
        raise ValueError(f"must be the base64 of a {size}-byte digest (as GCS reports it, with padding)")
    return value


class UploadOut(BaseModel):
    """The 201 body of POST /v1/uploads (and of its idempotent replays)."""

    model_config = ConfigDict(frozen=True)

    id: str
    upload_url: str
    source_url: str
    expires_at: str


Status = Literal["pending", "completed", "rejected", "cancelled", "expired"]


class Rejection(BaseModel):
    """Why the bytes that landed were refused: `code` is stable (size_mismatch, checksum_mismatch,
    content_mismatch, unreadable_media), `message` says what landed against what was declared."""

    model_config = ConfigDict(frozen=True)

    code: str
    message: str


class MediaFacts(BaseModel):
    """What a completed upload's bytes hold, where their format states it (lib/media/): each fact
    sane or null (lib/media/facts.py's bounds: never NaN, Infinity, negative or absurd), also for a
    record stored before the bounds were kept."""

    model_config = ConfigDict(frozen=True)

    duration_seconds: Annotated[float | None, BeforeValidator(sane_duration)]
    width: Annotated[int | None, BeforeValidator(sane_dimension)]
    height: Annotated[int | None, BeforeValidator(sane_dimension)]
    codecs: list[str]


class Upload(BaseModel):
    """An upload as GET /v1/uploads/{id} and its cancel show it: never its URL."""

    model_config = ConfigDict(frozen=True)

    id: str
    status: Status
    source_url: str
    content_type: str
    size_bytes: int | None
    created_at: str
    expires_at: str
    # Set once completed: when the object was finalized, and its checksums as GCS reports them.
    completed_at: str | None = None
    crc32c: str | None = None
    md5: str | None = None
    # Set once rejected: the bytes that landed were not what was declared (and are not served).
    rejection: Rejection | None = None
    # Set once completed (for uploads verified when they landed): what the bytes hold.
    media: MediaFacts | None = None


class LimitsOut(BaseModel):
    """GET /v1/limits: the workspace's limits, and where the key's mode (test or live,
    counted apart) stands. Usage is null when limits are off or the store did not answer."""

    model_config = ConfigDict(frozen=True)

    mode: str  # "live" or "test"
    enforced: bool
    creates_per_minute: int | None
    max_pending_uploads: int | None
    creates_in_last_minute: int | None
    creates_remaining: int | None
    pending_uploads: int | None

    @classmethod
    def off(cls, mode: str) -> LimitsOut:
        """Limits are off here (no store configured): nothing is enforced or counted."""
        return cls(
            mode=mode,
            enforced=False,
            creates_per_minute=None,
            max_pending_uploads=None,
            creates_in_last_minute=None,
            creates_remaining=None,
            pending_uploads=None,
        )

    @classmethod
    def counted(
        cls, mode: str, creates_per_minute: int, max_pending_uploads: int, creates: int | None, pending: int | None
    ) -> LimitsOut:
        """The figures and the usage the store reported (None: it did not answer)."""
        return cls(
            mode=mode,
            enforced=True,
            creates_per_minute=creates_per_minute,
            max_pending_uploads=max_pending_uploads,
            creates_in_last_minute=creates,
            creates_remaining=None if creates is None else max(0, creates_per_minute - creates),
            pending_uploads=pending,
        )


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # Parsers disagree on which duplicate wins; refuse to guess.
        raise InvalidJson("The request body has a duplicate key in a JSON object.")
    return obj


def _reject_constant(name: str) -> None:
    raise InvalidJson(f"The request body is not valid JSON ({name} is not a JSON value).")


# More digits than any value we take can have (5 TiB has 13). Python refuses to
# convert integer strings over 4,300 digits (a ValueError json.loads lets out).
_INT_DIGITS = 32


def _parse_int(text: str) -> int:
    """An integer literal; past `_INT_DIGITS` digits, one of the same sign and
    number of digits, so limits still refuse it, without the costly (and above
    4,300 digits refused) conversion of every digit."""
    digits = text.lstrip("-")
    if len(digits) <= _INT_DIGITS:
        return int(text)
    magnitude = int(10 ** (len(digits) - 1))
    return -magnitude if text.startswith("-") else magnitude


_SURROGATE = re.compile("[\ud800-\udfff]")


def _reject_lone_surrogates(value: Any) -> None:
    """JSON may escape half of a UTF-16 pair ("\\ud800"); that is no character,
    and nothing downstream (UTF-8, Firestore) can store it."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise InvalidJson(
                    "The request body holds a lone UTF-16 surrogate (\\ud800-\\udfff), "
                    "which is not a Unicode character."
                )
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode strict JSON (UTF-8, no duplicate keys, no NaN, no lone surrogates)
    that must be an object.

    Raises:
        InvalidJson: anything else, including nesting too deep to parse.
    """
    try:
        text = raw.decode("utf-8")
        body = json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant, parse_int=_parse_int
        )
    except InvalidJson:
        raise
    except UnicodeDecodeError:
        raise InvalidJson("The request body is not valid UTF-8.") from None
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"The request body is not valid JSON (line {exc.lineno}, column {exc.colno}).") from None
    except RecursionError:
        raise InvalidJson("The request body is nested too deeply.") from None
    if not isinstance(body, dict):
        raise InvalidJson("The request body must be a JSON object.")
    _reject_lone_surrogates(body)
    return body


def validate_upload_request(body: dict[str, Any]) -> UploadRequest:
    """The body as an UploadRequest, or 422 with one entry per bad field.

    The details name the field and the rule it broke, never the value sent: at
    most MAX_FIELD_ERRORS of them (a 64 KiB body can hold thousands of unknown
    keys), with `more_fields` saying how many more broke a rule.
    """
    try:
        return UploadRequest.model_validate(body)
    except PydanticValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        fields = []
        for err in errors[:MAX_FIELD_ERRORS]:
            field = ".".join(str(part) for part in err["loc"])[:100] or "body"
            message = _FIELD_RULES.get(field) if err["type"] == "value_error" else None
            fields.append(
                {"field": field, "type": err["type"], "message": message or _MESSAGES.get(err["type"], err["msg"])}
            )
        details: dict[str, Any] = {"fields": fields}
        if len(errors) > MAX_FIELD_ERRORS:
            details["more_fields"] = len(errors) - MAX_FIELD_ERRORS
        raise ValidationFailed(details=details) from None


# The request has 6 fields: past this many errors, the rest are unknown keys, counted, not listed.
MAX_FIELD_ERRORS = 20


_MESSAGES = {
    "missing": "This field is required.",
    "string_type": "Must be a string.",
    "int_type": "Must be an integer.",
    "greater_than": "Must be a positive integer.",
    "extra_forbidden": "Unknown field.",
}
# What a field's own rule (its validator) asks for.
_DIGEST = "Must be the base64 of the digest, as GCS reports it (crc32c: 4 bytes, md5: 16)."
_FIELD_RULES = {
    "crc32c": _DIGEST,
    "md5": _DIGEST,
    "cors_origin": (
        "Must be an origin as browsers send Origin: scheme://host[:port] (http or https, "
        "lower-case, no path, no default port, a port up to 65535)."
    ),
}
