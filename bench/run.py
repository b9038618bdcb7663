"""`make bench`: the endpoint beside its floor, on the emulators, as deployed.

Both are served by functions-framework (gunicorn, threads) from the same
environment; load comes from a separate process (bench/load.py); endpoint and
floor rounds are interleaved so drift on the machine hits both alike. Prints
the tables and writes them into BENCHMARKS.md between its markers.

BENCH_ROUNDS (3) and BENCH_SCALE (1.0) trade time for precision.
"""

from __future__ import annotations

import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

from bench import command, isolation, sweep
from bench import limits as limiter
from bench import media as media_reads
from dev import emulators
from dev.receiver import Receiver

ROOT = emulators.ROOT
PROJECT, BUCKET = "framelane-bench", "framelane-bench-uploads"
BODY = json.dumps({"content_type": "video/mp4", "filename": "clip.mp4"})
# What every PUT here sends: a real one-second MP4 (the service checks it before `completed`).
CLIP = (Path(__file__).resolve().parent.parent / "tests" / "media" / "clip.mp4").read_bytes()
REPLAY_KEY = "bench-replay"
SCENARIOS = {  # name: (endpoint path, floor path, idempotency)
    "a": ("/v1/uploads", "/a", "none"),
    "b": ("/v1/uploads", "/b", "fresh"),
    "c": ("/v1/uploads", "/c", REPLAY_KEY),
}
TITLES = {"a": "(a) no Idempotency-Key", "b": "(b) a fresh Idempotency-Key each time", "c": "(c) replays"}
CONCURRENCY = (1, 8, 32)
EVENT_CONCURRENCY = 16
CLK_TCK = os.sysconf("SC_CLK_TCK")
TOPIC, SUBSCRIPTION = "storage-events", "storage-events-relay"
WEBHOOKS_TOPIC = "webhooks"


def group_pids(pgid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5, pgrp, counting from the state
            pids.append(int(stat.parent.name))
    return pids


def group_cpu_seconds(pgid: int) -> float:
    total = 0
    for pid in group_pids(pgid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def worker_pid(service: emulators.Service) -> int:
    """gunicorn's worker: the process of the group that is not the master."""
    return next(pid for pid in group_pids(service.pid) if pid != service.pid)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def load(
    url: str, path: str, key: str, concurrency: int, count: int, idempotency: str, bodies: list[str] | None = None
) -> dict:
    spec = {
        "url": url,
        "path": path,
        "body": BODY,
        "concurrency": concurrency,
        "requests": count,
        "idempotency": idempotency,
        "bodies": bodies or [],
        "headers": {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    }
    out = subprocess.run(
        [sys.executable, "-m", "bench.load"],
        input=json.dumps(spec),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout)


def measured(
    service: emulators.Service,
    path: str,
    key: str,
    concurrency: int,
    count: int,
    idem: str,
    bodies: list[str] | None = None,
) -> dict:
    before = group_cpu_seconds(service.pid)
    result = load(service.url, path, key, concurrency, count, idem, bodies)
    result["cpu_ms"] = (group_cpu_seconds(service.pid) - before) * 1000 / result["requests"]
    good = sum(n for status, n in result["statuses"].items() if status in ("200", "201"))
    if good != result["requests"]:
        raise RuntimeError(f"{service.name} {path}: {result['statuses']}")
    return result


def median_of(rounds: list[dict], field: str) -> float:
    return statistics.median(r[field] for r in rounds)


def in_process_reference(env: dict, rounds: int = 300) -> dict:
    """The same upstream calls made directly from this process: no HTTP, no framework."""
    os.environ.update(
        {
            k: env[k]
            for k in (
                "FIRESTORE_EMULATOR_HOST",
                "STORAGE_EMULATOR_HOST",
                "PUBSUB_EMULATOR_HOST",
                "GOOGLE_CLOUD_PROJECT",
                "UPLOAD_BUCKET",
                "STAGING_BUCKET",
            )
        }
    )
    sys.path.insert(0, str(ROOT / "bench"))
    import floor  # the floor's own functions, called without HTTP

    def p50(fn) -> float:
        samples = []
        for _ in range(rounds):
            started = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - started)
        return statistics.median(samples) * 1000

    class FakeRequest:  # the floor function only reads request.path
        def __init__(self, path):
            self.path = path

    return {
        name: p50(lambda p=floor_path: floor.floor(FakeRequest(p))) for name, (_, floor_path, _) in SCENARIOS.items()
    }


def import_times(runs: int = 7) -> dict:
    """The import of `main` against the import of the libraries it needs.

    "The libraries it needs" are exactly the modules `import main` brings in
    that are not ours (pydantic builds its machinery lazily, so `import
    pydantic` alone would leave that out). One fresh process imports them, then
    `main`: the second step is our own import work. Median of `runs` processes;
    across processes the library import alone varies by a third here. main.py
    reads its settings when imported, so each process is given valid ones.
    """
    base = {
        **os.environ,
        "GOOGLE_CLOUD_PROJECT": "bench",
        "UPLOAD_BUCKET": "bench",
        "CDN_BASE_URL": "https://cdn.invalid",
    }
    probe = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); before = set(sys.modules); import main; "
        f"print(' '.join(m for m in sys.modules if m not in before and m != 'main' and not m.startswith('lib')))"
    )
    needed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT, env=base
    ).stdout.split()
    code = (
        f"import importlib, sys, time; sys.path.insert(0, {str(ROOT)!r}); t0 = time.perf_counter(); "
        f"[importlib.import_module(m) for m in {needed!r}]; t1 = time.perf_counter(); import main; "
        f"print(t1 - t0, time.perf_counter() - t1)"
    )

    def median_times(env: dict) -> tuple[float, float]:
        samples = [
            tuple(
                map(
                    float,
                    subprocess.run(
                        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env
                    ).stdout.split(),
                )
            )
            for _ in range(runs)
        ]
        return statistics.median(s[0] for s in samples) * 1000, statistics.median(s[1] for s in samples) * 1000

    # The libraries come with bytecode (pip compiles them at install); our modules are compiled
    # from source on every import where PYTHONDONTWRITEBYTECODE is set, as on these machines.
    # Like for like: our modules with bytecode too (written once to a private cache), and the
    # compiling measured apart.
    with tempfile.TemporaryDirectory() as cache:
        cached = {k: v for k, v in base.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cached["PYTHONPYCACHEPREFIX"] = cache
        subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, cwd=ROOT, env=cached)
        libraries, ours = median_times(cached)
    uncached = {**base, "PYTHONDONTWRITEBYTECODE": "1"}
    _, compiling = median_times(uncached)
    return {
        "libraries": libraries,
        "main": libraries + ours,
        "ours": ours,
        "modules": len(needed),
        "ours_compiling": compiling,
    }


