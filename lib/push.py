"""Pub/Sub push requests, for every push route: the subscription's OIDC token checked, the envelope read.

A push is an HTTP POST whose JSON body is `{"message": {"attributes",
"data" (base64), "messageId", "publishTime"}, "subscription",
"deliveryAttempt"}`, with the push subscription's Google-signed OIDC token in
`Authorization` (https://cloud.google.com/pubsub/docs/push). The token is
checked first (lib/oidc.py), so only then is the body read, as plain JSON:
it is Pub/Sub's, not a client's.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from lib import oidc
from lib.errors import InvalidEvent


@dataclass(frozen=True)
class Push:
    """One pushed message."""

    message_id: str
    attributes: dict[str, str]
    data: bytes  # the message's data, decoded (empty when it has none)
    attempt: int | None  # Pub/Sub's deliveryAttempt (set when the subscription dead-letters)


def receive(authorization: str | None, raw: bytes, audience: str | None, service_account: str | None,
            certs: oidc.CertCache, route: str, invalid: str | None = None) -> Push:
    """The pushed message, once the token is checked: Google's, for `audience`,
    from `service_account` (the route's push subscription; `route` names its
    settings, "events" -> EVENTS_*). `invalid` is the 400's message for a body
    that is not a push (the route's own words).

    Raises:
        InvalidToken, Forbidden: the token is not the caller's (lib/oidc.py).
        InvalidEvent: the body is not a Pub/Sub push envelope.
        ServiceUnavailable: Google's certificates cannot be had.
    """
    oidc.verify(authorization, audience, service_account, certs, route=route)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidEvent("body: not JSON", invalid) from None
    return read(body, invalid)


def read(body: object, invalid: str | None = None) -> Push:
    """The message of a push envelope.

    Raises:
        InvalidEvent: not a push envelope (no message object, attributes that
            are not strings, data that is not base64, a messageId that is not a string).
    """
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(message, dict):
        raise InvalidEvent("not a Pub/Sub push envelope: no message object", invalid)
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
        raise InvalidEvent("the message's attributes are not strings", invalid)
    message_id = message.get("messageId") or message.get("message_id") or ""
    if not isinstance(message_id, str):
        raise InvalidEvent("the message's messageId is not a string", invalid)
    data = message.get("data") or ""
    try:
        if not isinstance(data, str):
            raise ValueError("not a string")
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEvent("the message's data is not base64", invalid) from None
    attempt = body.get("deliveryAttempt")
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        attempt = None
    return Push(message_id, attributes, decoded, attempt)
