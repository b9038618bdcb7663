"""Promises kept when things go wrong, shown against the served function:
racing retries, a crash mid-request, backends that vanish or stall, and load.

Fault tests get their own emulators (module-scoped) so stopping them cannot
disturb the rest of the suite.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
import requests
from google.cloud import firestore

from dev import emulators
from lib.api import auth, idempotency
from tests.conftest import start_shipped
from tests.tcpproxy import TcpProxy

VIDEO = {"content_type": "video/mp4", "filename": "clip.mp4"}
BUCKET = "framelane-faults"
PROJECT = "framelane-faults"
# Every upstream call is budgeted in lib/platform/clients.py: about 7 s for Firestore and
# 11 s for Storage at worst. A 503 must come well inside this bound, itself far
# below the function's 60 s timeout.
UPSTREAM_BOUND_SECONDS = 15


def post(url: str, key: str, idem: str | None = None, body: dict = VIDEO, session=requests) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if idem:
        headers["Idempotency-Key"] = idem
    return session.post(url + "/v1/uploads", json=body, headers=headers, timeout=60)


def race(url: str, key: str, idem: str, bodies: list[dict]) -> list[requests.Response]:
    """Send all bodies at once (a barrier releases them together) on one Idempotency-Key."""
    barrier = threading.Barrier(len(bodies))

    def one(body):
        session = requests.Session()
        barrier.wait(timeout=30)
        return post(url, key, idem, body, session)

    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


# --- races -----------------------------------------------------------------------


@pytest.mark.parametrize("n", [20, 40])
def test_concurrent_retries_on_one_key_never_get_two_urls(served_default, key, n):
    responses = race(served_default.url, key, f"race-{uuid.uuid4()}", [VIDEO] * n)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 201, 409}, statuses
    assert statuses.count(201) == 1
    assert len({r.json()["upload_url"] for r in responses if r.status_code in (200, 201)}) == 1
    conflicts = [r for r in responses if r.status_code == 409]
    assert all(r.json()["error"]["code"] == "idempotency_key_in_use" and r.headers["Retry-After"] for r in conflicts)


def test_two_bodies_racing_on_one_key_exactly_one_wins(served_default, key):
    other = {"content_type": "image/png", "filename": "still.png"}
    for _ in range(10):  # several rounds: the interleavings differ
        idem = f"pair-{uuid.uuid4()}"
        a, b = race(served_default.url, key, idem, [VIDEO, other])
        assert sorted([a.status_code, b.status_code]) == [201, 409], (a.text, b.text)
        loser_body = other if a.status_code == 201 else VIDEO
        loser = b if a.status_code == 201 else a
        assert loser.json()["error"]["code"] in ("idempotency_key_reused", "idempotency_key_in_use")
        # Once the winner has completed, the loser's body is refused for good.
        assert post(served_default.url, key, idem, loser_body).json()["error"]["code"] == "idempotency_key_reused"


# --- dedicated backends for the fault tests --------------------------------------------


@pytest.fixture(scope="module")
def faults(log_dir):
    """A Firestore emulator and fake-gcs-server of our own, restartable on their ports."""
    state = {"firestore": emulators.start_firestore(log_dir)}
    try:
        state["storage"] = emulators.start_fake_gcs(log_dir)
        emulators.create_buckets(state["storage"].url, BUCKET)
        yield state
    finally:
        for name in ("storage", "firestore"):
            if name in state:
                state[name].stop()


def firestore_port(faults) -> int:
    return int(faults["firestore"].extra["host"].rsplit(":", 1)[1])


def storage_port(faults) -> int:
    return int(faults["storage"].url.rsplit(":", 1)[1])


def restart_firestore(faults, log_dir) -> None:
    if faults["firestore"].alive():
        faults["firestore"].stop()
    faults["firestore"] = emulators.start_firestore(log_dir, port=firestore_port(faults))


def restart_storage(faults, log_dir) -> None:
    if faults["storage"].alive():
        faults["storage"].stop()
    faults["storage"] = emulators.start_fake_gcs(log_dir, port=storage_port(faults))
    emulators.create_buckets(faults["storage"].url, BUCKET)


def fault_env(faults, **overrides) -> dict:
    env = emulators.function_env(faults["firestore"], faults["storage"], PROJECT, BUCKET)
    env.update(overrides)
    return env


def fault_db(faults) -> firestore.Client:
    """A fresh client for our own emulator (it may have been restarted under an old one)."""
    return emulators.firestore_client_for(faults["firestore"], PROJECT)


def new_key(faults) -> str:
    return auth.create_key(fault_db(faults), f"ws_{uuid.uuid4().hex[:10]}", "faults", "live")[0]


@pytest.fixture
def serve_faults(faults, log_dir, shipped):
    started = []

    def start(**overrides):
        service = start_shipped(
            shipped, fault_env(faults, **overrides), log_dir, name=f"function-faults-{uuid.uuid4().hex[:6]}"
        )
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def timed(fn):
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


def until_created(url: str, make_key, attempts: int = 30) -> tuple[requests.Response, float]:
    """Retry (as a client would, honouring Retry-After) until a 201; bounded in attempts."""
    started = time.monotonic()
    for _ in range(attempts):
        resp = post(url, make_key())
        if resp.status_code == 201:
            return resp, time.monotonic() - started
        assert resp.status_code == 503, resp.text
        time.sleep(min(int(resp.headers.get("Retry-After", "1")), 2))
    pytest.fail(f"no 201 within {attempts} attempts")


# --- a crashed request ---------------------------------------------------------------------


def test_a_request_killed_after_its_claim_frees_the_key_after_the_lease(faults, serve_faults, log_dir):
    key = new_key(faults)
    workspace = fault_db(faults).collection(auth.COLLECTION).document(auth.key_id(key)).get().get("workspace_id")
    idem = f"crash-{uuid.uuid4()}"
    record_id = idempotency.record_id(workspace, "live", idem)
    record = fault_db(faults).collection(idempotency.COLLECTION).document(record_id)

    # Storage stalls, so the request sits between its claim and its completion.
    with TcpProxy("127.0.0.1", storage_port(faults), TcpProxy.STALL) as stall:
        doomed = serve_faults(STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{stall.port}", IDEMPOTENCY_LEASE_SECONDS="3")
        sender = threading.Thread(target=lambda: _swallow(lambda: post(doomed.url, key, idem)), daemon=True)
        sender.start()
        deadline = time.monotonic() + 10
        while not record.get().exists:  # poll for the claim: the readiness check for the kill
            assert time.monotonic() < deadline, "the request never claimed its key"
            time.sleep(0.05)
        doomed.kill()  # SIGKILL: no cleanup runs
        sender.join(timeout=10)
    assert record.get().get("state") == "in_progress"

    survivor = serve_faults(IDEMPOTENCY_LEASE_SECONDS="3")
    blocked = post(survivor.url, key, idem)
    assert blocked.status_code == 409
    assert blocked.json()["error"]["code"] == "idempotency_key_in_use"
    assert 1 <= int(blocked.headers["Retry-After"]) <= 3

    lease_end = record.get().get("lease_expires_at")
    wait = (lease_end - datetime.now(UTC)).total_seconds()
    time.sleep(max(0.0, wait) + 0.2)  # the lease is the clock under test, not a readiness stand-in
    created = post(survivor.url, key, idem)
    assert created.status_code == 201, created.text
    replay = post(survivor.url, key, idem)
    assert replay.status_code == 200
    assert replay.json()["upload_url"] == created.json()["upload_url"]


def _swallow(fn):
    with contextlib.suppress(requests.RequestException):  # the server was killed under this request, as intended
        fn()


# --- backends that go away --------------------------------------------------------------------


def test_storage_down_gives_bounded_503s_and_the_running_function_recovers(faults, serve_faults, log_dir):
    function = serve_faults()
    key = new_key(faults)
    assert post(function.url, key).status_code == 201
    faults["storage"].stop()
    try:
        for idem in (None, f"down-{uuid.uuid4()}"):
            resp, elapsed = timed(lambda idem=idem: post(function.url, key, idem))
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["code"] == "service_unavailable", resp.text
            assert int(resp.headers["Retry-After"]) >= 1
            assert elapsed < UPSTREAM_BOUND_SECONDS
    finally:
        restart_storage(faults, log_dir)
    resp, _ = until_created(function.url, lambda: key)
    assert resp.status_code == 201


def test_firestore_down_gives_bounded_503s_and_the_running_function_recovers(faults, serve_faults, log_dir):
    function = serve_faults()
    warm, cold = new_key(faults), new_key(faults)
    assert post(function.url, warm).status_code == 201
    faults["firestore"].stop()
    try:
        # A key this instance looked up recently needs no Firestore lookup, but
        # every upload is recorded (its expiry is enforced from the record), so
        # a warm key, a cold key and an Idempotency-Key all get a bounded 503.
        for key, idem in ((warm, None), (cold, None), (warm, f"down-{uuid.uuid4()}")):
            resp, elapsed = timed(lambda key=key, idem=idem: post(function.url, key, idem))
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["code"] == "service_unavailable", resp.text
            assert elapsed < UPSTREAM_BOUND_SECONDS
    finally:
        restart_firestore(faults, log_dir)
    # The emulator starts empty: a new key proves the whole path works again.
    resp, _ = until_created(function.url, lambda: new_key(faults))
    assert resp.status_code == 201


# --- backends that stall or crawl -------------------------------------------------------------


@pytest.mark.parametrize("backend", ["storage", "firestore"])
def test_a_stalled_backend_is_cut_off_by_the_timeouts(faults, serve_faults, backend):
    key = new_key(faults)
    port = storage_port(faults) if backend == "storage" else firestore_port(faults)
    with TcpProxy("127.0.0.1", port, TcpProxy.STALL) as stall:
        function = serve_faults(**stalled_env(backend, stall.port))
        resp, elapsed = timed(lambda: post(function.url, key))
    assert resp.status_code == 503, resp.text
    assert elapsed < UPSTREAM_BOUND_SECONDS
    assert stall.connections >= 1  # it really went through the stalled path


def stalled_env(backend: str, port: int) -> dict:
    if backend == "storage":
        return {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}
    return {"FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{port}"}


def test_slow_but_working_backends_still_succeed(faults, serve_faults):
    key = new_key(faults)
    with (
        TcpProxy("127.0.0.1", storage_port(faults), TcpProxy.DELAY, delay=0.5) as slow_storage,
        TcpProxy("127.0.0.1", firestore_port(faults), TcpProxy.DELAY, delay=0.5) as slow_firestore,
    ):
        function = serve_faults(
            STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{slow_storage.port}",
            FIRESTORE_EMULATOR_HOST=f"127.0.0.1:{slow_firestore.port}",
        )
        resp = post(function.url, key, f"slow-{uuid.uuid4()}")
    assert resp.status_code == 201, resp.text


# --- load ------------------------------------------------------------------------------------------


def test_a_thousand_requests_at_concurrency_32_all_succeed(served_default, make_key, db, capsys):
    """1,000 POSTs, 32 at a time, against one served function: every one a 201 with
    its own upload URL. Throughput and p99 are printed, not asserted (make bench). The
    workspace's limits are the highest ops may set, so they count but never refuse."""
    from lib.limits import quotas
    from lib.platform import config

    key, workspace = make_key()
    quotas.set_limits(db, workspace, config.MAX_CREATES_PER_MINUTE, config.MAX_PENDING_UPLOADS)
    local = threading.local()

    def one(_):
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        started = time.perf_counter()
        resp = post(served_default.url, key, session=session)
        return resp.status_code, resp.json().get("upload_url"), time.perf_counter() - started

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(1000)))
    wall = time.perf_counter() - started
    statuses = [status for status, _, _ in results]
    assert statuses.count(201) == 1000, {s: statuses.count(s) for s in set(statuses)}
    assert len({url for _, url, _ in results}) == 1000
    latencies = sorted(latency for _, _, latency in results)
    with capsys.disabled():
        print(
            f"\nload: 1000 requests at concurrency 32 in {wall:.2f}s = {1000 / wall:.0f} req/s; "
            f"p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {latencies[989] * 1000:.1f} ms"
        )
