"""Rate limits and quotas (issue 22): creates per minute and pending uploads per workspace, counted in
the real Redis every instance shares; the slot given back once however an upload settles; fail open."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from lib.limits import counters, quotas
from lib.platform import logs
from tests.conftest import ROOT
from tests.helpers import padded_mp4, response_schema_errors
from tests.tcpproxy import TcpProxy
from tests.uploads.test_events import envelope, object_name, push, resource_of
from tests.uploads.test_lifecycle import VIDEO, bearer, create, end_hour_now, put_bytes, record

POLICY = re.compile(r'"creates";q=(\d+);w=60')
SERVICE = re.compile(r'"creates";r=(\d+);t=(\d+)')


def limited(db, make_key, creates: int | None = None, pending: int | None = None, mode: str = "live"):
    """A fresh workspace with its own limits; (key, workspace)."""
    key, workspace = make_key(mode=mode)
    quotas.set_limits(db, workspace, creates, pending)
    return key, workspace


def post(client, key, headers=None):
    return client.post("/v1/uploads", json=VIDEO, headers={**bearer(key), **(headers or {})})


def pending_in_store(backends, workspace: str, mode: str = "live") -> int:
    store = redis.Redis.from_url(backends["redis"].url)
    return store.zcard(f"fl:pending:{{{workspace}:{mode}}}")


# --- creates per minute ----------------------------------------------------------------------------------


def test_a_workspace_may_spend_its_minute_at_once_and_then_is_refused_with_retry_after(
    client, db, make_key, openapi_doc
):
    key, _ = limited(db, make_key, creates=5)
    remaining = []
    for _ in range(5):
        resp = post(client, key)
        assert resp.status_code == 201, resp.get_data(as_text=True)
        assert POLICY.fullmatch(resp.headers["RateLimit-Policy"]).group(1) == "5"
        remaining.append(int(SERVICE.fullmatch(resp.headers["RateLimit"]).group(1)))
    assert remaining == [4, 3, 2, 1, 0]
    refused = post(client, key)
    assert refused.status_code == 429
    body = refused.get_json()
    assert body["error"]["code"] == "rate_limited"
    assert body["error"]["details"]["limit"] == 5
    assert not response_schema_errors(openapi_doc, 429, body)
    retry_after = refused.headers["Retry-After"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= 60
    r, t = SERVICE.fullmatch(refused.headers["RateLimit"]).groups()
    # The draft: Retry-After is not earlier than the end of the effective window.
    assert r == "0"
    assert int(t) <= int(retry_after)


def test_an_idempotent_replay_is_never_refused_for_rate(client, db, make_key):
    key, _ = limited(db, make_key, creates=2)
    first = post(client, key, {"Idempotency-Key": "k-1"})
    assert first.status_code == 201
    assert post(client, key).status_code == 201
    assert post(client, key).status_code == 429
    replay = post(client, key, {"Idempotency-Key": "k-1"})
    assert replay.status_code == 200
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json() == first.get_json()
    assert SERVICE.fullmatch(replay.headers["RateLimit"]).group(1) == "0"  # where the window stands
    # A new key is a new create: refused.
    assert post(client, key, {"Idempotency-Key": "k-2"}).status_code == 429


def test_test_and_live_keys_are_counted_apart(client, db, make_key):
    live, workspace = limited(db, make_key, creates=1)
    test, _ = make_key(workspace, mode="test")
    assert post(client, live).status_code == 201
    assert post(client, live).status_code == 429
    assert post(client, test).status_code == 201


def test_a_refused_or_failed_create_takes_nothing(client, db, make_key):
    key, _workspace = limited(db, make_key, creates=2, pending=5)
    # Invalid: refused before the limits; nothing is counted, the fields are there.
    bad = client.post("/v1/uploads", json={"content_type": "text/x-nope"}, headers=bearer(key))
    assert bad.status_code == 422
    assert SERVICE.fullmatch(bad.headers["RateLimit"]).group(1) == "2"
    assert post(client, key).status_code == 201
    assert post(client, key).status_code == 201
    assert post(client, key).status_code == 429
    # A refused create took no slot and no place in the window.
    usage = client.get("/v1/limits", headers=bearer(key)).get_json()
    assert usage["creates_in_last_minute"] == 2
    assert usage["pending_uploads"] == 2
    assert usage["creates_remaining"] == 0


# --- pending uploads -------------------------------------------------------------------------------------


def test_past_its_pending_uploads_a_workspace_is_refused_until_one_settles(client, db, make_key, openapi_doc):
    key, _workspace = limited(db, make_key, pending=2)
    first, _ = create(client, key), create(client, key)
    refused = post(client, key)
    assert refused.status_code == 429
    body = refused.get_json()
    assert body["error"]["code"] == "quota_exceeded"
    assert body["error"]["details"] == {"limit": 2, "pending": 2}
    assert not response_schema_errors(openapi_doc, 429, body)
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert client.post(f"/v1/uploads/{first['id']}/cancel", headers=bearer(key)).status_code == 200
    assert post(client, key).status_code == 201


def _landed(client, key, gcs, size_bytes: int | None = None):
    body = dict(VIDEO, size_bytes=size_bytes) if size_bytes else VIDEO
    out = create(client, key, body)
    put_bytes(out["upload_url"], padded_mp4(3000, secrets.randbits(64)))
    return out


@pytest.mark.parametrize("outcome", ["completed", "rejected", "no bytes"])
def test_the_slot_is_given_back_exactly_once_when_every_path_races_to_settle(
    client, db, gcs, backends, make_key, oidc_issuer, monkeypatch, outcome
):
    """A GET, a cancel, the sweep and the storage event settle one upload at once (its hour over, so
    each of them would): one of them stores the change and only that one gives its slot back. The
    workspace's other pending upload keeps its own slot."""
    key, workspace = limited(db, make_key, pending=2)
    other = create(client, key)
    if outcome == "no bytes":
        out = create(client, key)
    else:
        out = _landed(client, key, gcs, size_bytes=3000 if outcome == "completed" else 2999)
    end_hour_now(db, out["id"])
    calls, freed = [], []
    real = counters.Limiter.release

    def counting(self, workspace_id, mode, upload_id):
        calls.append(upload_id)
        result = real(self, workspace_id, mode, upload_id)
        freed.append(result)
        return result

    monkeypatch.setattr(counters.Limiter, "release", counting)
    start = threading.Barrier(4)

    def run(path):
        start.wait()
        if path == "get":
            return client.get(f"/v1/uploads/{out['id']}", headers=bearer(key)).status_code
        if path == "cancel":
            return client.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key)).status_code
        if path == "sweep":
            return client.post("/internal/sweep", headers=bearer(oidc_issuer.token())).status_code
        if outcome == "no bytes":  # no object: nothing to announce, a GET in its place
            return client.get(f"/v1/uploads/{out['id']}", headers=bearer(key)).status_code
        return push(client, envelope(resource_of(gcs, object_name(out))), oidc_issuer.events_token()).status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(run, ["get", "cancel", "sweep", "event"]))
    # The sweep takes every due upload in the database; another test's it could not settle makes it 503.
    assert all(status in (200, 409) for status in statuses[:2] + statuses[3:]), statuses
    assert statuses[2] in (200, 503), statuses
    state = record(db, out["id"])["state"]
    assert state == {"completed": "completed", "rejected": "rejected"}.get(outcome, state)
    assert state != "pending"
    assert calls == [out["id"]]
    assert freed == [True]
    assert pending_in_store(backends, workspace) == 1
    assert record(db, other["id"])["state"] == "pending"