def cold_starts(env: dict, key: str, log_dir: Path, runs: int = 3) -> list[float]:
    """Process start to the first 201, cache and connections cold."""
    results = []
    for n in range(runs):
        started = time.perf_counter()
        service = emulators.start_function(env, log_dir, name=f"bench-cold-{n}")
        try:
            while True:
                resp = requests.post(
                    service.url + "/v1/uploads", data=BODY, timeout=30, headers={"Authorization": f"Bearer {key}"}
                )
                if resp.status_code == 201:
                    break
            results.append((time.perf_counter() - started) * 1000)
        finally:
            service.stop()
    return results


def pending_events(db, collection: str, count: int, storage_url: str) -> list[str]:
    """`count` fresh pending upload records in `collection`, each with its object landed in the staging
    bucket (tests/media/clip.mp4: the check reads it, the placement rewrites it), and one push envelope
    for each (what Pub/Sub delivers when each object lands)."""
    import base64
    import secrets as token
    from concurrent.futures import ThreadPoolExecutor

    now = datetime.now(UTC).replace(microsecond=0)
    staging = emulators.staging_bucket(BUCKET)
    http = requests.Session()

    def land(n: int) -> tuple[str, dict]:
        hex32 = token.token_hex(16)
        name = f"uploads/ws_bench/{hex32}.mp4"
        resp = http.post(
            f"{storage_url}/upload/storage/v1/b/{staging}/o",
            params={"uploadType": "media", "name": name},
            data=CLIP,
            headers={"Content-Type": "video/mp4"},
            timeout=30,
        )
        resp.raise_for_status()
        return hex32, resp.json()

    with ThreadPoolExecutor(8) as pool:
        landed = list(pool.map(land, range(count)))
    bodies, batch = [], db.batch()
    for n, (hex32, resource) in enumerate(landed):
        name = resource["name"]
        batch.create(
            db.collection(collection).document(f"upl_{hex32}"),
            {
                "workspace_id": "ws_bench",
                "mode": "live",
                "object_name": name,
                "content_type": "video/mp4",
                "size_bytes": None,
                "created_at": now,
                "expires_at": now + timedelta(hours=1),
                "state": "pending",
                "session_url": "http://unused",
                "staged": True,
            },
        )
        bodies.append(
            json.dumps(
                {
                    "message": {
                        "attributes": {
                            "eventType": "OBJECT_FINALIZE",
                            "bucketId": staging,
                            "objectId": name,
                            "objectGeneration": str(resource["generation"]),
                            "payloadFormat": "JSON_API_V1",
                        },
                        "data": base64.b64encode(json.dumps(resource).encode()).decode(),
                        "messageId": str(n),
                        "publishTime": now.isoformat(),
                    },
                    "subscription": "bench",
                }
            )
        )
        if n % 400 == 399:
            batch.commit()
            batch = db.batch()
    batch.commit()
    return bodies


