"""The sweep: settle every upload still pending past its `expires_at`, and publish again the webhook events still owed.

Cloud Scheduler calls `POST /internal/sweep` (OIDC-checked by main.py), one
job per slice of the record shards (`?shards=A-B`, terraform/scheduler.tf).
A call settles what it can within its budget (`sweep`) and then, with
webhooks on, republishes the events its slice still owes (`run`).
"""

from __future__ import annotations

import contextvars
import functools
import re
import secrets
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from google.cloud import firestore

from lib.platform import clock
from lib.platform.errors import ServiceUnavailable, SessionNotEnded, ValidationFailed, failure
from lib.uploads import lifecycle, settling

# No record is started after SWEEP_BUDGET_SECONDS and no upstream step after
# SWEEP_BUDGET_SECONDS + SWEEP_GRACE_SECONDS; a step takes at most ~8 s
# (lib/platform/clients.py), so a call ends by ~45 s, inside the function's timeout (60 s).
SWEEP_BUDGET_SECONDS = 25.0
SWEEP_GRACE_SECONDS = 12.0
# Records settled at once. Each is ~4 sequential upstream calls and almost no
# CPU, so the rate grows with workers until the instance's CPU binds (docs/operations.md,
# "Capacity"; bench (i)).
SWEEP_WORKERS = 32
# An event owed for longer than this is published again (lib/webhooks/fanout.py, step 1):
# long enough that its own publish and fan-out are not still on their way.
OWED_GRACE = timedelta(minutes=10)
# ?shards=A-B: the slice of lib/uploads/lifecycle.py's shards one scheduler job sweeps.
_SHARD_RANGE = re.compile(r"(?P<first>[0-9]{1,3})-(?P<last>[0-9]{1,3})")


def shards(value: str | None) -> range:
    """The shards a sweep call covers: all, or `A-B` (inclusive) from its scheduler job.

    Raises:
        ValidationFailed: not `A-B` within the shards.
    """
    count = lifecycle.SWEEP_SHARDS
    if value is None:
        return range(count)
    match = _SHARD_RANGE.fullmatch(value)
    if match is None or not int(match["first"]) <= int(match["last"]) < count:
        raise ValidationFailed(
            details={
                "fields": [
                    {"field": "shards", "type": "invalid", "message": f"shards must be A-B with 0 <= A <= B < {count}"}
                ]
            }
        )
    return range(int(match["first"]), int(match["last"]) + 1)


@dataclass
class SweepResult:
    expired: int = 0
    completed: int = 0
    rejected: int = 0
    failed: int = 0
    more: bool = False  # stopped (time budget, or a backend down) with records maybe left

    def as_dict(self) -> dict[str, Any]:
        return {
            "expired": self.expired,
            "completed": self.completed,
            "rejected": self.rejected,
            "failed": self.failed,
            "more": self.more,
        }


class Announcer(Protocol):
    """lib/webhooks/fanout.py's Announcer: told of each state change (lifecycle.Announce); publishes owed events."""

    def __call__(self, record: lifecycle.Record) -> None: ...

    def publish(self, records: list[lifecycle.Record]) -> None: ...


@dataclass
class Report:
    """One sweep call: its counts, and what the log line says of it."""

    result: SweepResult
    log: dict[str, Any] = field(default_factory=dict)


def run(
    db: firestore.Client, gcs: lifecycle.Storage, now: datetime, slice_: range, announcer: Announcer | None = None
) -> Report:
    """One scheduled call: settle `slice_`'s expired uploads within the budget,
    then (time left, webhooks on) republish the events its slice still owes.

    A failed republish is logged and left for the next run: the sweep's own
    work is done.

    Raises:
        ServiceUnavailable: the sweep's query failed.
    """
    failures: list[str] = []

    def on_error(upload_id: str, exc: BaseException) -> None:
        reason = getattr(exc, "reason", None)
        failures.append(f"{upload_id}: {type(exc.__cause__ or exc).__name__}" + (f" ({reason})" if reason else ""))

    started = time.monotonic()
    result = sweep(
        db,
        gcs,
        now,
        SWEEP_BUDGET_SECONDS,
        SWEEP_GRACE_SECONDS,
        workers=SWEEP_WORKERS,
        on_error=on_error,
        shards=slice_,
        announce=announcer,
    )
    log: dict[str, Any] = {"sweep": result.as_dict()}
    if failures:
        log["sweep_failures"] = failures[:20]
    if announcer is not None and time.monotonic() - started < SWEEP_BUDGET_SECONDS:
        try:
            owed = lifecycle.owed(db, clock.now() - OWED_GRACE, shards=slice_)
            if owed:
                announcer.publish(owed)
            log["webhooks_republished"] = len(owed)
        except Exception as exc:  # noqa: BLE001 - the sweep's own work is done; the next run tries again
            log["webhooks_republish_failed"] = failure(exc)
    return Report(result, log)


