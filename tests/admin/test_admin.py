"""`python -m lib.admin`: the ops key CLI, run as ops run it, against the emulator."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC

import pytest

from lib.api import auth
from tests.conftest import ROOT


def cli(*args: str, env_drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    return subprocess.run(
        [sys.executable, "-m", "lib.admin", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def workspace() -> str:
    return f"ws_{uuid.uuid4().hex[:10]}"


def test_create_key_json_prints_exactly_the_documented_object(backends, db, workspace):
    out = cli("create-key", "--workspace", workspace, "--name", "render backend", "--json")
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout)
    assert set(created) == {"id", "key", "workspace_id", "prefix", "mode"}
    assert re.fullmatch(r"fl_live_[A-Za-z0-9_-]{43}", created["key"])
    assert created["id"] == auth.key_id(created["key"])
    assert (created["workspace_id"], created["mode"], created["prefix"]) == (workspace, "live", created["key"][:12])
    doc = db.collection(auth.COLLECTION).document(created["id"]).get().to_dict()
    assert doc["name"] == "render backend"
    assert created["key"] not in json.dumps(doc, default=str)


def test_created_key_authenticates_and_revoked_key_does_not(backends, client, workspace):
    created = json.loads(cli("create-key", "--workspace", workspace, "--test", "--json").stdout)
    assert created["mode"] == "test"
    assert created["key"].startswith("fl_test_")
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert client.post("/v1/uploads", json={"content_type": "video/mp4"}, headers=headers).status_code == 201

    out = cli("revoke-key", created["id"])
    assert out.returncode == 0, out.stderr
    assert created["id"] in out.stdout
    assert client.post("/v1/uploads", json={"content_type": "video/mp4"}, headers=headers).status_code == 401
    again = cli("revoke-key", created["id"])  # idempotent
    assert again.returncode == 0
    assert again.stdout == out.stdout


def test_revoke_key_also_accepts_the_key_itself(backends, client, workspace):
    created = json.loads(cli("create-key", "--workspace", workspace, "--json").stdout)
    assert cli("revoke-key", created["key"]).returncode == 0
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert client.post("/v1/uploads", json={"content_type": "video/mp4"}, headers=headers).status_code == 401


def test_create_key_plain_prints_the_key_alone_on_stdout(backends, workspace):
    out = cli("create-key", "--workspace", workspace)
    assert out.returncode == 0
    assert re.fullmatch(r"fl_live_[A-Za-z0-9_-]{43}\n", out.stdout)
    assert "cannot be shown again" in out.stderr


def test_list_keys_shows_ids_and_prefixes_never_secrets(backends, workspace):
    keys = [json.loads(cli("create-key", "--workspace", workspace, "--json").stdout) for _ in range(2)]
    cli("revoke-key", keys[0]["id"])
    listed = cli("list-keys", "--workspace", workspace, "--json")
    assert listed.returncode == 0
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {k["id"] for k in keys}
    assert rows[keys[0]["id"]]["revoked_at"]
    assert rows[keys[1]["id"]]["revoked_at"] is None
    table = cli("list-keys", "--workspace", workspace)
    for created in keys:
        assert created["key"] not in listed.stdout + table.stdout
        assert created["prefix"] in table.stdout
    other = cli("list-keys", "--workspace", f"{workspace}x", "--json")
    assert json.loads(other.stdout) == []


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((), id="no-command"),
        pytest.param(("create-key",), id="no-workspace"),
        pytest.param(("create-key", "--workspace", "bad/ws"), id="bad-workspace"),
        pytest.param(("create-key", "--workspace", "ws", "--mode", "x"), id="unknown-flag"),
        pytest.param(("revoke-key",), id="no-id"),
        pytest.param(("revoke-key", "not-an-id"), id="bad-id"),
        pytest.param(("frobnicate",), id="unknown-command"),
    ],
)
def test_bad_arguments_get_usage_and_exit_2(backends, args):
    out = cli(*args)
    assert out.returncode == 2
    assert "usage:" in out.stderr or "KEY_ID" in out.stderr


def test_revoking_an_unknown_key_exits_1(backends):
    out = cli("revoke-key", "0" * 64)
    assert out.returncode == 1
    assert "no key" in out.stderr


def test_missing_project_is_named(backends):
    out = cli("list-keys", "--workspace", "ws", env_drop=("GOOGLE_CLOUD_PROJECT",))
    assert out.returncode == 2
    assert "GOOGLE_CLOUD_PROJECT" in out.stderr


# --- webhook endpoints ------------------------------------------------------------------------------


def webhook_cli(*args: str, allow_private: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "WEBHOOK_ALLOW_PRIVATE_TARGETS"}
    if allow_private:
        env["WEBHOOK_ALLOW_PRIVATE_TARGETS"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "lib.admin", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_add_webhook_json_prints_exactly_the_documented_object(backends, db, workspace):
    from lib.webhooks import endpoints
    from tests.helpers import SESSION_WEBHOOK_SECRETS

    out = webhook_cli(
        "add-webhook",
        "--workspace",
        workspace,
        "--url",
        "http://127.0.0.1:9/hooks",
        "--test",
        "--json",
        allow_private=True,
    )
    assert out.returncode == 0, out.stderr
    added = json.loads(out.stdout)
    SESSION_WEBHOOK_SECRETS.add(added["secret"])
    assert set(added) == {"id", "url", "workspace_id", "mode", "secret"}
    assert (added["url"], added["workspace_id"], added["mode"]) == ("http://127.0.0.1:9/hooks", workspace, "test")
    assert re.fullmatch(r"we_[0-9a-f]{32}", added["id"])
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", added["secret"])  # 32 random bytes, base64
    assert endpoints.get_endpoint(db, added["id"]).secret == added["secret"]

    listed = webhook_cli("list-webhooks", "--workspace", workspace, "--json")
    assert listed.returncode == 0
    [row] = json.loads(listed.stdout)
    assert row["id"] == added["id"]
    assert added["secret"] not in listed.stdout
    table = webhook_cli("list-webhooks", "--workspace", workspace)
    assert added["id"] in table.stdout
    assert "whsec_" not in table.stdout + table.stderr


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param("https://169.254.169.254/computeMetadata/v1/", "link-local", id="metadata"),
        pytest.param("http://hooks.example.com/", "must use https", id="http"),
        pytest.param("https://10.0.0.8/", "private", id="private"),
        pytest.param("https://localhost/", "internal name", id="localhost"),
    ],
)
def test_add_webhook_refuses_what_delivery_refuses_with_status_2(backends, db, workspace, url, reason):
    out = webhook_cli("add-webhook", "--workspace", workspace, "--url", url)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.startswith("error: refused webhook URL:")
    assert reason in out.stderr
    assert json.loads(webhook_cli("list-webhooks", "--workspace", workspace, "--json").stdout) == []


def test_rotate_and_remove_webhook(backends, db, workspace):
    from lib.webhooks import endpoints
    from tests.helpers import SESSION_WEBHOOK_SECRETS

    added = json.loads(
        webhook_cli(
            "add-webhook", "--workspace", workspace, "--url", "https://127.0.0.1/h", "--json", allow_private=True
        ).stdout
    )
    SESSION_WEBHOOK_SECRETS.add(added["secret"])
    rotated = webhook_cli("rotate-webhook-secret", added["id"])
    assert rotated.returncode == 0, rotated.stderr
    new_secret = rotated.stdout.strip()
    SESSION_WEBHOOK_SECRETS.add(new_secret)
    stored = endpoints.get_endpoint(db, added["id"])
    assert new_secret.startswith("whsec_")
    assert stored.secret == new_secret != added["secret"]
    assert stored.previous_secret == added["secret"]
    assert "24 hours" not in rotated.stdout
    removed = webhook_cli("remove-webhook", added["id"])
    assert removed.returncode == 0
    assert endpoints.get_endpoint(db, added["id"]) is None
    again = webhook_cli("remove-webhook", added["id"])
    assert again.returncode == 1
    assert "no webhook endpoint" in again.stderr
    assert webhook_cli("rotate-webhook-secret", added["id"]).returncode == 1
    for malformed in ("we_a/b", "we_a//b"):  # never read as a Firestore path (was a traceback)
        for command in ("rotate-webhook-secret", "remove-webhook"):
            out = webhook_cli(command, malformed)
            assert out.returncode == 1
            assert "no webhook endpoint" in out.stderr
            assert "Traceback" not in out.stderr


def test_webhook_deliveries_limits_and_orders_newest_first(backends, db, workspace):
    from datetime import datetime, timedelta

    from lib.webhooks import attempts, messages, outbound, sending

    now = datetime.now(UTC)
    for n in range(5):
        delivery = messages.Delivery("we_" + "0" * 32, f"evt_{n}", "upload.completed", "upl_" + "1" * 32, b"{}", n + 1)
        attempts.write_rows(
            db,
            [
                sending.attempt_of(
                    None,
                    delivery,
                    outbound.Result(500, None, 12.5),
                    now + timedelta(seconds=n),
                    workspace=(workspace, "live"),
                )
            ],
        )
    out = webhook_cli("webhook-deliveries", "--workspace", workspace, "--limit", "3", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [row["event_id"] for row in rows] == ["evt_4", "evt_3", "evt_2"]
    assert set(rows[0]) == {
        "at",
        "event_id",
        "event_type",
        "upload_id",
        "endpoint_id",
        "url",
        "mode",
        "attempt",
        "status",
        "error",
        "latency_ms",
        "dead_lettered",
    }
    assert webhook_cli("webhook-deliveries", "--workspace", workspace, "--limit", "0").returncode == 2


@pytest.mark.parametrize(("emulator", "allowed"), [("127.0.0.1:8681", True), (None, False)])
def test_private_webhook_targets_are_allowed_only_against_the_emulator(monkeypatch, capsys, emulator, allowed):
    """A deployment's endpoints must pass the rules its deliveries apply: the CLI honours
    WEBHOOK_ALLOW_PRIVATE_TARGETS only with FIRESTORE_EMULATOR_HOST, and says so otherwise."""
    from lib.admin import hooks

    monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
    if emulator is None:
        monkeypatch.delenv("FIRESTORE_EMULATOR_HOST", raising=False)
    else:
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", emulator)
    assert hooks._allow_private() is allowed
    warned = "WEBHOOK_ALLOW_PRIVATE_TARGETS is ignored" in capsys.readouterr().err
    assert warned is not allowed