def completion_latency(endpoint: emulators.Service, db, key: str, runs: int = 100) -> list[float]:
    """PUT answered -> record completed, through fake-gcs-server's event, the Pub/Sub
    emulator, the relay and the function: ms for each of `runs` uploads, one at a time."""
    results = []
    for _ in range(runs):
        out = requests.post(
            endpoint.url + "/v1/uploads", data=BODY, timeout=30, headers={"Authorization": f"Bearer {key}"}
        ).json()
        ref = db.collection("uploads").document(out["id"])
        requests.put(out["upload_url"], data=CLIP, headers={"Content-Type": "video/mp4"}, timeout=30)
        landed = time.perf_counter()
        while ref.get().to_dict()["state"] != "completed":
            if time.perf_counter() - landed > 30:
                raise RuntimeError(f"{out['id']} not completed 30 s after its PUT")
        results.append((time.perf_counter() - landed) * 1000)
    return sorted(results)


def delivery_messages(db, receiver_url: str, count: int, spread: int = 1) -> list[str]:
    """`spread` webhook endpoints of ws_bench on the receiver, and `count` delivery pushes to
    them in turn (what the fan-out queues), each a distinct event with a realistic body. Spread
    over EVENT_CONCURRENCY endpoints, the per-endpoint cap (lib/webhooks/pushes.py) never binds: (f)
    measures a delivery's cost, not one endpoint's share."""
    import base64

    from lib.webhooks import endpoints, fanout

    hooks = [
        endpoints.create_endpoint(db, "ws_bench", "live", receiver_url, True, datetime.now(UTC)) for _ in range(spread)
    ]
    now = datetime.now(UTC).replace(microsecond=0)
    bodies = []
    for n in range(count):
        upload_id = f"upl_{n:032x}"
        event = {
            "type": "upload.completed",
            "timestamp": f"{now:%Y-%m-%dT%H:%M:%SZ}",
            "data": {
                "id": upload_id,
                "status": "completed",
                "source_url": f"https://cdn.example/uploads/ws_bench/{n:032x}.mp4",
                "content_type": "video/mp4",
                "size_bytes": 1048576,
                "created_at": f"{now:%Y-%m-%dT%H:%M:%SZ}",
                "expires_at": f"{now:%Y-%m-%dT%H:%M:%SZ}",
                "completed_at": f"{now:%Y-%m-%dT%H:%M:%SZ}",
                "crc32c": "AAAAAA==",
                "md5": "1B2M2Y8AsgTpgAmY7PhCfg==",
            },
        }
        attributes = {
            "kind": "delivery",
            "endpoint_id": hooks[n % spread].id,
            "upload_id": upload_id,
            "event_id": fanout.event_id(upload_id, "upload.completed"),
            "event_type": "upload.completed",
        }
        bodies.append(
            json.dumps(
                {
                    "message": {
                        "attributes": attributes,
                        "data": base64.b64encode(json.dumps(event).encode()).decode(),
                        "messageId": str(n),
                        "publishTime": now.isoformat(),
                    },
                    "subscription": "bench",
                    "deliveryAttempt": 1,
                }
            )
        )
    return bodies


def webhook_latency(endpoint: emulators.Service, key: str, receiver, runs: int = 100) -> list[float]:
    """PUT answered -> the receiver has the upload.completed request: storage event, state
    change, event message, fan-out, delivery message, signed POST; ms for each of `runs`."""
    results = []
    for _ in range(runs):
        out = requests.post(
            endpoint.url + "/v1/uploads", data=BODY, timeout=30, headers={"Authorization": f"Bearer {key}"}
        ).json()
        requests.put(out["upload_url"], data=CLIP, headers={"Content-Type": "video/mp4"}, timeout=30)
        landed = time.monotonic()
        got = receiver.wait_for(1, timeout=30, where=lambda item, upload=out["id"]: upload.encode() in item.body)
        if not got:
            raise RuntimeError(f"no webhook for {out['id']} 30 s after its PUT")
        results.append((got[0].at - landed) * 1000)
    return sorted(results)


STEPS = (  # (label, frame prefixes): the steps of a request inside our function
    ("GCS session initiation (`mint_session`: library and network)", ("mint_session (",)),
    ("upload record (`lifecycle.create_record`: library and network)", ("create_record (",)),
    ("request log line (`logs.emit`)", ("emit (",)),
    ("request id", ("_request_id (",)),
    ("API key lookup (`authenticate`, cached)", ("authenticate (",)),
    ("body reading, JSON, validation", ("read_body (", "parse_json_object (", "validate_upload_request (")),
    (
        "content type, extension, id and object name, times",
        (
            "normalize_content_type (",
            "choose_extension (",
            "new_upload (",
            "lifetime (",
            "rfc3339 (",
            "source_url (",
            "new_fields (",
        ),
    ),
)


