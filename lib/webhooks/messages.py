"""The webhooks messages as Pub/Sub pushes them: an event to fan out, a delivery to make, or either dead-lettered."""

from __future__ import annotations

import json
from typing import NamedTuple

from lib.platform.errors import InvalidEvent
from lib.platform.push import Push
from lib.uploads import naming
from lib.webhooks.fanout import EVENT_TYPES, KIND_DELIVERY, KIND_EVENT, event_id

INVALID_PUSH = "The body is not a Pub/Sub push envelope of a webhook event or delivery."


class Message(NamedTuple):
    """A pushed webhooks message: an event to fan out, or one delivery."""

    kind: str
    message_id: str
    attributes: dict[str, str]
    data: bytes
    attempt: int | None  # Pub/Sub's deliveryAttempt (set when the subscription dead-letters)

    @property
    def upload_id(self) -> str | None:
        return self.attributes.get("upload_id")

    def log_fields(self) -> dict[str, str]:
        """What the request's log line says of the message (ids cut to a length a log can hold)."""
        fields = {"kind": self.kind, "message_id": self.message_id[:64]}
        return {**fields, "upload_id": self.upload_id[:64]} if self.upload_id else fields

    @classmethod
    def from_push(cls, push: Push) -> Message:
        """Raises InvalidEvent: not one of our messages (lib/platform/push.py read the envelope)."""
        kind = push.attributes.get("kind")
        if kind not in (KIND_EVENT, KIND_DELIVERY):
            raise InvalidEvent(f"the message's kind is {kind!r}, not event or delivery", INVALID_PUSH)
        if not isinstance(push.attributes.get("upload_id"), str):
            raise InvalidEvent("the message lacks the attribute upload_id", INVALID_PUSH)
        return cls(kind, push.message_id, push.attributes, push.data, push.attempt)

    def delivery(self) -> Delivery:
        if self.kind != KIND_DELIVERY:
            raise InvalidEvent("not a delivery message", INVALID_PUSH)
        return Delivery.from_message(self.attributes, self.data, self.attempt)

    @classmethod
    def dead_lettered(cls, push: Push) -> Message:
        """A message the dead-letter topic pushed: ours as sent, or, without our attributes, read from its data.

        Pub/Sub's page says a dead-lettered message is forwarded with attributes added
        (https://cloud.google.com/pubsub/docs/handling-failures), not in so many words that ours
        are kept, so nothing here rests on them: an event message's data is its upload id, and a
        delivery's is the event body, which names the upload and the event type (hence the event
        id). Only the endpoint is then unknown; the row says so.

        Raises InvalidEvent: neither.
        """
        if "kind" in push.attributes:
            return cls.from_push(push)
        body = _event_body(push.data)
        if body is not None:
            upload_id, event_type = body
            attributes = {"event_id": event_id(upload_id, event_type), "event_type": event_type, "upload_id": upload_id}
            return cls(KIND_DELIVERY, push.message_id, attributes, push.data, push.attempt)
        text = push.data.decode("ascii", "replace")
        if naming.UPLOAD_ID.fullmatch(text):
            return cls(KIND_EVENT, push.message_id, {"upload_id": text}, push.data, push.attempt)
        raise InvalidEvent("a dead-lettered message that is neither an event nor a delivery of ours", INVALID_PUSH)


def _event_body(data: bytes) -> tuple[str, str] | None:
    """(upload id, event type) of an event body as event_body() makes it, or None."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return None
    if not isinstance(body, dict) or body.get("type") not in EVENT_TYPES.values():
        return None
    upload = body.get("data")
    upload_id = upload.get("id") if isinstance(upload, dict) else None
    return (upload_id, body["type"]) if isinstance(upload_id, str) and naming.UPLOAD_ID.fullmatch(upload_id) else None


class Delivery(NamedTuple):
    """One delivery message: which event goes to which endpoint, and its exact body."""

    endpoint_id: str  # "": a dead-lettered delivery whose attributes did not survive (unknown)
    event_id: str
    event_type: str
    upload_id: str
    body: bytes
    attempt: int | None

    @classmethod
    def from_message(cls, attributes: dict[str, str], data: bytes, attempt: int | None) -> Delivery:
        try:
            data.decode()
        except UnicodeDecodeError:
            raise InvalidEvent("a delivery message's body is not UTF-8", INVALID_PUSH) from None
        endpoint_id = attributes.get("endpoint_id", "")
        if not endpoint_id and "kind" in attributes:  # as we send it, a delivery always names its endpoint
            raise InvalidEvent("a delivery message lacks the attribute endpoint_id", INVALID_PUSH)
        try:
            return cls(
                endpoint_id, attributes["event_id"], attributes["event_type"], attributes["upload_id"], data, attempt
            )
        except KeyError as exc:
            raise InvalidEvent(f"a delivery message lacks the attribute {exc.args[0]}", INVALID_PUSH) from None
