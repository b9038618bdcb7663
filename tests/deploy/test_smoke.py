"""`make smoke` (dev/smoke.py) against the local deployment: every step it can show here passes, the
others say why they are skipped, it prints neither the key nor an upload URL, and a deployment whose
storage events do not arrive fails it at that step."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from dev.receiver import Receiver
from lib.webhooks import endpoints
from tests.conftest import ROOT
from tests.webhooks.test_webhooks import deliveries


def smoke(url: str, key: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FRAMELANE_API_KEY": key}
    return subprocess.run(
        [sys.executable, "-m", "dev.smoke", "--api-url", url, "--emulators", "--event-seconds", "3", *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_smoke_walks_the_local_deployment(event_path, make_key):
    key, _ = make_key(mode="test")
    done = smoke(event_path["function"].url, key)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    steps = {line[6:].split(" (")[0].split(":")[0]: line[:6].strip() for line in lines[:-1]}  # "ok    name (...)"
    assert steps == {
        "health": "ok",
        "webhook endpoint": "skip",
        "create": "ok",
        "put": "ok",
        "completed by the storage event": "ok",
        "webhook delivered": "skip",
        "source_url": "ok",
        "the CDN serves nothing else": "skip",
        "a rejected impostor": "ok",
        "cancel": "ok",
    }, lines
    assert "skip  webhook endpoint: no --webhook-url given" in done.stdout
    assert "skip  the CDN serves nothing else: the local stand-in for the CDN is fake-gcs-server" in done.stdout
    assert "media 1.0 s 64x48 h264" in done.stdout
    assert lines[-1] == "smoke: the deployment works"
    # The event's latency as seen, not the step's wait (issue 34: it reported its fixed wait).
    (completed,) = [line for line in lines if line.startswith("ok    completed by the storage event")]
    seen = re.search(r": placed (\d+) s after the PUT's answer \(.*looked after the 3 s bound\)", completed)
    assert seen, completed
    assert key not in done.stdout + done.stderr
    assert "upload_id=" not in done.stdout + done.stderr


def test_without_storage_events_the_smoke_fails_at_that_step(served_default, make_key):
    """served_default has no relay: only the smoke's own GET completes the upload, and it says so."""
    key, _ = make_key(mode="test")
    done = smoke(served_default.url, key)
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1].startswith("FAIL  completed by the storage event ("), done.stdout
    assert "by the GET itself" in done.stdout
    assert key not in done.stdout + done.stderr