def profile(service: emulators.Service, key: str, seconds: int = 8) -> tuple[int, list[tuple[str, float]]]:
    """Where a request's time goes inside our function under load: py-spy samples of
    the worker during (a) at concurrency 8, attributed inclusively to our steps."""
    out = Path(service.log_path).with_suffix(".pyspy.txt")
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "-p",
            str(worker_pid(service)),
            "-d",
            str(seconds),
            "-r",
            "250",
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        load(service.url, "/v1/uploads", key, 8, 400, "none")
    spy.wait(timeout=60)
    if not out.exists():
        return 0, []
    inside, steps = 0, {label: 0 for label, _ in STEPS}
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any(f.startswith("uploads (") and "main.py" in f for f in frames):
            continue
        inside += int(count)
        for label, prefixes in STEPS:
            if any(f.startswith(prefixes) for f in frames):
                steps[label] += int(count)
                break
    if not inside:
        return 0, []
    rows = [(label, 100 * n / inside) for label, n in steps.items()]
    rows.append(
        ("everything else in `uploads()` (routing, headers, the response)", 100 - sum(share for _, share in rows))
    )
    return inside, rows


def main() -> int:
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    scale = float(os.environ.get("BENCH_SCALE", "1.0"))
    counts = {1: int(300 * scale), 8: int(1200 * scale), 32: int(1600 * scale)}
    log_dir = emulators.new_log_dir("framelane-bench-")
    services: list[emulators.Service] = []
    from dev.oidc_issuer import Issuer

    issuer = Issuer()
    receiver = None
    try:
        # Only PUTs finalize objects, so only the completion-latency runs make events.
        stack = emulators.start_stack(log_dir, PROJECT, BUCKET, events=(TOPIC, SUBSCRIPTION))
        services += stack.started
        firestore_emulator, storage_emulator, pubsub = stack.firestore, stack.storage, stack.pubsub
        assert pubsub is not None  # events on: start_stack started it
        # The webhooks topic, with no subscription until (g): until then the event messages
        # the endpoint and the floor publish go nowhere, and no fan-out runs beside a measurement.
        emulators.pubsub_call(pubsub, "PUT", f"projects/{PROJECT}/topics/{WEBHOOKS_TOPIC}", ok=(200, 409))
        # One receiver (a thread of this process) for the endpoint's and the floor's POSTs alike.
        receiver = Receiver()
        env = emulators.function_env(
            firestore_emulator,
            storage_emulator,
            PROJECT,
            BUCKET,
            stack.redis,
            **issuer.env(),
            PUBSUB_EMULATOR_HOST=pubsub.extra["host"],
            WEBHOOKS_TOPIC=WEBHOOKS_TOPIC,
            WEBHOOK_ALLOW_PRIVATE_TARGETS="true",
            FLOOR_RECEIVER=f"127.0.0.1:{receiver.port}",
        )
        db = emulators.firestore_client_for(firestore_emulator, PROJECT)
        key = _make_key(db)
        # Limits on, as deployed: every create pays for its admit (the floor has none), under figures
        # this run never reaches.
        from lib.limits import quotas
        from lib.platform import config

        for workspace in ("ws_bench", "ws_isolation"):
            quotas.set_limits(db, workspace, config.MAX_CREATES_PER_MINUTE, config.MAX_PENDING_UPLOADS)

        endpoint = emulators.start_function(env, log_dir, name="bench-endpoint")
        # The webhook pushes' function, as deployed: (f) and (g) go through it.
        deliveries = emulators.start_function(env, log_dir, name="bench-deliveries", target="deliveries")
        floor = emulators.start_function(env, log_dir, name="bench-floor", source_file="bench/floor.py", target="floor")
        services += [endpoint, deliveries, floor]
        _prepare_replays(endpoint, db, key)
        for service, path in ((endpoint, "/v1/uploads"), (floor, "/a")):  # warm: connections, caches
            load(service.url, path, key, 8, 300, "none")

        results: dict[tuple[str, int], dict[str, list[dict]]] = {}
        for scenario, (endpoint_path, floor_path, idem) in SCENARIOS.items():
            for concurrency in CONCURRENCY:
                runs = results[(scenario, concurrency)] = {"endpoint": [], "floor": []}
                for _ in range(rounds):  # interleaved: endpoint, floor, endpoint, floor, ...
                    runs["endpoint"].append(
                        measured(endpoint, endpoint_path, key, concurrency, counts[concurrency], idem)
                    )
                    runs["floor"].append(measured(floor, floor_path, key, concurrency, counts[concurrency], idem))
                print(_row(scenario, concurrency, runs), file=sys.stderr)

        # (d) storage events: each delivery completes a fresh pending upload.
        event_count = counts[8]
        event_runs = {"endpoint": [], "floor": []}
        for _ in range(rounds):
            for name, service, path, collection, token in (
                ("endpoint", endpoint, "/internal/storage-events", "uploads", issuer.events_token()),
                ("floor", floor, "/d", "floor_uploads", key),
            ):
                bodies = pending_events(db, collection, event_count, storage_emulator.url)
                event_runs[name].append(measured(service, path, token, EVENT_CONCURRENCY, event_count, "none", bodies))
        print(_row("d", EVENT_CONCURRENCY, event_runs), file=sys.stderr)
        # (e) through the relay: only now, over a fresh subscription, so the events of (d)'s seeded and
        # placed objects (fake-gcs-server publishes every bucket's) are never delivered beside it.
        emulators.pubsub_call(pubsub, "DELETE", f"projects/{PROJECT}/subscriptions/{SUBSCRIPTION}")
        emulators.create_topic_and_subscription(pubsub, PROJECT, TOPIC, SUBSCRIPTION)
        services.append(
            emulators.start_relay(
                pubsub,
                f"projects/{PROJECT}/subscriptions/{SUBSCRIPTION}",
                endpoint.url + "/internal/storage-events",
                issuer,
                log_dir,
            )
        )
        latency = completion_latency(endpoint, db, key)

        # (f) webhook deliveries: each push signs and POSTs one event to the receiver.
        delivery_runs = {"endpoint": [], "floor": []}
        for _ in range(rounds):
            for name, service, path, token in (
                ("endpoint", deliveries, "/internal/webhooks", issuer.webhooks_token()),
                ("floor", floor, "/f", key),
            ):
                bodies = delivery_messages(db, receiver.url, event_count, spread=EVENT_CONCURRENCY)
                delivery_runs[name].append(
                    measured(service, path, token, EVENT_CONCURRENCY, event_count, "none", bodies)
                )
        print(_row("f", EVENT_CONCURRENCY, delivery_runs), file=sys.stderr)
        # (g) the whole path to the receiver: one endpoint, the webhooks subscription and its relay now.
        from lib.webhooks import endpoints

        for hook in endpoints.list_endpoints(db, "ws_bench"):
            endpoints.remove_endpoint(db, hook.id)
        endpoints.create_endpoint(db, "ws_bench", "live", receiver.url, True, datetime.now(UTC))
        receiver.received.clear()
        emulators.create_topic_and_subscription(pubsub, PROJECT, WEBHOOKS_TOPIC, f"{WEBHOOKS_TOPIC}-relay")
        services.append(
            emulators.start_relay(
                pubsub,
                f"projects/{PROJECT}/subscriptions/{WEBHOOKS_TOPIC}-relay",
                deliveries.url + "/internal/webhooks",
                issuer,
                log_dir,
                name="push-relay-webhooks",
                caller="webhooks",
            )
        )
        hook_latency = webhook_latency(endpoint, key, receiver)
        # (h) the upload command beside google-cloud-storage's own resumable upload.
        uploads = command.measure(endpoint.url, key, storage_emulator.url, BUCKET, rounds)
        print(
            f"h command {uploads['command_mibs']:.1f} MiB/s, floor {uploads['floor_mibs']:.1f} MiB/s, "
            f"ratio {uploads['ratio']:.2f}, peak RSS {uploads['peak_rss_mib']:.0f} MiB",
            file=sys.stderr,
        )
        # (i) one sweep run's rate of settling expired uploads, by worker count.
        sweeps = sweep.measure(firestore_emulator, storage_emulator.url, PROJECT, BUCKET)
        print(
            "i sweep " + ", ".join(f"{r['workers']} workers {r['per_second']:.0f}/s" for r in sweeps), file=sys.stderr
        )
        # (j) another workspace's creates while one workspace's receiver dribbles 32 deliveries, at a
        # deliveries function with the threads it is deployed with (deliveries_concurrency, 40).
        deliveries_40 = emulators.start_function(
            dict(env, THREADS=str(isolation.THREADS)), log_dir, name="bench-deliveries-deployed", target="deliveries"
        )
        services.append(deliveries_40)
        dribbler = isolation.Dribbler()
        try:
            slow = [body for _ in range(isolation.DELIVERIES) for body in delivery_messages(db, dribbler.url, 1)]
            other = _make_key(db, "ws_isolation")
            isolated = isolation.measure(
                lambda: load(endpoint.url, "/v1/uploads", other, 8, counts[8], "none"),
                lambda: load(
                    deliveries_40.url,
                    "/internal/webhooks",
                    issuer.webhooks_token(),
                    isolation.DELIVERIES,
                    isolation.DELIVERIES,
                    "none",
                    slow,
                ),
                dribbler,
                rounds,
            )
        finally:
            dribbler.stop()
        print(
            f"j create p99 {isolated['quiet_p99']:.1f} ms quiet, {isolated['busy_p99']:.1f} ms beside "
            f"{isolated['held']} dribbled deliveries: ratio {isolated['ratio']:.2f}",
            file=sys.stderr,
        )

        # (k) the limiter's own cost.
        admits = limiter.measure(stack.redis.url, db)
        print(f"k admit p50 {admits['p50_ms']:.2f} ms, {admits['per_second']:.0f}/s", file=sys.stderr)
        # (m) what a check reads.
        checks = media_reads.measure()
        print(
            f"m check wall median {checks['wall_median']:.0f} ms, child peak RSS max {checks['rss_max']:.0f} MiB; "
            + "; ".join(
                f"{row['name']}: {row['reads']} reads, {row['read']:,} B, {row['cpu_ms']:.0f} ms CPU"
                for row in checks["long"]
            ),
            file=sys.stderr,
        )
        refused = [line for line in emulators_lines(endpoint) if line.get("limited") or line.get("limiter")]
        assert not refused, refused[:3]  # the figures were never reached, the store always answered

        seen = len(emulators_lines(endpoint))
        rss = [rss_mib(worker_pid(endpoint))]
        for _ in range(2):
            measured(endpoint, "/v1/uploads", key, 8, 10_000, "none")
            rss.append(rss_mib(worker_pid(endpoint)))
        # What else the worker served meanwhile (a relay's late pushes would be in the figure).
        beside = collections.Counter(
            (line.get("httpRequest") or {}).get("requestUrl", "?") for line in emulators_lines(endpoint)[seen:]
        )
        del beside["/v1/uploads"]
        print(f"memory {', '.join(f'{x:.1f}' for x in rss)} MiB; beside the creates: {dict(beside)}", file=sys.stderr)
        where = profile(endpoint, key)
        reference = in_process_reference(env)
        imports = import_times()
        cold = cold_starts(env, key, log_dir)
        report = _report(
            results,
            reference,
            imports,
            cold,
            rss,
            where,
            rounds,
            counts,
            event_runs,
            event_count,
            latency,
            delivery_runs,
            hook_latency,
            uploads,
            sweeps,
            isolated,
            admits,
            checks,
        )
    finally:
        for service in reversed(services):
            service.stop()
        issuer.stop()
        if receiver is not None:
            receiver.stop()
    print(report)
    _write(report)
    emulators.finish_log_dir(log_dir, True)  # an exception above leaves them in place
    return 0


