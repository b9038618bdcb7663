"""The sharded sweep at volume, and the migration to it.

Each test has a Firestore database of its own on the emulator, so the sweep
sees exactly what the test seeded. Sessions are fake-gcs-server's (a DELETE
answers 499, as GCS does for a cancelled session) and objects are looked up
there for real: none exists, so every seeded upload settles `expired`.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests
from google.cloud import firestore, storage

from dev import emulators
from lib.platform import clients
from lib.uploads import lifecycle, sweep
from tests.conftest import BUCKET, PROJECT, ROOT, STAGING_BUCKET

SEEDED = 3000


@pytest.fixture
def own_db(backends):
    return firestore.Client(project=PROJECT, database=f"capacity-{uuid.uuid4().hex[:12]}")


def seed(db, storage_url: str, count: int, expired_ago: timedelta = timedelta(hours=1)) -> set[str]:
    return emulators.seed_expired_uploads(db, storage_url, BUCKET, count, expired_ago.total_seconds())


class Announced:
    """The state changes the sweep stored, as its webhooks announcer is told of them: once per winner."""

    def __init__(self):
        self.ids: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, record: lifecycle.Record) -> None:
        with self.lock:
            self.ids.append(record.id)


def storage_for() -> lifecycle.Storage:
    """Clients pooled as the function's are (lib/platform/clients.py), one set per call, as each instance has."""
    client = storage.Client(project=PROJECT)
    clients.wide_pools(client._http)
    return lifecycle.Storage(client, BUCKET, STAGING_BUCKET, clients.wide_pools(requests.Session()))


def states(db, ids: set[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for snap in db.collection(lifecycle.COLLECTION).select(["state"]).stream():
        if snap.id in ids:
            counts[snap.get("state")] = counts.get(snap.get("state"), 0) + 1
    return counts


def test_thousands_of_expired_uploads_are_settled_exactly_once_by_overlapping_sweeps(own_db, backends):
    """Two sweeps run at once over the same 3,000 expired uploads, neither with a time budget.

    The bound follows from the algorithm, not from timing: a sweep that is not
    cut short walks every page of each of its shards (a page is due uploads
    after the last one it read, and a settled upload never becomes due again),
    so it starts every upload that was due when it began, and each one it
    starts is settled before it returns, by it or by the other. So one round
    settles all 3,000, each by exactly one of the two (its conditional write),
    and announced once, however the two interleave.
    """
    ids = seed(own_db, backends["storage"].url, SEEDED)
    announced = Announced()

    def one_run():
        # Each run its own clients, as each function instance has; pages of 20 so each shard has several.
        return sweep.sweep(
            own_db,
            storage_for(),
            datetime.now(UTC),
            budget_seconds=math.inf,
            grace_seconds=math.inf,
            page_size=20,
            workers=8,
            announce=announced,
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: one_run(), range(2)))
    assert [(r.failed, r.more) for r in results] == [(0, False), (0, False)]
    assert states(own_db, ids) == {"expired": SEEDED}
    assert sum(r.expired for r in results) == SEEDED  # counted once, whichever sweep won each upload
    assert len(announced.ids) == SEEDED
    assert set(announced.ids) == ids
    # A last sweep finds nothing left to do.
    last = one_run()
    assert (last.expired, last.completed, last.rejected, last.failed, last.more) == (0, 0, 0, 0, False)


def test_overlapping_sweeps_start_at_different_shards_not_at_one_per_minute():
    """Started at one shard, two overlapping sweeps walk the same records in the same order (the one
    ahead wins them all, the other does the same work for nothing). The start is drawn at random:
    200 draws from 64 shards that all agree would happen with probability 64**-199."""
    assert len({sweep.first_shard(lifecycle.SWEEP_SHARDS) for _ in range(200)}) > 1
    # Each of 4 equally likely: one missing from 400 draws happens ~4 times in 10**50.
    assert {sweep.first_shard(4) for _ in range(400)} == {0, 1, 2, 3}


def test_the_sweep_reaches_every_shard_and_leaves_unexpired_uploads_alone(own_db, backends):
    due = seed(own_db, backends["storage"].url, 640)
    later = seed(own_db, backends["storage"].url, 64, expired_ago=timedelta(hours=-1))  # expires in an hour
    assert {lifecycle.shard_of(i) for i in due} == set(range(lifecycle.SWEEP_SHARDS))
    result = sweep.sweep(own_db, storage_for(), datetime.now(UTC), budget_seconds=60, grace_seconds=15)
    assert (result.expired, result.failed, result.more) == (640, 0, False)
    assert states(own_db, due) == {"expired": 640}
    assert states(own_db, later) == {"pending": 64}


def test_records_from_before_the_shards_are_swept_once_backfilled(own_db, backends):
    """The migration: records written by the unsharded version have no
    sweep_shard, so the sharded sweep cannot see them until `python -m
    lib.admin backfill-sweep-shards` gives them one."""
    ids = seed(own_db, backends["storage"].url, 125)
    batch = own_db.batch()
    for upload_id in ids:
        batch.update(lifecycle.ref(own_db, upload_id), {lifecycle.SHARD_FIELD: firestore.DELETE_FIELD})
    batch.commit()
    blind = sweep.sweep(own_db, storage_for(), datetime.now(UTC), 60, 15)
    assert blind.expired == 0
    assert states(own_db, ids) == {"pending": 125}

    env = {**backends["env"], "FIRESTORE_DATABASE": own_db._database}
    out = subprocess.run(
        [sys.executable, "-m", "lib.admin", "backfill-sweep-shards"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("125 of 125 upload records given a sweep shard")
    again = subprocess.run(
        [sys.executable, "-m", "lib.admin", "backfill-sweep-shards"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.stdout.startswith("0 of 125 ")  # idempotent
    for upload_id in ids:
        assert lifecycle.ref(own_db, upload_id).get().get(lifecycle.SHARD_FIELD) == lifecycle.shard_of(upload_id)

    swept = sweep.sweep(own_db, storage_for(), datetime.now(UTC), 60, 15)
    assert swept.expired == 125
    assert states(own_db, ids) == {"expired": 125}


def test_a_scheduler_job_sweeps_only_its_slice_of_shards(own_db, backends):
    ids = seed(own_db, backends["storage"].url, 640)
    mine = {i for i in ids if lifecycle.shard_of(i) < 32}
    result = sweep.sweep(own_db, storage_for(), datetime.now(UTC), 60, 15, shards=range(32))
    assert (result.expired, result.failed, result.more) == (len(mine), 0, False)
    assert states(own_db, mine) == {"expired": len(mine)}
    assert states(own_db, ids - mine) == {"pending": len(ids - mine)}


def test_a_sweep_job_republishes_only_the_owed_events_of_its_own_shards(own_db, backends):
    """Several sweep jobs each republish owed webhook events: each only its slice, so never one event twice."""
    ids = seed(own_db, backends["storage"].url, 256)
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    batch = own_db.batch()
    for upload_id in ids:
        batch.update(lifecycle.ref(own_db, upload_id), {lifecycle.OWED_FIELD: long_ago})
    batch.commit()
    now = datetime.now(UTC)
    halves = [
        lifecycle.owed(own_db, now, limit=1000, shards=range(32)),
        lifecycle.owed(own_db, now, limit=1000, shards=range(32, 64)),
    ]
    found = [{record.id for record in half} for half in halves]
    assert found[0] == {i for i in ids if lifecycle.shard_of(i) < 32}
    assert found[1] == ids - found[0]
    assert not found[0] & found[1]
