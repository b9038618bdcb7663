"""The archive that ships, tested as shipped: the zip terraform's archive_file makes (function.tf's
`function_files`), installed into a fresh virtualenv from its requirements.txt alone, served by
functions-framework as Cloud Functions serves it, on a path of its own (fake-gcs-server publishing
its finalize events, the Pub/Sub emulator, the relay). `make smoke` then walks it: a file left out
of the archive, or a dependency only the dev requirements bring, fails here."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile

import pytest
import requests

from dev import emulators
from tests.conftest import BUCKET, PROJECT, ROOT
from tests.test_terraform import archive_files


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """(source dir, the virtualenv's bin) of the archive as terraform zips it."""
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
    install = subprocess.run([str(env_dir / "bin/python"), "-m", "pip", "install", "--quiet",
                              "--disable-pip-version-check", "-r", str(source / "requirements.txt")],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    return source, env_dir / "bin"


@pytest.fixture(scope="module")
def shipped_path(shipped, backends, log_dir, oidc_issuer):
    """Both functions served from the archive, with storage events: what a deployment runs."""
    source, bin_dir = shipped
    stack = emulators.start_stack(log_dir, PROJECT, BUCKET, events=("shipped-events", "shipped-events-relay"),
                                  firestore=backends["firestore"], storage_name="fake-gcs-shipped",
                                  redis=backends["redis"])
    started = list(stack.started)
    try:
        env = emulators.function_env(backends["firestore"], stack.storage, PROJECT, BUCKET, backends["redis"],
                                     **oidc_issuer.env())
        env.pop("PYTHONPATH", None)  # nothing of this checkout's: only what the archive holds
        function = emulators.start_function(env, log_dir, name="function-shipped", source_dir=source, bin_dir=bin_dir)
        started.append(function)
        deliveries = emulators.start_function(env, log_dir, name="function-shipped-deliveries", source_dir=source,
                                              bin_dir=bin_dir, target="deliveries")
        started.append(deliveries)
        assert stack.pubsub is not None
        started.append(emulators.start_relay(stack.pubsub, f"projects/{PROJECT}/subscriptions/shipped-events-relay",
                                             function.url + "/internal/storage-events", oidc_issuer, log_dir,
                                             name="push-relay-shipped"))
        yield {"function": function, "deliveries": deliveries}
    finally:
        for service in reversed(started):
            service.stop()


def test_the_shipped_archive_passes_the_smoke(shipped_path, make_key):
    key, _ = make_key(mode="test")
    done = subprocess.run([sys.executable, "-m", "dev.smoke", "--api-url", shipped_path["function"].url, "--emulators",
                           "--event-seconds", "3"], cwd=ROOT, env={**os.environ, "FRAMELANE_API_KEY": key},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "smoke: the deployment works"


def test_the_shipped_archive_serves_the_sweep_and_the_deliveries_function(shipped_path, oidc_issuer):
    """The sweep's token check needs google-auth's crypto; the deliveries function its own imports."""
    sweep = requests.post(shipped_path["function"].url + "/internal/sweep",
                          headers={"Authorization": f"Bearer {oidc_issuer.token()}"}, timeout=60)
    assert sweep.status_code == 200, sweep.text
    assert set(sweep.json()) == {"expired", "completed", "rejected", "failed", "more"}
    assert requests.get(shipped_path["deliveries"].url + "/health", timeout=30).status_code == 200
    refused = requests.post(shipped_path["deliveries"].url + "/internal/webhooks", json={}, timeout=30)
    assert refused.status_code == 401  # routed and checked, by the archive's own code
