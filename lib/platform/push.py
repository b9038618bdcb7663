"""Pub/Sub push requests, for every push route: the subscription's OIDC token checked, the envelope read.

A push is an HTTP POST whose JSON body is `{"message": {"attributes",
"data" (base64), "messageId", "publishTime"}, "subscription",
"deliveryAttempt"}`, with the push subscription's Google-signed OIDC token in
`Authorization` (https://cloud.google.com/pubsub/docs/push). The token is
checked first (lib/platform/oidc.py), so only then is the body read, as plain JSON:
it is Pub/Sub's, not a client's.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictStr, ValidationError

from lib.platform import oidc
from lib.platform.config import OWN_URL
from lib.platform.errors import InvalidEvent


@dataclass(frozen=True)
class Push:
    """One pushed message."""

    message_id: str
    attributes: dict[str, str]
    data: bytes  # the message's data, decoded (empty when it has none)
    attempt: int | None  # Pub/Sub's deliveryAttempt (set when the subscription dead-letters)


def audience(host: str, configured: str | None) -> str | None:
    """The audience a push's token must carry: as set, or (config.OWN_URL) the URL the push reached. Set so
    only behind Cloud Run's IAM check, which has already required the token's audience to be this service's
    run.app URL (https://cloud.google.com/run/docs/configuring/custom-audiences): this checks it again."""
    return f"https://{host}" if configured == OWN_URL else configured


def receive(
    authorization: str | None,
    raw: bytes,
    audience: str | None,
    service_account: str | None,
    certs: oidc.CertCache,
    route: str,
    invalid: str | None = None,
) -> Push:
    """The pushed message, once the token is checked: Google's, for `audience`,
    from `service_account` (the route's push subscription; `route` names its
    settings, "events" -> EVENTS_*). `invalid` is the 400's message for a body
    that is not a push (the route's own words).

    Raises:
        InvalidToken, Forbidden: the token is not the caller's (lib/platform/oidc.py).
        InvalidEvent: the body is not a Pub/Sub push envelope.
        ServiceUnavailable: Google's certificates cannot be had.
    """
    oidc.verify(authorization, audience, service_account, certs, route=route)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidEvent("body: not JSON", invalid) from None
    return read(body, invalid)


class _Message(BaseModel):
    """A push's message, as Pub/Sub sends it: string attributes, base64 data, a string id (either
    spelling). Anything else in it is Pub/Sub's (publishTime, orderingKey) and ignored."""

    model_config = ConfigDict(extra="ignore")

    attributes: dict[str, StrictStr] | None = None
    data: StrictStr | None = None
    message_id: StrictStr | None = Field(None, validation_alias=AliasChoices("messageId", "message_id"))


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    message: _Message
    deliveryAttempt: object = None  # Pub/Sub's field name; read leniently below


# What each part of a refused envelope is called in the 400's reason.
_NOT_A_STRING_ID = "the message's messageId is not a string"
_REASONS = {
    "message": "not a Pub/Sub push envelope: no message object",
    "attributes": "the message's attributes are not strings",
    "messageId": _NOT_A_STRING_ID,
    "message_id": _NOT_A_STRING_ID,
    "data": "the message's data is not base64",
}


def read(body: object, invalid: str | None = None) -> Push:
    """The message of a push envelope.

    Raises:
        InvalidEvent: not a push envelope (no message object, attributes that
            are not strings, data that is not base64, a messageId that is not a string).
    """
    try:
        envelope = _Envelope.model_validate(body)
    except ValidationError as exc:
        where = exc.errors()[0]["loc"]
        part = str(where[1]) if len(where) > 1 and where[0] == "message" else "message"
        raise InvalidEvent(_REASONS.get(part, _REASONS["message"]), invalid) from None
    message = envelope.message
    try:
        decoded = base64.b64decode(message.data or "", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEvent(_REASONS["data"], invalid) from None
    attempt = envelope.deliveryAttempt
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        attempt = None  # not Pub/Sub's number: read as none, as the push's own count is only advice
    return Push(message.message_id or "", message.attributes or {}, decoded, attempt)
