"""The webhook attempt log: a row per delivery attempt, written in batches off the deliveries' path, read by ops.

`webhook_deliveries/{auto}` documents each hold up to ROWS_PER_DOCUMENT
attempts of one workspace and are deleted by a TTL policy on `expire_at`
after DELIVERY_RETENTION. A row is an `Attempt`: it never holds a secret or the receiver's body
(lib/webhooks/sending.py `attempt_of` fills one from a delivery).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from lib.platform import clock, logs
from lib.platform.clients import FIRESTORE_ATTEMPT_TIMEOUT, FIRESTORE_RETRY, shared, upstream

DELIVERIES = "webhook_deliveries"
# Delivery attempts are kept this long (Firestore TTL policy on `expire_at`).
DELIVERY_RETENTION = timedelta(days=7)
# Attempts per webhook_deliveries document (a few hundred bytes each, far below the 1 MiB limit).
ROWS_PER_DOCUMENT = 500


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt, as webhook-deliveries shows it. `status` and `latency_ms` are the
    receiver's answer (None: none came); `error` says why not, or "dead_lettered"."""

    workspace_id: str | None
    mode: str | None
    endpoint_id: str | None
    url: str | None
    event_id: str
    event_type: str
    upload_id: str
    attempt: int | None
    at: datetime
    status: int | None = None
    error: str | None = None
    latency_ms: float | None = None
    dead_lettered: bool = False

    def row(self) -> dict[str, Any]:
        """The row as stored and listed: every field (as they are: dataclasses.asdict deep-copies each)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def write_rows(db: firestore.Client, rows: list[dict[str, Any]]) -> None:
    """Store attempts: one document per workspace and up to ROWS_PER_DOCUMENT of its attempts.

    A document holds `workspace_id` and `at` (its newest attempt's time: what
    webhook-deliveries queries), `expire_at` (the TTL field: `at` + 7 days)
    and `attempts`, the rows as one JSON string. One document for many
    attempts, rather than one each: a write per attempt costs a delivery more
    CPU than its POST (make bench, (f)) and Firestore bills per document
    written.
    """
    by_workspace: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        by_workspace.setdefault(row["workspace_id"], []).append(row)
    documents = []
    for workspace_id, own in by_workspace.items():
        for start in range(0, len(own), ROWS_PER_DOCUMENT):
            chunk = own[start : start + ROWS_PER_DOCUMENT]
            newest = max(row["at"] for row in chunk)
            attempts = [
                {**{k: v for k, v in row.items() if k != "workspace_id"}, "at": row["at"].isoformat()} for row in chunk
            ]
            documents.append(
                {
                    "workspace_id": workspace_id,
                    "at": newest,
                    "expire_at": newest + DELIVERY_RETENTION,
                    "attempts": json.dumps(attempts, separators=(",", ":")),
                }
            )
    for start in range(0, len(documents), 500):  # Firestore's limit of writes per commit
        batch = db.batch()
        for document in documents[start : start + 500]:
            batch.create(db.collection(DELIVERIES).document(), document)
        with upstream():
            batch.commit(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)


class AttemptLog:
    """Attempt rows written in batches by one background thread, off the deliveries' path.

    A row is written within about MAX_DELAY seconds (at once when MAX_BATCH
    are waiting). If Firestore is down the rows wait for the next try (at most
    MAX_PENDING of them; beyond that the oldest are dropped, and the log says
    how many). The instance's exit flushes what is left. What is lost: the
    rows of an instance killed outright; the deliveries themselves are not
    affected.
    """

    MAX_BATCH = 400
    MAX_DELAY = 0.2
    MAX_PENDING = 20_000

    def __init__(self, db: firestore.Client):
        self._db = db
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._wake = threading.Event()
        threading.Thread(target=self._run, name="webhook-attempts", daemon=True).start()
        atexit.register(self.flush)

    def add(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._rows.append(row)
            dropped = len(self._rows) - self.MAX_PENDING
            if dropped > 0:
                del self._rows[:dropped]
            full = len(self._rows) >= self.MAX_BATCH
        if dropped > 0:
            logs.emit({"severity": "ERROR", "message": "webhook attempt rows dropped", "dropped": dropped})
        if full:
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.MAX_DELAY)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        with self._flushing:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return
            try:
                write_rows(self._db, rows)
            except Exception as exc:  # noqa: BLE001 - kept for the next try, said in the log
                with self._lock:
                    self._rows[:0] = rows
                logs.emit(
                    {
                        "severity": "ERROR",
                        "message": "webhook attempt rows not recorded yet; retrying",
                        "rows": len(rows),
                        "reason": type(exc.__cause__ or exc).__name__,
                    }
                )


def attempt_log(db: firestore.Client) -> AttemptLog:
    """The instance's attempt writer."""
    return shared(("webhook_attempt_log", id(db)), lambda: AttemptLog(db))


def recent_deliveries(db: firestore.Client, workspace_id: str, limit: int) -> list[dict[str, Any]]:
    """The workspace's latest `limit` attempts, newest first.

    Documents come newest first (the (workspace_id, at desc) index); a
    document's `at` is its newest attempt, so once `limit` attempts are in
    hand and the next document is older than the oldest of them, no later
    document can hold a newer one.
    """
    query = (
        db.collection(DELIVERIES)
        .where(filter=FieldFilter("workspace_id", "==", workspace_id))
        .order_by("at", direction=firestore.Query.DESCENDING)
    )
    found: list[dict[str, Any]] = []
    with upstream():
        for snap in query.stream(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT * 2):
            document = snap.to_dict() or {}
            if len(found) >= limit:
                found.sort(key=lambda row: row["at"], reverse=True)
                del found[limit:]
                if document["at"] < found[-1]["at"]:
                    break
            for row in json.loads(document["attempts"]):
                found.append({**row, "at": datetime.fromisoformat(row["at"])})
    found.sort(key=lambda row: row["at"], reverse=True)
    fields = (
        "event_id",
        "event_type",
        "upload_id",
        "endpoint_id",
        "url",
        "mode",
        "attempt",
        "status",
        "error",
        "latency_ms",
        "dead_lettered",
    )
    return [{"at": clock.rfc3339(row["at"]), **{name: row.get(name) for name in fields}} for row in found[:limit]]
