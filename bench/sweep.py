"""(i) How fast one sweep run settles expired uploads, by worker count.

Seeds `count` pending uploads past their expires_at into a Firestore database
of their own on the emulator (sessions and objects on fake-gcs-server, where
none of the objects exists, so each settles `expired`: an object lookup, a
session DELETE, a second lookup and a conditional update), then times one
`sweep.sweep` (lib/uploads/sweep.py) with an unbounded budget, in this process as the function
runs it. Run by bench/run.py.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import requests

from dev import emulators
from lib.platform import clients
from lib.uploads import lifecycle, sweep


def measure(
    firestore_emulator: emulators.Service,
    storage_url: str,
    project: str,
    bucket: str,
    workers: tuple[int, ...] = (8, 16, 32),
    count: int = 2000,
) -> list[dict]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    rows = []
    for n in workers:
        db = emulators.firestore_client_for(firestore_emulator, project, f"bench-sweep-{uuid.uuid4().hex[:8]}")
        emulators.seed_expired_uploads(db, storage_url, bucket, count)
        client = storage.Client(
            project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": storage_url}
        )
        clients.wide_pools(client._http)  # pooled as the function's own clients are (lib/platform/clients.py)
        gcs = lifecycle.Storage(
            client, bucket, emulators.staging_bucket(bucket), clients.wide_pools(requests.Session())
        )
        started = time.perf_counter()
        result = sweep.sweep(db, gcs, datetime.now(UTC), budget_seconds=3600, grace_seconds=60, workers=n)
        elapsed = time.perf_counter() - started
        assert result.expired == count, result
        assert not result.failed, result
        rows.append({"workers": n, "count": count, "seconds": elapsed, "per_second": count / elapsed})
    return rows