def test_get_v1_limits_shows_the_workspaces_limits_and_usage(client, db, make_key, openapi_doc):
    key, _ = limited(db, make_key, creates=7, pending=3)
    create(client, key)
    resp = client.get("/v1/limits", headers=bearer(key))
    assert resp.status_code == 200
    body = resp.get_json()
    assert body == {
        "mode": "live",
        "enforced": True,
        "creates_per_minute": 7,
        "max_pending_uploads": 3,
        "creates_in_last_minute": 1,
        "creates_remaining": 6,
        "pending_uploads": 1,
    }
    assert not response_schema_errors(openapi_doc, 200, body, path="/v1/limits", method="get")
    assert POLICY.fullmatch(resp.headers["RateLimit-Policy"]).group(1) == "7"
    assert client.get("/v1/limits").status_code == 401


def test_get_v1_limits_without_a_store_says_nothing_is_enforced(serve, make_key, openapi_doc):
    key, _ = make_key()
    served = serve(drop=("LIMITS_REDIS_URL",))
    resp = served.session.get(served.url + "/v1/limits", headers=bearer(key), timeout=30)
    assert resp.status_code == 200
    assert "RateLimit-Policy" not in resp.headers
    body = resp.json()
    assert body == {
        "mode": "live",
        "enforced": False,
        "creates_per_minute": None,
        "max_pending_uploads": None,
        "creates_in_last_minute": None,
        "creates_remaining": None,
        "pending_uploads": None,
    }
    assert not response_schema_errors(openapi_doc, 200, body, path="/v1/limits", method="get")


