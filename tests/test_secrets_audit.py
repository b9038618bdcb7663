"""After everything else has run: nothing any served function wrote, and no
Firestore document, holds an API key, an Authorization value or an upload URL.

The served functions of the whole session (the shared one, the fault-injection
ones, the hostile-input one, the one built from the deployment archive) all
write to log files in the session's log directory; this reads every line.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers import SESSION_KEYS

KEY_SHAPE = re.compile(r"fl_(live|test)_[A-Za-z0-9_-]{16,}")
pytestmark = pytest.mark.audit


def function_logs(log_dir) -> dict[str, str]:
    return {path.name: path.read_text(errors="replace") for path in sorted(log_dir.glob("function*.log"))}


def test_no_function_log_holds_a_key_an_authorization_value_or_an_upload_url(log_dir):
    logs = function_logs(log_dir)
    lines = [line for text in logs.values() for line in text.splitlines() if line.startswith("{")]
    # The audit must have something to read: the suite serves thousands of requests.
    assert len(logs) >= 5 and len(lines) >= 1000, (len(logs), len(lines))
    assert len(SESSION_KEYS) >= 50
    for name, text in logs.items():
        for key in SESSION_KEYS:
            assert key not in text and key[12:] not in text, f"{name} holds an API key"
        assert not KEY_SHAPE.search(text), f"{name} holds something shaped like an API key"
        assert "upload_id=" not in text, f"{name} holds an upload URL"
        assert not re.search(r"(?i)bearer\s+\S", text), f"{name} holds an Authorization value"
        # The log scrubber is a safety net: the code must never have needed it.
        assert "[REDACTED]" not in text, f"{name} tried to log a secret"
    for line in lines:
        entry = json.loads(line)
        assert "severity" in entry and "message" in entry


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
