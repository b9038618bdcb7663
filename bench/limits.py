"""(k) The limiter's own cost: one create's admit (the Lua script, one round trip) against the local
redis-server, as lib/limits/counters.py makes it, one at a time for its latency; and the rate one Redis core
runs the script at, driven by redis-benchmark (50 connections, a random upload id each call), which
this process's threads could not drive (they are bound by their own GIL first). Run by bench/run.py.
"""

from __future__ import annotations

import csv
import secrets
import statistics
import subprocess
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import redis

from lib.limits import counters, lua, quotas
from lib.platform import logs

LIMITS = quotas.Limits(creates_per_minute=600_000, max_pending_uploads=1_000_000)


def measure(redis_url: str, db, one_at_a_time: int = 3000, calls: int = 200_000) -> dict:
    limiter = counters.Limiter(redis_url)
    expires = datetime.now(UTC) + timedelta(hours=1)
    seconds = []
    with logs.collecting() as log:  # what a request's line would say of these calls
        for i in range(64):  # each workspace's pending set rebuilt once (none pending): the steady state is measured
            limiter.admit(db, f"ws_k{i}", "live", "upl_" + secrets.token_hex(16), expires, LIMITS)
        for i in range(one_at_a_time):
            started = time.perf_counter()
            limiter.admit(db, f"ws_k{i % 64}", "live", "upl_" + secrets.token_hex(16), expires, LIMITS)
            seconds.append(time.perf_counter() - started)
    assert "limiter" not in log, log  # every call reached the store
    ordered = sorted(seconds)
    return {
        "p50_ms": statistics.median(seconds) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99)] * 1000,
        "per_second": server_rate(redis_url, int(expires.timestamp() * 1000), calls),
    }


def server_rate(redis_url: str, expires_ms: int, calls: int) -> float:
    """Scripts a second one redis-server runs, from redis-benchmark's 50 connections."""
    store = redis.Redis.from_url(redis_url)
    sha = store.script_load(lua.ADMIT)
    port = str(urlsplit(redis_url).port)
    keys = counters._keys("ws_rate", "live")[:3]
    store.set(keys[2], int(store.get(counters.EPOCH_KEY) or 0))  # rebuilt: every call takes the admitting path
    done = subprocess.run(
        [
            "redis-benchmark",
            "-p",
            port,
            "-n",
            str(calls),
            "-c",
            "50",
            "-r",
            "1000000000",
            "--csv",
            "EVALSHA",
            sha,
            "3",
            *keys,
            "upl___rand_int__",
            str(LIMITS.creates_per_minute),
            str(LIMITS.max_pending_uploads),
            str(expires_ms),
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    rows = list(csv.reader(done.stdout.splitlines()))
    return float(rows[-1][1])