def first_shard(count: int) -> int:
    """Where a sweep starts among its `count` shards: at random, so that across
    runs cut short by their budget no shard is always last, and two runs that
    overlap (a scheduler retry, a run by hand) walk different shards rather
    than the same records in the same order. Started from one shard, the run
    slightly ahead won every record's conditional write and the other paid
    for every lookup and DELETE and settled nothing."""
    return secrets.randbelow(count)


def sweep(
    db: firestore.Client,
    gcs: lifecycle.Storage,
    now: datetime,
    budget_seconds: float,
    grace_seconds: float,
    page_size: int = 200,
    workers: int = 8,
    on_error: Callable[[str, BaseException], None] | None = None,
    shards: range = range(lifecycle.SWEEP_SHARDS),
    announce: lifecycle.Announce | None = None,
) -> SweepResult:
    """Settle every upload still pending after its `expires_at`, oldest first in each shard.

    Walks `shards` (all lifecycle.SWEEP_SHARDS by default; a slice when several scheduler jobs share the work), a
    page of each in turn, each with its own cursor, so a record that fails (and stays pending) is left for the
    next run rather than retried in a loop. At most `workers` records are in flight. Bounds, so the call ends
    well inside the function's timeout whatever Storage does:

    - no page is read and no record started after `budget_seconds`;
    - no upstream step of a record started after `budget_seconds + grace_seconds` (lib/platform/clients.py
      bounds each step: ~8 s Storage, ~7 s Firestore);
    - after a record fails because a backend is unavailable, no more are started: the rest would only fail
      the same way.

    Records not reached are left pending and `more` is set.

    Raises:
        ServiceUnavailable: the query itself failed.
    """
    started = time.monotonic()
    run = _Run(started + budget_seconds, on_error)
    finish_by = started + budget_seconds + grace_seconds
    cursors = _cursors(shards)
    expire = functools.partial(settling.settle, db, gcs, end=lifecycle.EXPIRED, deadline=finish_by, announce=announce)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while cursors and run.may_start():
            for shard in list(cursors):
                if not run.may_start():
                    break
                records, cursor = lifecycle.due(db, shard, now, page_size, cursors[shard])
                run.start(pool, records, workers, expire)
                if len(records) < page_size:
                    del cursors[shard]
                else:
                    cursors[shard] = cursor
        run.collect(wait(run.in_flight).done)
    return run.result


def _cursors(shards: range) -> dict[int, Any]:
    """Each shard's cursor (none yet), in the order a round visits them: one page per shard per round, so a
    backlog in one shard cannot starve the others; the first shard drawn at random (`first_shard`)."""
    first = first_shard(len(shards))
    return {shards[(first + i) % len(shards)]: None for i in range(len(shards))}


class _Run:
    """One sweep's state: its counts, its records in flight, whether a backend went down."""

    def __init__(self, start_by: float, on_error: Callable[[str, BaseException], None] | None):
        self.result = SweepResult()
        self.in_flight: dict[Future[lifecycle.Record], lifecycle.Record] = {}
        self._start_by, self._on_error = start_by, on_error
        self._backend_down = False

    def start(
        self,
        pool: ThreadPoolExecutor,
        records: list[lifecycle.Record],
        workers: int,
        settle: Callable[[lifecycle.Record], lifecycle.Record],
    ) -> None:
        """`settle` each of `records`, at most `workers` in flight, while more may start."""
        for record in records:
            while len(self.in_flight) >= workers:
                self.collect(wait(self.in_flight, return_when=FIRST_COMPLETED).done)
            if not self.may_start():
                return
            # In a copy of this request's context: what settling notes (lib/platform/logs.py) is its log line's.
            self.in_flight[pool.submit(contextvars.copy_context().run, settle, record)] = record

    def may_start(self) -> bool:
        """Whether another page or record may start (within the budget, and no backend down)."""
        if self._backend_down or time.monotonic() >= self._start_by:
            self.result.more = True
            return False
        return True

    def collect(self, done: set[Future[lifecycle.Record]]) -> None:
        """Count the records whose settling finished."""
        for future in done:
            record = self.in_flight.pop(future)
            try:
                settled = future.result()
            except settling.OutOfTime:
                self.result.more = True
                continue
            except Exception as exc:  # noqa: BLE001 - one record's failure must not stop the rest
                self.result.failed += 1
                self._backend_down = self._backend_down or (
                    isinstance(exc, ServiceUnavailable) and not isinstance(exc, SessionNotEnded)
                )
                if self._on_error is not None:
                    self._on_error(record.id, exc)
                continue
            if not settled.ours:
                continue  # another request (a GET, an event, an overlapping sweep) settled it: theirs to count
            if settled.state == lifecycle.COMPLETED:
                self.result.completed += 1
            elif settled.state == lifecycle.EXPIRED:
                self.result.expired += 1
            elif settled.state == lifecycle.REJECTED:
                self.result.rejected += 1
