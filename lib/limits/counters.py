"""Per-workspace limits: creates per minute and pending uploads, counted in Redis so every instance shares them.

Each workspace's test and live modes are counted apart, in sorted sets whose
keys share one hash tag (`{workspace:mode}`), so one Lua script
(lib/limits/lua.py), one round trip, decides a create atomically:

- `rate`: one member per admitted create, scored by when (ms). A create is
  refused while the last 60 s hold `creates_per_minute` of them: a sliding
  log, so a workspace may spend its whole minute at once and no 60 s window
  ever holds more (the `limits` library calls it a moving window,
  https://limits.readthedocs.io/en/stable/strategies.html).
- `pending`: one member per pending upload (its id), scored by its
  `expires_at`. A slot is taken at create and given back by removing the
  member: once, whoever settles the upload (lib/uploads/lifecycle.py's `transition`
  calls `release` only for the write that stored the change), and a second
  removal would change nothing. A release that never arrives is dropped by
  the next rebuild (below), at the latest at the upload's expires_at.

The figures are the workspace's own (`workspace_limits/{id}` in Firestore,
set by `python -m lib.admin set-limits`) or the settings' defaults, read
through a cache of `LIMITS_CACHE_SECONDS` so a change holds within 5 s (lib/limits/quotas.py).

Firestore's records are the truth; the store's pending set is rebuilt from
them (`_SYNC`: the workspace's pending records, plus what was admitted in the
last IN_FLIGHT_MS and may not have written its record yet) whenever the store
cannot vouch for it: on the workspace's first create in each of the store's
epochs (EPOCH_KEY, advanced by the first instance to reach the store after
failing to), and when the store has no mark of a rebuild (a new or flushed
store). So what instances admitted during an outage, and the releases they
lost, are counted at once, whichever instance serves the workspace next.

The store failing never fails a request and never lifts the limits: each call
is bounded by `STORE_TIMEOUT` seconds; after a failure, for `DOWN_SECONDS` no
call waits on the store and the instance limits each workspace on its own
(`_Local`): creates per minute by its own sliding log, the whole figure; pending
uploads by Firestore's count of pending records (recounted at most every
LOCAL_RECOUNT_SECONDS) plus what it admitted since. The request's log line says
`limiter: unavailable` (and `limited_locally`); monitoring alerts on those lines.
What a workspace can get during an outage is in docs/operations.md.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import redis
from google.cloud import firestore

from lib.limits.lua import ADMIT, RELEASE, SYNC, USAGE, WINDOW_SECONDS
from lib.limits.quotas import Limits
from lib.platform import logs
from lib.platform.clients import TtlLru, shared
from lib.platform.errors import AuthenticationsLimited, QuotaExceeded, RateLimited
from lib.uploads import lifecycle

# Each call to the store, connect and answer; Memorystore answers in a ms or two in-region, slower is down.
STORE_TIMEOUT = 0.25
# After a failure, the instance limits creates on its own for this long without waiting on the store.
DOWN_SECONDS = 5.0
LOCAL_RECOUNT_SECONDS = 2.0  # while the store is down, how often an instance recounts pending records
# Advanced by the first instance to reach the store after failing to: a workspace's pending set is rebuilt
# from Firestore on its first create in each epoch (and when the store has no mark of it: new or flushed).
EPOCH_KEY = "fl:epoch"
# An instance reads the store's epoch at most this often.
EPOCH_CACHE_SECONDS = 1.0
# A create admitted this recently may still be writing its record (its request's deadline): a rebuild keeps it.
IN_FLIGHT_MS = 30_000
# Locks that let one create per workspace at a time rebuild its count (Limiter._rebuild_once), by hash.
REBUILD_LOCKS = 64
# Unknown or revoked API keys one client address may send in a minute before the rest of that minute's
# keys from it are refused unread (a 429): a flood of made-up keys costs a Firestore read each otherwise.
AUTH_FAILURES_PER_MINUTE = 30
T = TypeVar("T")
# The policy's name in the RateLimit fields (draft-ietf-httpapi-ratelimit-headers-11).
POLICY = "creates"


@dataclass(frozen=True)
class Usage:
    """Where a workspace's mode stands: creates in the last 60 s, pending uploads,
    and the seconds until the window frees a create (None: the store was not reached)."""

    creates: int | None
    pending: int | None
    frees_in: int | None


def _seconds(ms: int) -> int:
    return max(1, math.ceil(ms / 1000))


def headers(limits: Limits, usage: Usage | None) -> dict[str, str]:
    """The RateLimit-Policy and RateLimit fields (draft-ietf-httpapi-ratelimit-headers-11,
    https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/11/): the policy
    always; the service limit when the store told it (`t`: until the window frees a create)."""
    out = {"RateLimit-Policy": f'"{POLICY}";q={limits.creates_per_minute};w={WINDOW_SECONDS}'}
    if usage is not None and usage.creates is not None:
        remaining = max(0, limits.creates_per_minute - usage.creates)
        out["RateLimit"] = f'"{POLICY}";r={remaining};t={usage.frees_in or WINDOW_SECONDS}'
    return out


class Limiter:
    """The instance's view of the store: admit, done, release, give back, usage; limiting locally while it fails."""

    def __init__(self, url: str | None, password: str | None = None, ca_pem: str | None = None):
        self.enabled = url is not None
        # A float written whole: threads that race on it only both wait DOWN_SECONDS.
        self._down_until = 0.0
        # Set by a failed call, cleared by the next that succeeds, which advances the store's epoch: every
        # workspace's pending set is then rebuilt on its next create, by whichever instance serves it.
        self._was_down = False
        self._epoch: tuple[int, float] | None = None  # the store's epoch, and when it was read
        self._local = _Local()
        self._rebuilding = [threading.Lock() for _ in range(REBUILD_LOCKS)]
        self._client: Any = None
        if url is not None:
            tls: dict[str, Any] = {}
            if url.startswith("rediss://"):
                # Each Memorystore instance signs with its own CA, so a certificate that chains to
                # the instance's CA is that instance; its certificate names no host we connect by
                # (https://cloud.google.com/memorystore/docs/redis/in-transit-encryption).
                tls = {"ssl_ca_data": ca_pem, "ssl_check_hostname": False}
            self._client = redis.Redis.from_url(
                url,
                password=password,
                socket_timeout=STORE_TIMEOUT,
                socket_connect_timeout=STORE_TIMEOUT,
                retry=None,
                retry_on_timeout=False,
                health_check_interval=0,
                **tls,
            )
            self._admit = self._client.register_script(ADMIT)
            self._usage = self._client.register_script(USAGE)
            self._sync = self._client.register_script(SYNC)
            self._release = self._client.register_script(RELEASE)

    def _call(self, run: Callable[[], T]) -> T | None:
        """`run()` against the store, or None (logged) if it is down or fails now."""
        if not self.enabled or time.monotonic() < self._down_until:
            if self.enabled:
                logs.note(limiter="unavailable")
            return None
        try:
            result = run()
        except redis.RedisError as exc:
            self._down_until = time.monotonic() + DOWN_SECONDS
            self._was_down = True
            logs.note(limiter="unavailable", limiter_error=type(exc).__name__)
            return None
        if self._was_down:  # it answers again: what it holds is rebuilt before it is trusted
            try:
                self._epoch = (int(self._client.incr(EPOCH_KEY)), time.monotonic())
            except redis.RedisError:
                return result  # failed again at once: the next call tries the epoch once more
            self._was_down = False
            self._local = _Local()
            logs.note(limiter_recovered=True)
        return result

    def _store_epoch(self) -> int | None:
        """The store's epoch (EPOCH_KEY), read at most every EPOCH_CACHE_SECONDS; None if it is down."""
        cached = self._epoch
        if cached is not None and time.monotonic() - cached[1] < EPOCH_CACHE_SECONDS:
            return cached[0]
        value = self._call(lambda: self._client.get(EPOCH_KEY) or b"0")
        if value is None:
            return None
        if self._epoch is not cached and self._epoch is not None:
            return self._epoch[0]  # that call found the store back and advanced the epoch itself
        self._epoch = (int(value), time.monotonic())
        return self._epoch[0]

    def admit(
        self,
        db: firestore.Client,
        workspace_id: str,
        mode: str,
        upload_id: str,
        expires_at: datetime,
        limits: Limits,
    ) -> dict[str, str]:
        """Take a create from the window and a pending slot for `upload_id`; the RateLimit fields.
        `done` (or `give_back`) must follow once the create has written its record (or failed).

        Raises:
            RateLimited: the last 60 s hold the workspace's creates per minute.
            QuotaExceeded: the workspace has its most pending uploads.
            ServiceUnavailable: the pending set had to be rebuilt and Firestore is unavailable.
        """
        keys = _keys(workspace_id, mode)
        expires_ms = int(expires_at.timestamp() * 1000)

        epoch = self._store_epoch() if self.enabled else None

        def run() -> Any:
            return self._admit(
                keys=keys, args=[upload_id, limits.creates_per_minute, limits.max_pending_uploads, expires_ms, epoch]
            )

        reply = self._call(run) if epoch is not None else None
        if reply is not None and int(reply[0]) == -1:  # not rebuilt since the store's last outage, flush or start
            self._rebuild_once(db, workspace_id, mode, epoch)
            reply = self._call(run)
            if reply is not None and int(reply[0]) == -1:
                reply = None  # flushed again at once: this one is decided locally
        if reply is None:
            logs.note(limited_locally=True)
            self._local.admit(db, workspace_id, mode, upload_id, limits)
            return headers(limits, None)
        admitted, refused, used, pending, frees_ms, expiry_ms = reply
        fields = headers(limits, Usage(int(used), int(pending), _seconds(int(frees_ms))))
        if int(admitted):
            return fields
        refused = refused.decode() if isinstance(refused, bytes) else refused
        if refused == "rate":
            logs.note(limited="rate")
            raise RateLimited(limits.creates_per_minute, _seconds(int(frees_ms)), fields)
        logs.note(limited="quota")
        # A slot frees when an upload settles; at the latest when the first one expires.
        raise QuotaExceeded(limits.max_pending_uploads, int(pending), min(_seconds(int(expiry_ms)), 60), fields)

    def _rebuild_once(self, db: firestore.Client, workspace_id: str, mode: str, epoch: Any) -> None:
        """`_rebuild`, by one of the instance's creates that found the count unsynced; the others wait for it
        and then find the store's mark current. Each rebuilding at once (reading every pending record) timed
        the store out under load, which started another epoch (BENCHMARKS.md, "Memory")."""
        keys = _keys(workspace_id, mode)
        with self._rebuilding[hash(keys[2]) % REBUILD_LOCKS]:
            mark = self._call(lambda: self._client.get(keys[2]))
            if mark is not None and int(mark) == int(epoch):
                return  # rebuilt in this epoch while this one waited
            self._rebuild(db, workspace_id, mode, epoch)

    def _rebuild(self, db: firestore.Client, workspace_id: str, mode: str, epoch: Any) -> None:
        """The store's pending set for the workspace made Firestore's (module docstring)."""
        keys = _keys(workspace_id, mode)
        members = self._call(lambda: self._client.zrange(keys[1], 0, -1))
        if members is None:
            return
        records = lifecycle.pending_expiries(db, workspace_id, mode)
        # Members with a record that is not pending settled (their release lost); one without a record may
        # be a create still writing it: the script keeps that one while it is recent.
        settled = sorted(lifecycle.recorded(db, [m.decode() for m in members if m.decode() not in records]))
        pairs: list[Any] = []
        for upload_id, expires in records.items():
            pairs += [upload_id, int(expires.timestamp() * 1000)]
        args = [epoch, IN_FLIGHT_MS, len(settled), *settled, *pairs]
        if self._call(lambda: self._sync(keys=keys, args=args)) is not None:
            logs.note(limiter_rebuilt=len(records))

    def done(self, workspace_id: str, mode: str, upload_id: str) -> None:
        """A create admitted by `admit` has written its record: Firestore counts it now."""
        self._local.done(workspace_id, mode, upload_id)

    def give_back(self, workspace_id: str, mode: str, upload_id: str) -> None:
        """A create that failed after `admit`: its create and its slot are returned."""
        self._local.forget(workspace_id, mode, upload_id, rate=True)
        rate, pending, *_ = _keys(workspace_id, mode)
        self._call(
            lambda: self._client.pipeline(transaction=False).zrem(rate, upload_id).zrem(pending, upload_id).execute(),
        )

    def release(self, workspace_id: str, mode: str, upload_id: str) -> bool:
        """The upload left `pending`: its slot is free. True if this call freed it (in the store)."""
        self._local.forget(workspace_id, mode, upload_id, rate=False)
        removed = self._call(lambda: self._release(keys=_keys(workspace_id, mode), args=[upload_id]))
        return bool(removed)

    def guard(self, address: str, enforced: bool = True) -> AuthGuard:
        """The failed-authentication limit for one request from `address` (lib/api/auth.py `Guard`)."""
        return AuthGuard(self, address, enforced)

    def auth_failures(self, address: str, add: bool) -> tuple[int, int]:
        """The address's failed authentications in its current minute, and the ms left of it; with `add`,
        one more first. In the store, shared by every instance; while it is down, this instance's own."""
        name = f"fl:authfail:{address}"
        if add:
            reply = self._call(
                lambda: (
                    self._client.pipeline(transaction=False)
                    .incr(name)
                    .pexpire(name, WINDOW_SECONDS * 1000, nx=True)
                    .pttl(name)
                    .execute()
                ),
            )
        else:
            reply = self._call(lambda: self._client.pipeline(transaction=False).get(name).pttl(name).execute())
        if reply is None:
            return self._local.auth_failures(address, add)
        count, left = int(reply[0] or 0), int(reply[-1])
        return count, left if left > 0 else WINDOW_SECONDS * 1000

    def usage(self, workspace_id: str, mode: str) -> Usage:
        reply = self._call(lambda: self._usage(keys=_keys(workspace_id, mode)[:2]))
        if reply is None:
            return Usage(None, None, None)
        creates, pending, frees_ms = (int(value) for value in reply)
        return Usage(creates, pending, _seconds(frees_ms) if creates else None)


