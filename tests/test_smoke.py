"""`make smoke` (dev/smoke.py) against the local deployment: every step it can show here passes, the
others say why they are skipped, it prints neither the key nor an upload URL, and a deployment whose
storage events do not arrive fails it at that step."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def smoke(url: str, key: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FRAMELANE_API_KEY": key}
    return subprocess.run([sys.executable, "-m", "dev.smoke", "--api-url", url, "--emulators", "--event-seconds", "3",
                           *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_the_smoke_walks_the_local_deployment(event_path, make_key):
    key, _ = make_key(mode="test")
    done = smoke(event_path["function"].url, key)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    steps = {line[6:].split(" (")[0].split(":")[0]: line[:6].strip() for line in lines[:-1]}  # "ok    name (...)"
    assert steps == {"health": "ok", "create": "ok", "put": "ok", "completed by the storage event": "ok",
                     "source_url": "ok", "the CDN serves nothing else": "skip", "a rejected impostor": "ok",
                     "cancel": "ok"}, lines
    assert "skip  the CDN serves nothing else: the local stand-in for the CDN is fake-gcs-server" in done.stdout
    assert "media 1.0 s 64x48 h264" in done.stdout and lines[-1] == "smoke: the deployment works"
    assert key not in done.stdout + done.stderr and "upload_id=" not in done.stdout + done.stderr


def test_without_storage_events_the_smoke_fails_at_that_step(served_default, make_key):
    """served_default has no relay: only the smoke's own GET completes the upload, and it says so."""
    key, _ = make_key(mode="test")
    done = smoke(served_default.url, key)
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1].startswith("FAIL  completed by the storage event ("), done.stdout
    assert "by the GET itself" in done.stdout and key not in done.stdout + done.stderr


def test_the_smoke_needs_a_key_and_a_sane_bound(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FRAMELANE_API_KEY"}
    done = subprocess.run([sys.executable, "-m", "dev.smoke", "--api-url", "http://127.0.0.1:9"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no API key" in done.stderr
    done = subprocess.run([sys.executable, "-m", "dev.smoke", "--api-url", "http://127.0.0.1:9", "--api-key", "k",
                           "--event-seconds", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--event-seconds must be 3 or more" in done.stderr