def _corpus_paragraph(corpus: dict) -> str:
    misses = corpus["misses"]
    shown = "; ".join(f"`{m['path']}` ({m['reference']}, {m['type']}: {m['how']})" for m in misses[:12])
    share = 100 * corpus["clean_agree"] / max(1, corpus["clean"])
    return (
        f"**(n) media truth on a corpus** (bench/corpus.py: {corpus['files']:,} files, {corpus['real']:,} of "
        "them other projects' published test media, the rest made by Debian's ffmpeg, each checked through the "
        "sandboxed child and by the reference tools: ffprobe and a full decode by ffmpeg, Pillow, fontTools): "
        f"of the {corpus['clean']:,} files the reference tools open and decode cleanly, "
        f"**{corpus['clean_agree']:,}** are `completed` with their facts (**{share:.1f} %**; target ≥ 99 %); "
        f"of the {corpus['broken']:,} they cannot open, **{corpus['broken_rejected']:,}** are `rejected` "
        f"(target: all); of the {corpus['cut']:,} whose frames end before three quarters of the duration ffprobe "
        f"states, **{corpus['cut_rejected']:,}** are `rejected` (target: all); {corpus['complaints']:,} open "
        "with complaints when decoded whole (damaged frames), "
        f"{corpus['complaints_completed']:,} of them completed. "
        + (f"The {len(misses)} that disagree: {shown}. " if misses else "None disagrees. ")
        + f"**Fuzzing the real files**: {corpus['fuzz']['checks']:,} truncations and mutations of "
        f"{corpus['fuzz']['files']} of them through the child, every one ending in sane facts or a refusal "
        f"({corpus['fuzz'].get('completed', 0):,} completed, {corpus['fuzz'].get('unreadable_media', 0):,} "
        f"unreadable_media, {corpus['fuzz'].get('content_mismatch', 0):,} content_mismatch)."
    )


