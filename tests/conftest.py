"""Fixtures: real emulators for the session, the function in-process and served.

- `backends`: the Firestore emulator (a JVM) and fake-gcs-server, started once
  and stopped by PID; the process environment points the libraries at them
  before `main` is first imported.
- `client`: the API function (`uploads`) through functions-framework's Flask
  app, in-process; `deliveries_client` the webhooks function (`deliveries`).
- `shipped`: the archive terraform uploads (function.tf's includes and
  excludes), unzipped and installed into a fresh virtualenv from its
  requirements.txt alone, on this Python, as Cloud Functions builds it.
- `serve`: the function served by `functions-framework` (gunicorn, threads)
  from `shipped`, as deployed, with per-test environment overrides; stopped
  by PID. `served_default` and `event_path` serve `shipped` too, so every
  served-function test runs the archive that ships: a file it leaves out, or
  a dependency only the dev requirements bring, fails them.
- `event_path`: storage events and webhooks end to end, apart from the rest
  so no other test's PUT completes behind its back: the Pub/Sub emulator, a
  second fake-gcs-server that publishes each finalized object there, a
  served function on it (webhooks on, loopback receivers allowed) and its
  deliveries function, and push relays (dev/relay.py) for the storage events
  (to the first), the webhooks topic (short backoff, dead-lettering after
  WEBHOOK_MAX_ATTEMPTS) and its dead letters (to the second).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import uuid
import venv
import zipfile
from pathlib import Path
from unittest import mock

import pytest
import requests
import yaml

from dev import emulators
from tests.helpers import SESSION_KEYS

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "framelane-test"
BUCKET = "framelane-test-uploads"
STAGING_BUCKET = emulators.staging_bucket(BUCKET)
# The public contract, kept beside the code (contract/); tests/api/test_contract.py holds it to
# the shared original wherever that is beside the repository.
SEED = ROOT / "contract" / "uploads-openapi.yaml"
SHARED_SEED = ROOT.parent / "shared" / "seed"
EVENTS_TOPIC, EVENTS_SUBSCRIPTION = "storage-events", "storage-events-relay"
WEBHOOKS_TOPIC, WEBHOOKS_DEAD_LETTER_TOPIC = "webhooks", "webhooks-dead-letter"
WEBHOOK_MAX_ATTEMPTS = 6


_LOG_DIRS: list[Path] = []


@pytest.fixture(scope="session")
def log_dir() -> Path:
    path = emulators.new_log_dir("framelane-test-")
    _LOG_DIRS.append(path)
    return path


def pytest_configure(config):
    """A run started in the background of a non-interactive shell inherits SIGINT ignored, and so
    would every command the tests start: Python then never raises KeyboardInterrupt, and Ctrl-C
    could not be tested. Handled here (in the main thread, before any test starts a thread), it is
    reset to the default in every child at exec, as from a terminal. (Resetting it in the child
    instead, with preexec_fn, can deadlock the fork while the tests' server threads run.)"""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionfinish(session, exitstatus):
    """The emulators' and functions' logs go when every test passed; a failure keeps them (and says where)."""
    for path in _LOG_DIRS:
        emulators.finish_log_dir(path, exitstatus == 0)


@pytest.fixture(scope="session")
def oidc_issuer():
    """Stands in for Google's token signer: the sweep's tokens are verified against it."""
    from dev.oidc_issuer import Issuer

    issuer = Issuer()
    yield issuer
    issuer.stop()


@pytest.fixture(scope="session")
def backends(log_dir, oidc_issuer):
    stack = emulators.start_stack(log_dir, PROJECT, BUCKET)
    firestore, storage = stack.firestore, stack.storage
    try:
        env = emulators.function_env(firestore, storage, PROJECT, BUCKET, stack.redis, **oidc_issuer.env())
        for name in (
            "FIRESTORE_EMULATOR_HOST",
            "STORAGE_EMULATOR_HOST",
            "GOOGLE_CLOUD_PROJECT",
            "UPLOAD_BUCKET",
            "STAGING_BUCKET",
            "CDN_BASE_URL",
            "LIMITS_REDIS_URL",
            *oidc_issuer.env(),
        ):
            os.environ[name] = env[name]
        # The in-process app forgets key lookups at once, so tests that revoke a
        # key see it refused straight away; served functions keep the deployed
        # default (tests/api/test_served.py covers the cache itself).
        os.environ["API_KEY_CACHE_TTL_SECONDS"] = "0"
        yield {"firestore": firestore, "storage": storage, "redis": stack.redis, "env": env}
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def shipped(tmp_path_factory) -> tuple[Path, Path]:
    """(source dir, the virtualenv's bin) of the archive as terraform zips it, installed as shipped."""
    from tests.hcl import archive_files

    tmp = tmp_path_factory.mktemp("shipped")
    zip_path = tmp / "function-source.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in archive_files():
            zf.write(ROOT / name, name)
    source = tmp / "source"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(source)
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    install = subprocess.run(
        [
            str(env_dir / "bin/python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(source / "requirements.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    return source, env_dir / "bin"


def start_shipped(shipped: tuple[Path, Path], env: dict, log_dir: Path, **kwargs) -> emulators.Service:
    """A function served from the shipped archive: nothing of this checkout's is importable."""
    source, bin_dir = shipped
    env = {name: value for name, value in env.items() if name != "PYTHONPATH"}
    return emulators.start_function(env, log_dir, source_dir=source, bin_dir=bin_dir, **kwargs)


@pytest.fixture(scope="session")
def event_path(backends, log_dir, oidc_issuer, shipped):
    stack = emulators.start_stack(
        log_dir,
        PROJECT,
        BUCKET,
        events=(EVENTS_TOPIC, EVENTS_SUBSCRIPTION),
        firestore=backends["firestore"],
        storage_name="fake-gcs-events",
        redis=backends["redis"],
    )
    pubsub, storage = stack.pubsub, stack.storage
    assert pubsub is not None  # events on: start_stack started it
    started = list(stack.started)
    try:
        hooks, dead_letters = emulators.create_webhook_topics(
            pubsub, PROJECT, WEBHOOKS_TOPIC, WEBHOOKS_DEAD_LETTER_TOPIC
        )
        env = emulators.function_env(
            backends["firestore"],
            storage,
            PROJECT,
            BUCKET,
            backends["redis"],
            **oidc_issuer.env(),
            PUBSUB_EMULATOR_HOST=pubsub.extra["host"],
            WEBHOOKS_TOPIC=WEBHOOKS_TOPIC,
            WEBHOOK_ALLOW_PRIVATE_TARGETS="true",
        )
        function = start_shipped(shipped, env, log_dir, name="function-events")
        started.append(function)
        # The webhook pushes go to the deliveries function, as deployed (terraform/webhooks.tf).
        deliveries = start_shipped(shipped, env, log_dir, name="function-deliveries", target="deliveries")
        started.append(deliveries)
        relay = emulators.start_relay(
            pubsub,
            f"projects/{PROJECT}/subscriptions/{EVENTS_SUBSCRIPTION}",
            function.url + "/internal/storage-events",
            oidc_issuer,
            log_dir,
        )
        started.append(relay)
        started.append(
            emulators.start_relay(
                pubsub,
                hooks,
                deliveries.url + "/internal/webhooks",
                oidc_issuer,
                log_dir,
                name="push-relay-webhooks",
                caller="webhooks",
                extra_args=(
                    "--min-backoff",
                    "1",
                    "--max-backoff",
                    "2",
                    "--max-attempts",
                    str(WEBHOOK_MAX_ATTEMPTS),
                    "--dead-letter-topic",
                    f"projects/{PROJECT}/topics/{WEBHOOKS_DEAD_LETTER_TOPIC}",
                ),
            )
        )
        started.append(
            emulators.start_relay(
                pubsub,
                dead_letters,
                deliveries.url + "/internal/webhook-dead-letters",
                oidc_issuer,
                log_dir,
                name="push-relay-dead-letters",
                caller="webhooks",
            )
        )
        yield {
            "pubsub": pubsub,
            "storage": storage,
            "function": Served(function),
            "deliveries": Served(deliveries),
            "relay": relay,
            "env": env,
        }
    finally:
        for service in reversed(started):
            service.stop()


@pytest.fixture(scope="session")
def db(backends):
    from google.cloud import firestore

    return firestore.Client(project=PROJECT)


@pytest.fixture(scope="session")
def gcs(backends):
    from google.cloud import storage

    return storage.Client(project=PROJECT)


@pytest.fixture(scope="session")
def app(backends):
    import functions_framework

    return functions_framework.create_app("uploads", str(ROOT / "main.py"))


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def deliveries_app(backends):
    """The webhooks function (`deliveries`), in-process: the webhook pushes' routes."""
    import functions_framework

    return functions_framework.create_app("deliveries", str(ROOT / "main.py"))


@pytest.fixture
def deliveries_client(deliveries_app):
    return deliveries_app.test_client()


@pytest.fixture
def make_key(db):
    """Create a key in a fresh workspace (or a given one); returns (key, workspace_id)."""
    from lib.api import auth

    def make(workspace: str | None = None, mode: str = "live") -> tuple[str, str]:
        workspace = workspace or f"ws_{uuid.uuid4().hex[:12]}"
        key, _ = auth.create_key(db, workspace, "pytest", mode)
        SESSION_KEYS.add(key)
        return key, workspace

    return make


@pytest.fixture
def key(make_key) -> str:
    return make_key()[0]


@pytest.fixture
def auth_headers(key) -> dict:
    return {"Authorization": f"Bearer {key}"}


class Served:
    """A function served by functions-framework, with its log for inspection."""

    def __init__(self, service: emulators.Service):
        self.service = service
        self.url = service.url
        self.session = requests.Session()

    def post(self, path: str = "/v1/uploads", **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.post(self.url + path, **kwargs)

    def log_lines(self) -> list[dict]:
        """Every JSON line the function wrote (stdout and stderr share the log)."""
        lines = []
        for raw in self.service.log_path.read_text(errors="replace").splitlines():
            if raw.startswith("{"):
                lines.append(json.loads(raw))
        return lines

    def log_text(self) -> str:
        return self.service.log_path.read_text(errors="replace")


@pytest.fixture
def serve(backends, log_dir, shipped):
    """Start a function served from the shipped archive, with environment overrides; all stopped at teardown."""
    started: list[emulators.Service] = []

    def start(drop: tuple[str, ...] = (), target: str = "uploads", **overrides: str) -> Served:
        env = dict(backends["env"], **overrides)
        for name in drop:
            env.pop(name, None)
        service = start_shipped(shipped, env, log_dir, name=f"function-{secrets.token_hex(4)}", target=target)
        started.append(service)
        return Served(service)

    yield start
    for service in started:
        service.stop()


@pytest.fixture(scope="session")
def served_default(backends, log_dir, shipped):
    """One function served from the shipped archive on the default settings, shared by the tests that only read it."""
    service = start_shipped(shipped, backends["env"], log_dir, name="function-shared")
    yield Served(service)
    service.stop()


@pytest.fixture(scope="session")
def main_module():
    """main.py, for its tables (routes, templates, handlers). It loads its settings when
    imported, so where no test has yet pointed the environment at the emulators it is imported
    under placeholder settings (it makes no client and calls nothing at import)."""
    if "main" in sys.modules:
        return sys.modules["main"]
    placeholders = {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "UPLOAD_BUCKET": BUCKET,
        "STAGING_BUCKET": STAGING_BUCKET,
        "CDN_BASE_URL": "https://cdn.invalid",
    }
    with mock.patch.dict(os.environ, {name: os.environ.get(name) or value for name, value in placeholders.items()}):
        import main
    return main


@pytest.fixture(scope="session")
def openapi_doc() -> dict:
    return yaml.safe_load((ROOT / "openapi.yaml").read_text())


@pytest.fixture(scope="session")
def seed_doc() -> dict:
    return yaml.safe_load(SEED.read_text())


def pytest_collection_modifyitems(items):
    """Tests marked `audit` look back over the whole session: run them last."""
    items.sort(key=lambda item: item.get_closest_marker("audit") is not None)