class AuthGuard:
    """lib/api/auth.py's `Guard` for one request: refuses its address once it has AUTH_FAILURES_PER_MINUTE
    failures in the current minute (a fixed window, from its first failure), and counts its failures.
    Not `enforced` (a loopback caller: lib/api/auth.py is_loopback), it only notes the lookup. Either way
    the request's log line says `key_lookup` when the key is read from Firestore."""

    def __init__(self, limiter: Limiter, address: str, enforced: bool = True):
        self._limiter, self._address, self._enforced = limiter, address, enforced

    def check(self) -> None:
        if self._enforced:
            count, left_ms = self._limiter.auth_failures(self._address, add=False)
            if count >= AUTH_FAILURES_PER_MINUTE:
                logs.note(limited="authentication")
                raise AuthenticationsLimited(AUTH_FAILURES_PER_MINUTE, _seconds(left_ms))
        logs.note(key_lookup=True)

    def failed(self) -> None:
        if self._enforced:
            self._limiter.auth_failures(self._address, add=True)


@dataclass
class _Count:
    """One workspace's pending uploads as an instance sees them while the store is down: Firestore's
    count when last taken, plus its own admits since (`since`) and those whose records were not yet
    written then (`carry`)."""

    base: int = 0
    taken_at: float = -math.inf
    carry: set[str] = field(default_factory=set)
    since: set[str] = field(default_factory=set)