def emulators_lines(service: emulators.Service) -> list[dict]:
    """The served function's JSON log lines."""
    return [json.loads(raw) for raw in service.log_path.read_text().splitlines() if raw.startswith("{")]


def _make_key(db, workspace: str = "ws_bench") -> str:
    from lib.api import auth

    return auth.create_key(db, workspace, "bench", "live")[0]


def _prepare_replays(endpoint: emulators.Service, db, key: str) -> None:
    """One completed Idempotency-Key to replay, and the floor's stored response beside it."""
    first = requests.post(
        endpoint.url + "/v1/uploads",
        data=BODY,
        timeout=30,
        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": REPLAY_KEY},
    )
    assert first.status_code == 201, first.text
    db.collection("floor").document("replay").set({"response": first.json()})


def _row(scenario: str, concurrency: int, runs: dict) -> str:
    e, f = runs["endpoint"], runs["floor"]
    return (
        f"{scenario} c={concurrency:<2} endpoint {median_of(e, 'rps'):7.0f} req/s "
        f"p50 {median_of(e, 'p50'):6.2f} ms | "
        f"floor {median_of(f, 'rps'):7.0f} req/s p50 {median_of(f, 'p50'):6.2f} ms | "
        f"p50 ratio {median_of(e, 'p50') / median_of(f, 'p50'):.2f}, throughput ratio "
        f"{median_of(e, 'rps') / median_of(f, 'rps'):.2f}"
    )