def test_defaults_apply_until_ops_set_a_workspaces_own(client, key):
    body = client.get("/v1/limits", headers=bearer(key)).get_json()
    assert body["creates_per_minute"] == 600
    assert body["max_pending_uploads"] == 1000


# --- ops -------------------------------------------------------------------------------------------------


def admin(backends, *args: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "FIRESTORE_EMULATOR_HOST": backends["env"]["FIRESTORE_EMULATOR_HOST"],
        "GOOGLE_CLOUD_PROJECT": backends["env"]["GOOGLE_CLOUD_PROJECT"],
    }
    return subprocess.run(
        [sys.executable, "-m", "lib.admin", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_ops_set_and_read_a_workspaces_limits_with_the_cli(backends, client, make_key):
    key, workspace = make_key()
    shown = admin(backends, "limits", "--workspace", workspace, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {
        "workspace_id": workspace,
        "mode": "live",
        "creates_per_minute": 600,
        "max_pending_uploads": 1000,
        "pending_uploads": 0,
        "source": "default",
    }
    done = admin(backends, "set-limits", "--workspace", workspace, "--max-pending-uploads", "1")
    assert done.returncode == 0, done.stderr
    create(client, key)
    shown = json.loads(admin(backends, "limits", "--workspace", workspace, "--json").stdout)
    assert shown["max_pending_uploads"] == 1
    assert shown["creates_per_minute"] == 600
    assert shown["pending_uploads"] == 1
    assert shown["source"] == "workspace"
    assert post(client, key).get_json()["error"]["code"] == "quota_exceeded"
    refused = admin(backends, "set-limits", "--workspace", workspace, "--creates-per-minute", "0")
    assert refused.returncode == 2
    assert "between 1 and" in refused.stderr
    assert admin(backends, "set-limits", "--workspace", workspace).returncode == 2


def test_a_change_is_read_again_within_five_seconds(served_default, db, make_key):
    """An instance trusts what it read of a workspace's limits for under 5 s, so a change (one
    Firestore read after its entry goes) holds within 5 s; a served instance that has read the
    old figures picks the new ones up (waited for here with a generous bound, not timed)."""
    assert quotas.LIMITS_CACHE_SECONDS + 1 <= 5
    assert quotas._cache().ttl == quotas.LIMITS_CACHE_SECONDS
    key, workspace = make_key()

    def shown() -> dict:
        return served_default.session.get(f"{served_default.url}/v1/limits", headers=bearer(key), timeout=30).json()

    assert shown()["max_pending_uploads"] == 1000  # read, and cached
    quotas.set_limits(db, workspace, None, 3)
    deadline = time.monotonic() + 30
    while shown()["max_pending_uploads"] != 3:
        assert time.monotonic() < deadline, "the served instance never saw the change"
        time.sleep(0.2)  # poll interval, not a stand-in for readiness


# --- shared across instances; failing open ---------------------------------------------------------------


def test_two_instances_sharing_the_store_admit_the_figure_at_most_burst_included(serve, db, make_key):
    key, _ = limited(db, make_key, creates=20, pending=1000)
    one, two = serve(), serve()
    with ThreadPoolExecutor(16) as pool:
        statuses = list(
            pool.map(lambda i: (one if i % 2 else two).post(json=VIDEO, headers=bearer(key)).status_code, range(60))
        )
    admitted = statuses.count(201)
    assert statuses.count(429) == 60 - admitted
    # The figure, all at once. More only when a call outwaits the store's 250 ms on this busy machine and
    # its instance decides alone (lib/limits/counters.py _Local); docs/operations.md and docs/testing.md say 20 to 22.
    assert 20 <= admitted <= 22


def test_with_the_store_down_creates_are_served_and_the_log_says_so(serve, make_key):
    key, _ = make_key()
    with TcpProxy("127.0.0.1", 9, TcpProxy.STALL) as stalled:
        function = serve(LIMITS_REDIS_URL=f"redis://127.0.0.1:{stalled.port}")
        first = function.post(json=VIDEO, headers=bearer(key))
        second = function.post(json=VIDEO, headers=bearer(key))
    assert first.status_code == 201
    assert second.status_code == 201
    assert POLICY.fullmatch(first.headers["RateLimit-Policy"])
    assert "RateLimit" not in first.headers
    lines = [line for line in function.log_lines() if line.get("route") == "/v1/uploads"]
    assert [line.get("limiter") for line in lines] == ["unavailable", "unavailable"]
    assert lines[0]["limiter_error"] == "TimeoutError"
    assert "limiter_error" not in lines[1]


# --- the upload command ----------------------------------------------------------------------------------


def test_the_upload_command_waits_out_a_429_as_asked_and_says_so(serve, db, make_key, tmp_path):
    """The workspace's one pending slot is held by an upload whose hour is 5 s: the command's
    create is refused (quota_exceeded, Retry-After up to 5), it says so on stderr, waits, and
    uploads once the slot frees."""
    from tests.client.test_client import Command

    key, workspace = limited(db, make_key, pending=1)
    function = serve(UPLOAD_URL_TTL_SECONDS="5")
    holder = function.post(json=VIDEO, headers=bearer(key))
    assert holder.status_code == 201
    file = tmp_path / "clip.mp4"
    file.write_bytes(padded_mp4(5000, secrets.randbits(64)))
    done = Command(function.url, key, tmp_path / "cache").run("upload", str(file))
    assert done.returncode == 0, done.stderr
    note = re.search(r"quota_exceeded: waiting (\d+) s as asked \(Retry-After: (\d+)\)", done.stderr)
    assert note, done.stderr
    assert 1 <= int(note.group(2)) <= 5
    assert int(note.group(1)) >= int(note.group(2))
    refused = [line for line in function.log_lines() if line.get("error_code") == "quota_exceeded"]
    assert refused
    assert refused[0]["workspace_id"] == workspace


def test_a_429s_wait_is_noted_and_is_never_shorter_than_retry_after():
    from client.transport import Retry

    notes, slept = [], []
    retry = Retry(sleep=slept.append, note=notes.append)
    limited_ = requests.Response()
    limited_.status_code, limited_._content = 429, b'{"error": {"code": "rate_limited", "message": "m"}}'
    limited_.headers["Retry-After"] = "9"
    retry.wait(limited_)
    assert slept[0] >= 9
    assert notes == [f"rate_limited: waiting {slept[0]:.0f} s as asked (Retry-After: 9), then trying again"]
    busy = requests.Response()
    busy.status_code = 503
    retry.wait(busy)
    assert len(notes) == 1  # only a 429 is noted


# --- the engine and its settings --------------------------------------------------------------------------


def test_a_limit_lowered_below_what_the_window_holds_refuses_until_enough_leave_it(backends, db):
    from datetime import UTC, datetime, timedelta

    from lib.platform.errors import RateLimited

    limiter = counters.Limiter(backends["redis"].url)
    workspace = f"ws_{secrets.token_hex(6)}"
    expires = datetime.now(UTC) + timedelta(hours=1)
    with logs.collecting() as log:
        for _ in range(5):
            limiter.admit(db, workspace, "live", "upl_" + secrets.token_hex(16), expires, quotas.Limits(5, 100))
        with pytest.raises(RateLimited) as refused:
            limiter.admit(db, workspace, "live", "upl_" + secrets.token_hex(16), expires, quotas.Limits(2, 100))
        assert 55 <= int(refused.value.headers["Retry-After"]) <= 60  # the fourth oldest leaves in about a minute
        assert limiter.usage(workspace, "live").creates == 5
    assert "limiter" not in log
    # A release frees only its own slot, once.
    upload = "upl_" + secrets.token_hex(16)
    limiter.admit(db, workspace, "test", upload, expires, quotas.Limits(5, 100))
    assert limiter.release(workspace, "test", upload) is True
    assert limiter.release(workspace, "test", upload) is False
    assert limiter.usage(workspace, "test").pending == 0
    assert limiter.usage(workspace, "live").pending == 5


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LIMITS_REDIS_URL": "http://10.0.0.3:6379"}, "LIMITS_REDIS_URL must be"),
        ({"LIMITS_REDIS_URL": "redis://:secret@10.0.0.3:6379"}, "LIMITS_REDIS_AUTH"),
        ({"LIMITS_REDIS_URL": "rediss://10.0.0.3:6378"}, "LIMITS_REDIS_CA_CERT"),
        ({"CREATES_PER_MINUTE": "0"}, "CREATES_PER_MINUTE must be between 1 and 600000"),
        ({"MAX_PENDING_UPLOADS": "lots"}, "MAX_PENDING_UPLOADS must be a whole number"),
    ],
)
def test_malformed_limits_settings_stop_the_function_naming_themselves(env, message):
    from lib.platform import config

    base = {
        "GOOGLE_CLOUD_PROJECT": "p",
        "UPLOAD_BUCKET": "b",
        "STAGING_BUCKET": "b-staging",
        "CDN_BASE_URL": "https://cdn.example.com",
    }
    with pytest.raises(config.ConfigError, match=re.escape(message)) as refused:
        config.load({**base, **env})
    assert "secret" not in str(refused.value)  # never the password it was given


def test_a_workspace_document_holding_anything_but_positive_whole_numbers_falls_back_to_the_defaults():
    defaults = quotas.Limits(600, 1000)
    assert quotas.of({"creates_per_minute": 5, "max_pending_uploads": 7}, defaults) == quotas.Limits(5, 7)
    for bad in ("12", 0, -3, 2.5, True, None, [1]):
        assert quotas.of({"creates_per_minute": bad, "max_pending_uploads": bad}, defaults) == defaults


# --- the store failing: limits kept locally, the count rebuilt from Firestore -----------------------------


@pytest.fixture
def own_store(log_dir):
    """A redis-server of this test's own, to freeze (SIGSTOP) and flush without touching the shared one."""
    from dev import emulators

    service = emulators.start_redis(log_dir, name=f"redis-{secrets.token_hex(3)}")
    yield service
    os.kill(service.pid, signal.SIGCONT)  # a frozen process cannot act on the SIGTERM that stops it
    service.stop()


def _pending_record(db, workspace: str, upload_id: str) -> None:
    from datetime import UTC, datetime, timedelta

    from lib.uploads import lifecycle

    now = datetime.now(UTC)
    lifecycle.create_record(
        db,
        upload_id,
        lifecycle.new_fields(
            upload_id,
            workspace,
            "live",
            f"uploads/{workspace}/{upload_id[4:]}.mp4",
            "video/mp4",
            None,
            now,
            now + timedelta(hours=1),
            "https://storage.example/session",
        ),
    )


def _settle(db, upload_id: str) -> None:
    from lib.uploads import lifecycle

    lifecycle.transition(db, lifecycle.load_by_id(db, upload_id), lifecycle.Settlement.cancel())


def test_a_store_outage_keeps_each_limit_and_its_end_rebuilds_the_count_from_firestore(db, own_store, monkeypatch):
    from datetime import UTC, datetime, timedelta

    from lib.platform.errors import QuotaExceeded, RateLimited

    # Each refusal or admit while down recounts at once, and the store is tried again on the next call
    # after a failure: the test steps through an outage without waiting out its clocks.
    monkeypatch.setattr(counters, "LOCAL_RECOUNT_SECONDS", 0.0)
    monkeypatch.setattr(counters, "DOWN_SECONDS", 0.0)
    limiter = counters.Limiter(own_store.url)
    capped, busy = f"ws_{secrets.token_hex(6)}", f"ws_{secrets.token_hex(6)}"
    expires = datetime.now(UTC) + timedelta(hours=1)
    figures = quotas.Limits(creates_per_minute=100, max_pending_uploads=3)

    def admit(workspace: str, figures=figures) -> str:
        upload_id = "upl_" + secrets.token_hex(16)
        limiter.admit(db, workspace, "live", upload_id, expires, figures)
        _pending_record(db, workspace, upload_id)
        limiter.done(workspace, "live", upload_id)
        return upload_id

    first = [admit(capped) for _ in range(3)]
    with pytest.raises(QuotaExceeded):
        admit(capped)
    # The store freezes: the cap still holds, counted from Firestore's records.
    os.kill(own_store.pid, signal.SIGSTOP)
    for _ in range(10):
        with logs.collecting() as log, pytest.raises(QuotaExceeded):
            admit(capped)
        assert log["limiter"] == "unavailable"
        assert log["limited_locally"] is True
    # Two settle while it is frozen (their releases cannot reach it); two more are admitted, no more.
    for upload_id in first[:2]:
        _settle(db, upload_id)
        limiter.release(capped, "live", upload_id)
    meanwhile = [admit(capped) for _ in range(2)]
    with pytest.raises(QuotaExceeded):
        admit(capped)
    _settle(db, meanwhile[0])
    limiter.release(capped, "live", meanwhile[0])
    # Creates per minute hold too: the whole figure, on this instance's own log.
    admitted = 0
    for _ in range(8):
        try:
            admit(busy, quotas.Limits(creates_per_minute=5, max_pending_uploads=1000))
            admitted += 1
        except RateLimited:
            pass
    assert admitted == 5
    # It answers again, still holding the first three (their releases were missed) and neither upload
    # admitted meanwhile: the first create rebuilds the workspace's count from Firestore (2 pending), so
    # one more fits, and no more.
    os.kill(own_store.pid, signal.SIGCONT)
    with logs.collecting() as log:
        admit(capped)
    assert "limiter" not in log
    assert log["limiter_rebuilt"] == 2
    assert log.get("limiter_recovered")
    assert limiter.usage(capped, "live").pending == 3 == lifecycle_pending(db, capped)
    with pytest.raises(QuotaExceeded):
        admit(capped)


def lifecycle_pending(db, workspace: str) -> int:
    from lib.uploads import lifecycle

    return lifecycle.pending_count(db, workspace, "live")


def test_a_store_that_comes_back_empty_counts_the_pending_uploads_firestore_holds(client, db, make_key, backends):
    """FLUSHALL (or a new instance): the next create rebuilds the count before it admits."""
    key, workspace = limited(db, make_key, pending=3)
    for _ in range(3):
        assert post(client, key).status_code == 201
    store = redis.Redis.from_url(backends["redis"].url)
    for name in counters._keys(workspace, "live"):
        store.delete(name)  # as a FLUSHALL does to this workspace (the shared store keeps the others')
    refused = post(client, key)
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "quota_exceeded"
    assert pending_in_store(backends, workspace) == 3


def test_after_an_outage_every_instance_rebuilds_a_workspaces_count_once_whoever_saw_it(db, own_store, monkeypatch):
    """One instance saw the store fail, and a release was lost meanwhile; when it reaches the store again it advances
    the store's epoch, and the next create on another instance, which never saw the outage, rebuilds
    the workspace's count from Firestore before deciding (and the one after does not)."""
    from datetime import UTC, datetime, timedelta

    monkeypatch.setattr(counters, "DOWN_SECONDS", 0.0)
    monkeypatch.setattr(counters, "EPOCH_CACHE_SECONDS", 0.0)
    saw, other = counters.Limiter(own_store.url), counters.Limiter(own_store.url)
    workspace = f"ws_{secrets.token_hex(6)}"
    expires = datetime.now(UTC) + timedelta(hours=1)
    figures = quotas.Limits(creates_per_minute=100, max_pending_uploads=2)
    held = []
    for limiter in (saw, other):
        upload_id = "upl_" + secrets.token_hex(16)
        limiter.admit(db, workspace, "live", upload_id, expires, figures)
        _pending_record(db, workspace, upload_id)
        held.append(upload_id)
    os.kill(own_store.pid, signal.SIGSTOP)
    assert saw.usage(workspace, "live").pending is None  # it sees the outage
    _settle(db, held[0])  # settled by an instance that died before it could release the slot
    os.kill(own_store.pid, signal.SIGCONT)
    with logs.collecting() as log:
        assert saw.usage(workspace, "live").pending == 2
    assert log.get("limiter_recovered")
    with logs.collecting() as first:
        other.admit(db, workspace, "live", "upl_" + secrets.token_hex(16), expires, figures)
    assert first["limiter_rebuilt"] == 1
    assert "limiter" not in first
    from lib.platform.errors import QuotaExceeded

    with logs.collecting() as second, pytest.raises(QuotaExceeded):
        other.admit(db, workspace, "live", "upl_" + secrets.token_hex(16), expires, figures)
    assert "limiter_rebuilt" not in second


def test_a_release_while_a_rebuild_reads_firestore_is_not_undone_by_it(db, own_store, monkeypatch):
    """A rebuild reads the pending records, an upload among them settles and releases its slot, then the
    rebuild writes what it read: the released one stays out."""
    from datetime import UTC, datetime, timedelta

    from lib.uploads import lifecycle

    limiter = counters.Limiter(own_store.url)
    workspace = f"ws_{secrets.token_hex(6)}"
    expires = datetime.now(UTC) + timedelta(hours=1)
    figures = quotas.Limits(creates_per_minute=100, max_pending_uploads=10)
    held = []
    for _ in range(2):
        upload_id = "upl_" + secrets.token_hex(16)
        limiter.admit(db, workspace, "live", upload_id, expires, figures)
        _pending_record(db, workspace, upload_id)
        held.append(upload_id)
    redis.Redis.from_url(own_store.url).incr(counters.EPOCH_KEY)  # as after an outage: the next create rebuilds
    monkeypatch.setattr(counters, "EPOCH_CACHE_SECONDS", 0.0)
    read = lifecycle.pending_expiries

    def read_then_settle(*args):
        found = read(*args)
        _settle(db, held[0])
        limiter.release(workspace, "live", held[0])  # between the rebuild's read and its write
        return found

    monkeypatch.setattr(lifecycle, "pending_expiries", read_then_settle)
    with logs.collecting() as log:
        limiter.admit(db, workspace, "live", "upl_" + secrets.token_hex(16), expires, figures)
    assert log["limiter_rebuilt"] == 2  # it read both as pending
    assert limiter.usage(workspace, "live").pending == 2  # the one still pending and the new one


def test_creates_that_find_a_count_unsynced_at_once_rebuild_it_once(db, own_store, monkeypatch):
    """Eight creates of one workspace find its count unsynced together (a new epoch): one reads Firestore's
    pending records, the others wait for that rebuild and then admit against it without reading again."""
    from datetime import UTC, datetime, timedelta

    from lib.uploads import lifecycle

    limiter = counters.Limiter(own_store.url)
    workspace = f"ws_{secrets.token_hex(6)}"
    expires = datetime.now(UTC) + timedelta(hours=1)
    figures = quotas.Limits(creates_per_minute=100, max_pending_uploads=100)
    limiter.admit(db, workspace, "live", "upl_" + secrets.token_hex(16), expires, figures)
    redis.Redis.from_url(own_store.url).incr(counters.EPOCH_KEY)  # as after an outage
    monkeypatch.setattr(counters, "EPOCH_CACHE_SECONDS", 0.0)
    read, reads, inside, go = lifecycle.pending_expiries, [], threading.Event(), threading.Event()

    def held_read(*args):
        reads.append(args)
        inside.set()
        assert go.wait(30)
        return read(*args)

    monkeypatch.setattr(lifecycle, "pending_expiries", held_read)
    stripe = hash(counters._keys(workspace, "live")[2]) % counters.REBUILD_LOCKS
    waiting = []

    class Counted:
        """The workspace's lock, saying who waits on it."""

        def __init__(self, lock):
            self.lock = lock

        def __enter__(self):
            waiting.append(threading.get_ident())
            self.lock.acquire()

        def __exit__(self, *exc):
            self.lock.release()

    limiter._rebuilding[stripe] = Counted(limiter._rebuilding[stripe])
    admitted = []

    def create():
        limiter.admit(db, workspace, "live", "upl_" + secrets.token_hex(16), expires, figures)
        admitted.append(1)

    threads = [threading.Thread(target=create) for _ in range(8)]
    threads[0].start()
    assert inside.wait(30)  # the first is reading Firestore
    for thread in threads[1:]:
        thread.start()
    deadline = time.monotonic() + 30
    while len(waiting) < 8 and time.monotonic() < deadline:  # the seven others reach the lock (or read too)
        time.sleep(0.01)
    go.set()
    for thread in threads:
        thread.join(30)
    assert len(waiting) == 8
    assert len(reads) == 1
    assert len(admitted) == 8
    assert limiter.usage(workspace, "live").pending == 9