class _Local:
    """The limits one instance enforces alone while the store is down (module docstring): the same
    figures, the creates per minute by its own sliding log, the pending uploads by Firestore's count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # address -> [failures, when its minute ends (monotonic)]; bounded, the oldest out first.
        self._auth: TtlLru[list[float]] = TtlLru(WINDOW_SECONDS, 10_000)
        self._rate: dict[tuple[str, str], deque[tuple[float, str]]] = {}
        self._counts: dict[tuple[str, str], _Count] = {}
        self._in_flight: dict[tuple[str, str], set[str]] = {}

    def admit(self, db: firestore.Client, workspace_id: str, mode: str, upload_id: str, limits: Limits) -> None:
        key = (workspace_id, mode)
        now = time.monotonic()
        with self._lock:
            count = self._counts.setdefault(key, _Count())
            stale = now - count.taken_at >= LOCAL_RECOUNT_SECONDS
        if stale:
            base = lifecycle.pending_count(db, workspace_id, mode)  # ServiceUnavailable: the create is a 503
            with self._lock:
                # Admits whose records may not be counted yet stay on top (a few counted twice: stricter).
                count.base, count.taken_at = base, now
                count.carry, count.since = set(self._in_flight.get(key, ())), set()
        with self._lock:
            log = self._rate.setdefault(key, deque())
            while log and log[0][0] <= now - WINDOW_SECONDS:
                log.popleft()
            if len(log) >= limits.creates_per_minute:
                frees = _seconds(int((log[len(log) - limits.creates_per_minute][0] + WINDOW_SECONDS - now) * 1000))
                raise RateLimited(limits.creates_per_minute, frees, headers(limits, None))
            pending = count.base + len(count.carry | count.since)
            if pending >= limits.max_pending_uploads:
                raise QuotaExceeded(
                    limits.max_pending_uploads, pending, math.ceil(LOCAL_RECOUNT_SECONDS), headers(limits, None)
                )
            log.append((now, upload_id))
            count.since.add(upload_id)
            self._in_flight.setdefault(key, set()).add(upload_id)

    def auth_failures(self, address: str, add: bool) -> tuple[int, int]:
        now = time.monotonic()
        with self._lock:
            entry = self._auth.get(address)
            if entry is None or entry[1] <= now:
                if not add:
                    return 0, WINDOW_SECONDS * 1000
                entry = [0, now + WINDOW_SECONDS]
                self._auth.put(address, entry)
            if add:
                entry[0] += 1
            return int(entry[0]), int((entry[1] - now) * 1000)

    def done(self, workspace_id: str, mode: str, upload_id: str) -> None:
        with self._lock:
            self._in_flight.get((workspace_id, mode), set()).discard(upload_id)

    def forget(self, workspace_id: str, mode: str, upload_id: str, rate: bool) -> None:
        """An upload settled (its slot), or a create given back (its slot and its place in the window)."""
        key = (workspace_id, mode)
        with self._lock:
            self._in_flight.get(key, set()).discard(upload_id)
            count = self._counts.get(key)
            if count is not None:
                count.carry.discard(upload_id)
                count.since.discard(upload_id)
            if rate and key in self._rate:
                self._rate[key] = deque(entry for entry in self._rate[key] if entry[1] != upload_id)


def _keys(workspace_id: str, mode: str) -> list[str]:
    """The rate log, the pending set, the mark of its last rebuild and the last minute's releases: one hash
    tag, one slot."""
    tag = f"{{{workspace_id}:{mode}}}"
    return [f"fl:rate:{tag}", f"fl:pending:{tag}", f"fl:synced:{tag}", f"fl:released:{tag}"]


def limiter(url: str | None, password: str | None, ca_pem: str | None) -> Limiter:
    """The instance's one Limiter (its connection pool is thread-safe); made on first use, which
    says so in the log when limits are off."""

    def make() -> Limiter:
        if url is None:
            logs.emit({"severity": "WARNING", "message": "limits are off: LIMITS_REDIS_URL is not set"})
        return Limiter(url, password, ca_pem)

    return shared(("limiter", url), make)