def _cells(concurrency: int, runs: dict) -> str:
    e, f = runs["endpoint"], runs["floor"]
    return (
        f"| {concurrency} | {median_of(e, 'rps'):.0f} | {median_of(e, 'p50'):.2f} | {median_of(e, 'p95'):.2f} "
        f"| {median_of(e, 'p99'):.2f} | {median_of(f, 'rps'):.0f} | {median_of(f, 'p50'):.2f} "
        f"| {median_of(f, 'p95'):.2f} | {median_of(f, 'p99'):.2f} "
        f"| **{median_of(e, 'p50') / median_of(f, 'p50'):.2f}** "
        f"| **{median_of(e, 'rps') / median_of(f, 'rps'):.2f}** "
        f"| {median_of(e, 'cpu_ms'):.2f} / {median_of(f, 'cpu_ms'):.2f} |"
    )


def _percentiles(values: list[float]) -> str:
    return (
        f"p50 **{values[len(values) // 2]:.0f} ms**, "
        f"p99 **{values[min(len(values) - 1, round(len(values) * 0.99) - 1)]:.0f} ms**, max {values[-1]:.0f} ms"
    )


HEADER = (
    "| concurrency | endpoint req/s | p50 ms | p95 ms | p99 ms | floor req/s | p50 ms | p95 ms | p99 ms "
    "| p50 ratio | throughput ratio | CPU ms/req endpoint / floor |"
)
RULE = "|---|---|---|---|---|---|---|---|---|---|---|---|"


