"""One structured JSON line per request on stdout, in Cloud Logging's format.

Cloud Run turns each stdout line that is a JSON object into a LogEntry:
`severity`, `message`, `httpRequest` and `logging.googleapis.com/trace` are
read from it; the rest lands in jsonPayload. API keys, Authorization values,
upload URLs and webhook secrets never belong here; as a second line of defence every line is
scrubbed of anything shaped like a key, a session URL's upload_id or a JWT.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import sys
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

_SECRETS = (
    # Whole keys only: the display prefix (fl_live_ + 4 characters) stays readable.
    (re.compile(r"fl_(live|test)_[A-Za-z0-9_-]{16,}"), r"fl_\1_[REDACTED]"),
    (re.compile(r"(upload_id=)[^&\s\"'\\]+"), r"\1[REDACTED]"),
    # A webhook signing secret (lib/webhooks/endpoints.py).
    (re.compile(r"whsec_[A-Za-z0-9+/=]{8,}"), "whsec_[REDACTED]"),
    (re.compile(r"(?i)(bearer\s+)[^\s\"'\\]+"), r"\1[REDACTED]"),
    # A JWT (the OIDC token of a scheduler or push call): header and payload are base64url JSON.
    (re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), "[REDACTED]"),
)
_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/.*)?")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_write_lock = threading.Lock()


# One pass that finds whether any of the patterns might match; most lines hold none.
_ANY_SECRET = re.compile(
    "|".join(
        f"(?i:{pattern.pattern.removeprefix('(?i)')})"
        if pattern.pattern.startswith("(?i)")
        else f"(?:{pattern.pattern})"
        for pattern, _ in _SECRETS
    )
)

# The fields of the log line of the request this thread serves (lib/platform/http.py opens it): any room adds
# to it with `note`, so no dict is handed down the calls; outside a request, a note goes nowhere.
_line: ContextVar[dict[str, Any] | None] = ContextVar("framelane_request_line", default=None)


@contextlib.contextmanager
def collecting(**initial: Any) -> Iterator[dict[str, Any]]:
    """The log line's fields for the code run inside, starting from `initial`."""
    line = dict(initial)
    token = _line.set(line)
    try:
        yield line
    finally:
        _line.reset(token)


def note(**fields: Any) -> None:
    """Add `fields` to the log line of the request being served."""
    line = _line.get()
    if line is not None:
        line.update(fields)


def redact(text: str) -> str:
    if _ANY_SECRET.search(text) is None:
        return text
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def trace_field(project: str | None, header: str | None) -> dict[str, str]:
    """`logging.googleapis.com/trace` from X-Cloud-Trace-Context (`TRACE_ID/SPAN;o=1`)."""
    if not project or not header:
        return {}
    match = _TRACE.fullmatch(header.split(";", 1)[0].strip())
    if not match:
        return {}
    return {"logging.googleapis.com/trace": f"projects/{project}/traces/{match.group(1).lower()}"}


def bounded(text: str, limit: int = 256) -> str:
    """At most `limit` characters of a client's string, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text)} characters)"


def severity_for(status: int) -> str:
    if status >= 500:
        return "ERROR"
    if status >= 400:
        return "WARNING"
    return "INFO"


def request_id(incoming: str | None) -> str:
    """The caller's X-Request-Id if it is a sane one, else a new one."""
    if incoming and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return secrets.token_hex(16)


def request_line(
    method: str,
    path: str,
    status: int,
    seconds: float,
    fields: dict[str, Any],
    project: str | None,
    trace_header: str | None,
) -> dict[str, Any]:
    """A request's log entry: its `httpRequest`, severity by status, trace, and the handler's `fields`
    (a `stack_trace` field becomes the message, which Error Reporting groups by)."""
    fields = dict(fields)
    stack = fields.pop("stack_trace", None)
    path = bounded(path)
    entry: dict[str, Any] = {
        "severity": severity_for(status),
        "message": stack or f"{bounded(method, 16)} {path} {status}",
        "httpRequest": {
            "requestMethod": bounded(method, 16),
            "requestUrl": path,
            "status": status,
            "latency": f"{seconds:.6f}s",
        },
    }
    entry.update(trace_field(project, trace_header))
    entry.update(fields)
    return entry


def emit(entry: dict[str, Any]) -> None:
    """Write one log entry to stdout as a single JSON line, scrubbed of secrets."""
    # ASCII only: a request path may hold U+2028 or U+0085, which some readers take for line breaks.
    line = redact(json.dumps(entry, ensure_ascii=True, default=str, separators=(",", ":")))
    with _write_lock:  # whole lines, even with many request threads
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class _OriginsOnly(logging.Filter):
    """urllib3 names the URL it fetched in a few records: the WARNING "Failed to parse headers (url=...)"
    when a receiver's header block is malformed, its retry warnings, every request at DEBUG (a path). A
    webhook URL's query or path may carry the customer's token and an upload session's URL is a secret, so
    such a record keeps the URL's origin and loses the rest; nothing else about the record changes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_origin(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


def _origin(text: str) -> str:
    if text.startswith(("http://", "https://")):
        parts = urlsplit(text)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}/[REDACTED]"
    return "/[REDACTED]" if text.startswith("/") else text


def keep_urls_out_of_urllib3() -> None:
    """Install the filter on urllib3's two loggers that name URLs (once; a logger's filters see only the
    records logged on it, not its children's). lib/platform/clients.py (Storage's calls go through requests)
    and lib/webhooks/outbound.py call it as they load."""
    for name in ("urllib3.connection", "urllib3.connectionpool"):
        logger = logging.getLogger(name)
        if not any(isinstance(each, _OriginsOnly) for each in logger.filters):
            logger.addFilter(_OriginsOnly())