def test_the_smoke_needs_a_key_and_a_sane_bound(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FRAMELANE_API_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "dev.smoke", "--api-url", "http://127.0.0.1:9"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "no API key" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "dev.smoke", "--api-url", "http://127.0.0.1:9", "--event-seconds", "1"],
        cwd=ROOT,
        env={**env, "FRAMELANE_API_KEY": "k"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--event-seconds must be 3 or more" in done.stderr


def test_with_a_receiver_the_smoke_proves_webhooks_and_removes_its_endpoint(event_path, make_key, db):
    key, workspace = make_key(mode="test")
    receiver = Receiver()
    try:
        done = smoke(event_path["function"].url, key, "--webhook-url", receiver.url, "--webhook-seconds", "60")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "ok    webhook delivered (" in done.stdout
        assert "upload.completed answered 2xx" in done.stdout
        # The receiver really got the event, for the smoke's upload; the endpoint is gone afterwards.
        made = re.search(r"ok    create \(.*\): (upl_[0-9a-f]{32})", done.stdout).group(1)
        completed = [item.event["data"]["id"] for item in receiver.received if item.event["type"] == "upload.completed"]
        assert made in completed
        assert endpoints.list_endpoints(db, workspace) == []
        assert key not in done.stdout + done.stderr
    finally:
        receiver.stop()


def test_a_receiver_that_fails_fails_the_smoke_at_the_webhook_step(event_path, make_key, db):
    key, workspace = make_key(mode="test")
    receiver = Receiver()
    receiver.script.extend([500] * 20)
    try:
        done = smoke(event_path["function"].url, key, "--webhook-url", receiver.url, "--webhook-seconds", "5")
        assert done.returncode == 1
        assert done.stdout.splitlines()[-1].startswith("FAIL  webhook delivered ("), done.stdout
        assert "no 2xx delivery of upload.completed within 5 s (500" in done.stdout
        assert endpoints.list_endpoints(db, workspace) == []  # removed even so
        assert [r for r in deliveries(db, workspace) if r["status"] == 500]
    finally:
        receiver.stop()


@pytest.mark.parametrize(
    "listing_path", [None, "/", "/uploads/?list-type=2&prefix=uploads/", "/test-uploads/?prefix=test-uploads/"]
)
def test_the_cdn_step_fails_on_any_listing_the_url_map_could_let_through(listing_path):
    """What keeps listings out on a deployment is the URL map (terraform/cdn.tf): the smoke asks for
    them on both kinds of path, and any one answered is a failure naming it."""
    from dev.smoke import Smoke, StepFailed
    from tests.webhooks.test_targets import Server, answer

    listing = answer(200, b"<ListBucketResult><Contents><Key>uploads/x</Key></Contents></ListBucketResult>")
    not_found = answer(404, b'{"error": {"code": "not_found"}}')
    cdn = Server(lambda h: (listing if h.path == listing_path else not_found)(h))  # a CDN stand-in on loopback
    try:
        smoke = Smoke("http://127.0.0.1:9", "fl_test_x", emulators=False, event_seconds=3, out=lambda line: None)
        smoke.upload = {"source_url": f"http://127.0.0.1:{cdn.port}/test-uploads/ws/abc.mp4"}
        if listing_path is None:
            assert smoke.cdn_refuses() == "/, /uploads/, /test-uploads/ and listing queries: 404"
        else:
            with pytest.raises(StepFailed, match=re.escape(f"the CDN answered {listing_path} with 200")):
                smoke.cdn_refuses()
    finally:
        cdn.stop()


def test_a_put_that_fails_to_connect_never_prints_the_session_url(served_default, make_key):
    """requests names the URL it could not reach; the FAIL line must not carry the session's upload_id."""
    from dev.smoke import Smoke

    key, _ = make_key(mode="test")
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: the PUT's connection is refused
    said: list[str] = []

    class Unreachable(Smoke):
        def put(self) -> str:
            real = self.upload["upload_url"]
            self.upload = {**self.upload, "upload_url": re.sub(r"^http://[^/]+", f"http://127.0.0.1:{port}", real)}
            return super().put()

    smoke = Unreachable(served_default.url, key, emulators=True, event_seconds=3, out=said.append)
    assert smoke.run() == 1
    fail = said[-1]
    assert fail.startswith("FAIL  put ("), said
    assert "Connection" in fail, said
    assert "upload_id=" not in fail.replace("upload_id=[REDACTED]", "")
    assert key not in "\n".join(said)


def test_the_key_never_goes_on_a_command_line(tmp_path, served_default, make_key):
    """`make smoke API_KEY=...` is refused before anything runs; the key comes from a file or the environment."""
    done = subprocess.run(
        ["make", "--no-print-directory", "smoke", "API_URL=http://127.0.0.1:9", "API_KEY=fl_test_x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2
    assert "do not pass API_KEY" in done.stdout + done.stderr
    key, _ = make_key(mode="test")
    path = tmp_path / "key"
    path.write_text(key + "\n")
    env = {k: v for k, v in os.environ.items() if k != "FRAMELANE_API_KEY"}
    # The first step that needs the key (create) passes with the key read from the file.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dev.smoke",
            "--api-url",
            served_default.url,
            "--emulators",
            "--event-seconds",
            "3",
            "--api-key-file",
            str(path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "ok    create (" in done.stdout, done.stdout + done.stderr
    assert key not in done.stdout + done.stderr