def _report(
    results,
    reference,
    imports,
    cold,
    rss,
    where,
    rounds,
    counts,
    event_runs,
    event_count,
    latency,
    delivery_runs,
    hook_latency,
    uploads,
    sweeps,
    isolated,
    admits,
    checks,
) -> str:
    cores = os.cpu_count()
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `make bench` on {platform.machine()}, "
        f"{cores} cores, {mem:.0f} GiB, Python {platform.python_version()}; emulators on loopback; "
        f"{rounds} interleaved rounds per cell (median shown), {counts[1]}/{counts[8]}/{counts[32]} requests per "
        f"round at concurrency 1/8/32.",
        "",
    ]
    for scenario in SCENARIOS:
        lines += [
            f"**{TITLES[scenario]}**",
            "",
            HEADER,
            RULE,
            *(_cells(concurrency, results[(scenario, concurrency)]) for concurrency in CONCURRENCY),
            "",
        ]
    lines += [
        f"**(d) storage events** ({event_count} deliveries per round at concurrency {EVENT_CONCURRENCY}, each "
        "completing a fresh pending upload whose object (a one-second MP4, 5.4 KB) landed in the staging "
        "bucket: the object read and checked, placed in the served bucket by a rewrite, the record written, "
        "the webhook event published, the staging object deleted; the floor: the pushed JSON read, one "
        "Firestore get, the same ranged read and a decode of each track's first frame"
        " (PyAV, in-process: no sandbox), the same rewrite, one update conditioned on the "
        "get, the same publish and delete)",
        "",
        HEADER,
        RULE,
        _cells(EVENT_CONCURRENCY, event_runs),
        "",
        f"**(e) completion latency** (PUT answered to the record `completed`, through fake-gcs-server's event, "
        f"the Pub/Sub emulator, the relay and the function, which checks the bytes and places them; "
        f"{len(latency)} uploads of a one-second MP4, one at a time): {_percentiles(latency)}.",
        "",
        f"**(f) webhook deliveries** ({event_count} delivery pushes per round at concurrency {EVENT_CONCURRENCY}, "
        "each a distinct event to one of 16 endpoints on a local receiver (so the per-endpoint cap of 4 "
        "never binds): the token checked, the endpoint read (cached), the URL's rules checked, the body "
        "signed, POSTed (on a connection kept alive from an earlier delivery when the receiver allows), the "
        "attempt recorded; the floor: the pushed JSON read and "
        "the same POST made on a new connection, nothing else)",
        "",
        HEADER,
        RULE,
        _cells(EVENT_CONCURRENCY, delivery_runs),
        "",
        f"**(g) webhook latency** (PUT answered to the receiver's first byte of `upload.completed`: the storage "
        "event, the state change, the event message, the fan-out, the delivery message, the signed POST; every "
        f"Pub/Sub hop through the emulator and the local relay; {len(hook_latency)} uploads one at a time): "
        f"{_percentiles(hook_latency)}.",
        "",
        f"**(h) the upload command** (`python -m client upload`, a {command.SIZE // command.MIB} MiB file in "
        f"{command.CHUNK // command.MIB} MiB chunks to fake-gcs-server, {uploads['rounds']} interleaved rounds, "
        "median; the command timed as a whole process, start, CRC32C, `POST /v1/uploads`, the service's check "
        "and exit included; the floor `Blob.upload_from_filename` with the same chunk size to the staging bucket "
        "and the placement (a rewrite, the staging object deleted), timed around those calls alone): "
        f"{uploads['command_mibs']:.1f} MiB/s against {uploads['floor_mibs']:.1f} MiB/s, ratio "
        f"**{uploads['ratio']:.2f}**; the command's peak RSS **{uploads['peak_rss_mib']:.0f} MiB** (target: chunk "
        f"+ 80 MiB = {command.CHUNK // command.MIB + 80} MiB).",
        "",
        f"**(i) the sweep** (one run over {sweeps[0]['count']} pending uploads past expires_at, seeded into a "
        "database of their own; each settled `expired`: an object lookup, the session's DELETE, a second "
        "lookup, a conditional update; in this process, as the function runs it): "
        + ", ".join(f"{r['workers']} workers **{r['per_second']:.0f}/s** ({r['seconds']:.1f} s)" for r in sweeps)
        + ".",
        "",
        f"**(j) one tenant's slow receiver against another's creates** ({isolation.DELIVERIES} deliveries to "
        "a receiver that answers its status and then a header byte a second, held to their 10 s deadline by "
        f"the deliveries function, while another workspace creates at concurrency 8, {counts[8]} requests; "
        f"median of {rounds} rounds): create p99 **{isolated['busy_p99']:.1f} ms** beside them against "
        f"**{isolated['quiet_p99']:.1f} ms** without, ratio **{isolated['ratio']:.2f}** (target ≤ 1.5).",
        "",
        "**(k) the limiter** (lib/limits/counters.py's admit, the Lua script that decides a create, against the local "
        "redis-server; every create in (a)-(c) and (j) paid for one, under figures it never reached): "
        f"p50 **{admits['p50_ms']:.2f} ms**, p99 {admits['p99_ms']:.2f} ms, one at a time from this process; "
        f"one Redis core runs it **{admits['per_second']:,.0f} times a second** (redis-benchmark, 50 "
        "connections, a random upload id each).",
        "",
        f"**(m) what a check costs** (lib/media/ through its sandboxed child, over the {len(checks['rows']) - 2} "
        "fixtures in tests/media/ and a 2-hour MP4 with a video and eight 48 kHz AAC tracks, its 11 MB index "
        "last and then first; bytes and reads counted by the parent, CPU time and peak memory the child's): "
        + "; ".join(
            f"{kind} CPU median **{k['cpu_median']:.0f} ms**, max {k['cpu_max']:.0f} ms, bytes read median "
            f"{k['read_median']:,.0f}, max {k['read_max']:,} in at most {k['reads_max']} reads"
            for kind, k in checks["per_kind"].items()
        )
        + "; "
        + "; ".join(
            f"the 2-hour file, {row['name'][len('2 h, 8 audio tracks, ') :]}: **{row['reads']} reads, "
            f"{row['read'] / 2**20:.1f} MiB**, {row['cpu_ms']:.0f} ms CPU"
            for row in checks["long"]
        )
        + f". A check's wall time, child start-up included: median **{checks['wall_median']:.0f} ms**. The "
        f"child's peak RSS: at most **{checks['rss_max']:.0f} MiB** (the budget: 64 MiB in 64 reads, 512 MiB of "
        "address space, 4 s of CPU).",
        "",
        _corpus_paragraph(checks["corpus"]),
        "",
    ]
    lines += [
        "**Reference**: the floor's calls made in-process, without HTTP or a framework (p50, concurrency 1): "
        + ", ".join(f"({s}) {reference[s]:.2f} ms" for s in SCENARIOS)
        + ".",
        "",
        f"**Import** (fresh processes, median of 7): the {imports['modules']} library modules `main` loads take "
        f"{imports['libraries']:.0f} ms; `main` on top of them {imports['ours']:.0f} ms (our modules and "
        f"our pydantic models, from bytecode as the libraries are): `import main` / libraries = "
        f"**{imports['main'] / imports['libraries']:.2f}**. Compiling our source first (no bytecode, "
        f"`PYTHONDONTWRITEBYTECODE`), `main` takes {imports['ours_compiling']:.0f} ms on top.",
        "",
        "**Cold start** (process start to the first 201, key cache and connections cold): "
        + ", ".join(f"{c:.0f} ms" for c in cold)
        + f"; median {statistics.median(cold):.0f} ms.",
        "",
        f"**Memory** (gunicorn worker RSS): {rss[0]:.1f} MiB warm, {rss[1]:.1f} MiB after 10,000 more requests, "
        f"{rss[2]:.1f} MiB after 20,000.",
        "",
        f"**Where a request's time goes** inside our function (py-spy, {where[0]} samples of the worker during "
        "(a) at concurrency 8; waiting counts, so the GCS call dominates):",
        "",
        "| step | share |",
        "|---|---|",
        *(f"| {name} | {share:.1f}% |" for name, share in where[1]),
        "",
    ]
    return "\n".join(lines)


def _write(report: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "<!-- bench:begin -->\n<!-- bench:end -->\n"
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{report}\n{end}{tail}")
    print(f"\nWritten to {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
