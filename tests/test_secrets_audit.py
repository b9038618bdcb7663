"""After everything else has run: nothing any served function wrote, and no
Firestore document, holds an API key, an Authorization value or an upload URL
(settled upload records included: they forget their session URL); webhook
signing secrets are in their endpoint's record and nowhere else.

The served functions of the whole session (the shared one, the fault-injection
ones, the hostile-input one, the one built from the deployment archive) all
write to log files in the session's log directory; this reads every line.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers import SESSION_KEYS, SESSION_WEBHOOK_SECRETS

KEY_SHAPE = re.compile(r"fl_(live|test)_[A-Za-z0-9_-]{16,}")
pytestmark = pytest.mark.audit


def function_logs(log_dir) -> dict[str, str]:
    return {path.name: path.read_text(errors="replace") for path in sorted(log_dir.glob("function*.log"))}


def test_webhook_secrets_are_in_their_endpoint_records_and_nowhere_else(log_dir, db):
    from lib.webhooks import attempts, endpoints

    assert len(SESSION_WEBHOOK_SECRETS) >= 10
    logs = {path.name: path.read_text(errors="replace") for path in sorted(log_dir.glob("*.log"))}
    for name, text in logs.items():
        assert "whsec_" not in text, f"{name} holds a webhook secret"
        for secret in SESSION_WEBHOOK_SECRETS:
            assert secret.removeprefix("whsec_") not in text, f"{name} holds a webhook secret"
    rows = 0
    for collection in db.collections():
        if collection.id == endpoints.ENDPOINTS:
            continue
        for snap in collection.stream():
            if collection.id == attempts.DELIVERIES:
                rows += len(json.loads(snap.get("attempts")))
            text = json.dumps(snap.to_dict(), default=str)
            assert "whsec_" not in text, f"{collection.id}/{snap.id} holds a webhook secret"
    assert rows >= 10  # the delivery attempts were there to read


def test_no_push_relay_log_holds_a_token(log_dir):
    """The local relay (dev/relay.py) signs a token for every delivery: it logs none."""
    logs = {path.name: path.read_text(errors="replace") for path in sorted(log_dir.glob("push-relay*.log"))}
    assert logs
    assert any('"delivery"' in text for text in logs.values())
    for name, text in logs.items():
        assert not re.search(r"eyJ[A-Za-z0-9_-]{8,}\.", text), f"{name} holds a token"
        assert "Bearer" not in text, f"{name} holds a token"


def test_no_function_log_holds_a_key_an_authorization_value_or_an_upload_url(log_dir):
    logs = function_logs(log_dir)
    lines = [line for text in logs.values() for line in text.splitlines() if line.startswith("{")]
    # The audit must have something to read: the suite serves thousands of requests.
    assert len(logs) >= 5, (len(logs), len(lines))
    assert len(lines) >= 1000, (len(logs), len(lines))
    assert len(SESSION_KEYS) >= 50
    for name, text in logs.items():
        for key in SESSION_KEYS:
            assert key not in text, f"{name} holds an API key"
            assert key[12:] not in text, f"{name} holds an API key"
        assert not KEY_SHAPE.search(text), f"{name} holds something shaped like an API key"
        assert "upload_id=" not in text, f"{name} holds an upload URL"
        assert not re.search(r"(?i)bearer\s+\S", text), f"{name} holds an Authorization value"
        assert not re.search(r"eyJ[A-Za-z0-9_-]{8,}\.", text), f"{name} holds a JWT (a sweep token)"
        # The log scrubber is a safety net: the code must never have needed it.
        assert "[REDACTED]" not in text, f"{name} tried to log a secret"
    for name, text in logs.items():
        for number, line in enumerate(text.splitlines(), 1):
            if line.startswith("{"):
                try:
                    entry = json.loads(line)
                except ValueError as exc:
                    pytest.fail(f"{name}:{number} is not one JSON object ({exc}): {line[:300]!r}")
                assert "severity" in entry
                assert "message" in entry


def test_no_firestore_document_holds_a_plaintext_key(db):
    documents = 0
    for collection in db.collections():
        for snap in collection.stream():
            documents += 1
            text = snap.id + json.dumps(snap.to_dict(), default=str)
            assert not KEY_SHAPE.search(text), f"{collection.id}/{snap.id} holds an API key"
            for key in SESSION_KEYS:
                assert key[12:] not in text
    assert documents >= 100


def test_settled_uploads_have_forgotten_their_session_urls(db):
    from lib.uploads import lifecycle

    states = {}
    for snap in db.collection(lifecycle.COLLECTION).stream():
        doc = snap.to_dict()
        states[doc["state"]] = states.get(doc["state"], 0) + 1
        if doc["state"] != lifecycle.PENDING:
            assert "session_url" not in doc, f"{snap.id} is {doc['state']} but still holds its session URL"
    # The session saw every state, or this audit read nothing.
    assert set(states) == {
        lifecycle.PENDING,
        lifecycle.COMPLETED,
        lifecycle.REJECTED,
        lifecycle.CANCELLED,
        lifecycle.EXPIRED,
    }, states
