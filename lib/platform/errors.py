"""The API's error family: the only place that knows the JSON envelope's shape.

Each class carries its HTTP status and stable `code`; raising one anywhere in a
request ends it with `{"error": {"code", "message", "details"}}` (main.py
renders it; lib/platform/server.py does for what the HTTP server refuses itself).
`failure` names what went wrong for a log line.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status = 500
    code = "internal_error"
    message = "An internal error occurred. Retry later; if it persists, contact support with the X-Request-Id."

    def __init__(
        self,
        message: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.details = details if details is not None else {}
        self.headers = dict(headers or {})
        # For the log only, never the response.
        self.reason = reason

    def envelope(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InvalidJson(ApiError):
    status, code = 400, "invalid_json"
    message = "The request body must be a JSON object."


class BadHttpRequest(ApiError):
    """Refused by the HTTP server before the function runs (lib/platform/server.py)."""

    status, code = 400, "bad_request"
    message = "The request is not valid HTTP/1.1."


class InvalidEvent(ApiError):
    """An internal push route's body is not the Pub/Sub push it expects
    (a GCS notification; a webhook event or delivery)."""

    status, code = 400, "invalid_event"
    message = "The body is not a Pub/Sub push envelope of a Cloud Storage notification."

    def __init__(self, reason: str, message: str | None = None):
        super().__init__(message, reason=reason)


class DeliveryDeferred(ApiError):
    """POST /internal/webhooks: this instance already has its share of deliveries to the
    endpoint in flight; Pub/Sub retries the delivery after its backoff."""

    status, code = 429, "delivery_deferred"
    message = "Enough deliveries to this endpoint are in flight here; it will be retried."


class WebhookDeliveryFailed(ApiError):
    """POST /internal/webhooks: the customer's endpoint did not take the event.

    Not our fault, so a warning in the log, not an error; any non-2xx makes
    Pub/Sub retry the delivery with its backoff, and 502 says "upstream"."""

    status, code = 502, "webhook_delivery_failed"
    message = "The webhook endpoint did not acknowledge the event with a 2xx within 10 s; it will be retried."


class InvalidIdempotencyKey(ApiError):
    status, code = 400, "invalid_idempotency_key"
    message = "Idempotency-Key must be 1 to 255 printable ASCII characters."


class InvalidApiKey(ApiError):
    status, code = 401, "invalid_api_key"
    message = "Missing or invalid API key. Send it as 'Authorization: Bearer <key>'."

    def __init__(self, reason: str):
        # The reason is for the log only: every failure looks the same to the client.
        super().__init__(headers={"WWW-Authenticate": "Bearer"}, reason=reason)


class InvalidToken(ApiError):
    """POST /internal/sweep without a valid Google-signed OIDC token for our audience."""

    status, code = 401, "invalid_token"
    message = "Missing or invalid OIDC token. Send a Google-signed ID token as 'Authorization: Bearer <token>'."

    def __init__(self, reason: str):
        super().__init__(headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}, reason=reason)


class Forbidden(ApiError):
    """A valid token, but not from the identity allowed to call this route."""

    status, code = 403, "forbidden"
    message = "This identity may not call this route."

    def __init__(self, reason: str):
        super().__init__(reason=reason)


class NotFound(ApiError):
    status, code = 404, "not_found"
    message = "No such route."


class UploadNotFound(ApiError):
    # Also another workspace's upload: whether an id exists elsewhere is not ours to tell.
    status, code = 404, "upload_not_found"
    message = "No upload with this id in your workspace."


class MethodNotAllowed(ApiError):
    status, code = 405, "method_not_allowed"

    def __init__(self, allowed: tuple[str, ...]):
        super().__init__(
            f"Method not allowed here; use {', '.join(allowed)}.",
            details={"allowed_methods": list(allowed)},
            headers={"Allow": ", ".join(allowed)},
        )


class RequestTimeout(ApiError):
    status, code = 408, "request_timeout"
    message = "The request body stopped arriving before it was complete."

    def __init__(self) -> None:
        super().__init__(headers={"Connection": "close"})


class IdempotencyKeyReused(ApiError):
    status, code = 409, "idempotency_key_reused"
    message = "This Idempotency-Key was already used with a different request body."


class IdempotencyKeyInUse(ApiError):
    status, code = 409, "idempotency_key_in_use"
    message = "A request with this Idempotency-Key is still in progress. Retry after the delay in Retry-After."

    def __init__(self, retry_after: int = 1):
        super().__init__(headers={"Retry-After": str(retry_after)})


class UploadCompleted(ApiError):
    status, code = 409, "upload_completed"
    message = "The upload has completed; a completed upload cannot be cancelled."


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"

    def __init__(self, limit: int):
        # The rest of the body is not read: the connection is closed instead.
        super().__init__(
            f"The request body exceeds {limit} bytes.", details={"max_bytes": limit}, headers={"Connection": "close"}
        )


class UriTooLong(ApiError):
    status, code = 414, "uri_too_long"

    def __init__(self, limit: int):
        super().__init__(f"The request's path or line exceeds {limit} bytes.", details={"max_bytes": limit})


class RequestHeadersTooLarge(ApiError):
    """Refused by the HTTP server before the function runs (lib/platform/server.py)."""

    status, code = 431, "request_headers_too_large"
    message = "The request's headers are too many or too large."


class ValidationFailed(ApiError):
    status, code = 422, "validation_error"
    message = "The request body is not valid."


class UnsupportedContentType(ApiError):
    status, code = 422, "unsupported_content_type"

    def __init__(self, supported: list[str]):
        super().__init__(
            "content_type is not a supported media type.",
            details={"supported_content_types": supported},
        )


class UploadTooLarge(ApiError):
    status, code = 422, "upload_too_large"

    def __init__(self, limit: int):
        super().__init__(
            f"size_bytes exceeds the largest upload allowed, {limit} bytes.", details={"max_size_bytes": limit}
        )


class RateLimited(ApiError):
    """POST /v1/uploads: the workspace has created its creates-per-minute in the last 60 s (lib/limits/counters.py)."""

    status, code = 429, "rate_limited"

    def __init__(self, limit: int, retry_after: int, headers: dict[str, str]):
        super().__init__(
            f"This workspace may create {limit} uploads a minute. Retry after the delay in Retry-After.",
            details={"limit": limit, "window_seconds": 60, "retry_after_seconds": retry_after},
            headers={**headers, "Retry-After": str(retry_after)},
        )


class AuthenticationsLimited(ApiError):
    """Any route taking an API key: this client address sent too many unknown or revoked keys in the
    last minute (lib/limits/counters.py `Limiter.auth_check`); refused before the key is looked up."""

    status, code = 429, "rate_limited"

    def __init__(self, limit: int, retry_after: int):
        super().__init__(
            f"Too many requests from this address carried an unknown or revoked API key "
            f"(at most {limit} a minute). Retry after the delay in Retry-After.",
            details={"limit": limit, "window_seconds": 60, "retry_after_seconds": retry_after},
            headers={"Retry-After": str(retry_after)},
        )


class QuotaExceeded(ApiError):
    """POST /v1/uploads: the workspace has as many uploads pending as it may (lib/limits/counters.py)."""

    status, code = 429, "quota_exceeded"

    def __init__(self, limit: int, pending: int, retry_after: int, headers: dict[str, str]):
        super().__init__(
            f"This workspace has {pending} uploads pending and may have {limit}. Finish, cancel or "
            "let some expire, then retry.",
            details={"limit": limit, "pending": pending},
            headers={**headers, "Retry-After": str(retry_after)},
        )


class ServiceUnavailable(ApiError):
    status, code = 503, "service_unavailable"
    message = "A backing service is unavailable. Retry after the delay in Retry-After."

    def __init__(self, retry_after: int = 2, details: Any = None, reason: str | None = None):
        super().__init__(details=details, headers={"Retry-After": str(retry_after)}, reason=reason)


class ObjectChanged(ServiceUnavailable):
    """The object being checked or placed went away meanwhile: another settler may have settled
    it (lib/uploads/settling.py looks), else a retry sees the bucket as it is then."""

    def __init__(self, reason: str):
        super().__init__(reason=reason)


class SessionNotEnded(ServiceUnavailable):
    """Cancelling an upload session got an answer that is neither "cancelled"
    nor "finished": the upload stays pending until a later try settles it."""

    def __init__(self, status: int):
        super().__init__(retry_after=30, reason=f"cancelling an upload session: unexpected HTTP {status}")


def failure(exc: BaseException) -> str:
    """What went wrong, for a log line: the backend's error behind our 503, else the error itself."""
    cause = exc.__cause__ if isinstance(exc, ServiceUnavailable) else None
    return type(cause or exc).__name__
