"""The upload command (`python -m client`), run as a user runs it, against the
served function and real storage emulators.

Resuming is judged against gcp-storage-emulator (PyPI), which answers a status
query (`bytes */N`) with 308 and `Range` and refuses a chunk at the wrong
offset; fake-gcs-server would finalize the object on that query and append a
re-sent chunk. The rest runs against fake-gcs-server as every other test does.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pty
import select
import signal
import stat
import struct
import subprocess
import sys
import termios
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import google_crc32c
import pytest
import requests
from google.cloud.firestore_v1.base_query import FieldFilter

from client import cli, state
from client.resumable import Finalized, persisted
from client.transport import GaveUp, Retry, retry_after
from dev import emulators
from lib.media.mediatypes import ALIASES, EXTENSIONS
from tests.conftest import BUCKET, PROJECT, ROOT, Served, start_shipped
from tests.helpers import SIZED_EXTENSIONS, Answer, RecordingProxy, Stall, media, sized_media

MIB = 1024 * 1024


# --- helpers ---------------------------------------------------------------


def write_media(path: Path, size: int) -> bytes:
    """A real file of the type its name says (tests/helpers.py sized_media), or random bytes for a
    type uploads do not take."""
    extension = path.suffix.lstrip(".")
    seed = int.from_bytes(os.urandom(8), "big")
    data = sized_media(extension, size, seed) if extension in SIZED_EXTENSIONS else os.urandom(size)
    path.write_bytes(data)
    return data


def crc32c(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


class Command:
    """`python -m client` with a key, an API URL and a private cache directory."""

    def __init__(self, api_url: str, key: str, cache: Path):
        self.env = {**os.environ, "FRAMELANE_API_URL": api_url, "FRAMELANE_API_KEY": key, "XDG_CACHE_HOME": str(cache)}
        self.env.pop("PYTHONPATH", None)
        self.cache = cache

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "client", *args]

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self, *args: str) -> subprocess.Popen:
        # SIGINT reaches it at its default, as from a terminal: conftest.py's pytest_configure.
        return subprocess.Popen(
            self.argv(*args), cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def saved(self) -> list[Path]:
        return sorted((self.cache / "framelane" / "uploads").glob("*.json"))


def until(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)  # poll interval of a readiness check
    raise AssertionError(f"timed out waiting for {what}")


def session_holds(upload_url: str, size: int) -> int:
    """What the session holds, asked as any GCS client asks (a status query)."""
    resp = requests.put(upload_url, headers={"Content-Range": f"bytes */{size}"}, timeout=10)
    assert resp.status_code == 308, resp.status_code
    return persisted(resp)


def object_bytes(storage_url: str, source_url: str, cdn_base: str) -> bytes:
    name = source_url[len(cdn_base) + 1 :]
    resp = requests.get(
        f"{storage_url}/storage/v1/b/{BUCKET}/o/{quote(name, safe='')}", params={"alt": "media"}, timeout=30
    )
    assert resp.status_code == 200, resp.text
    return resp.content


def objects_under(storage_url: str, prefix: str) -> list[str]:
    resp = requests.get(f"{storage_url}/storage/v1/b/{BUCKET}/o", params={"prefix": prefix}, timeout=30)
    assert resp.status_code == 200, resp.text
    return [item["name"] for item in resp.json().get("items", [])]


def workspace_uploads(db, workspace: str) -> list[dict]:
    query = db.collection("uploads").where(filter=FieldFilter("workspace_id", "==", workspace))
    return [doc.to_dict() for doc in query.stream()]


def kill_after_progress(proc: subprocess.Popen, command: Command, size: int, least: int, sig: int) -> state.Saved:
    """Once the session holds at least `least` bytes, send `sig` to the command (by PID)."""
    path = until(lambda: command.saved(), "the command to save its state")[0]
    saved = state.Saved.from_json(path.read_text())
    until(lambda: session_holds(saved.upload_url, size) >= least, "the session to hold some bytes")
    proc.send_signal(sig)
    proc.wait(timeout=30)
    return saved


def interrupt_once_saved(proc: subprocess.Popen, command: Command) -> state.Saved:
    """Ctrl-C as soon as the upload's state is saved (32 MiB in 256 KiB chunks
    takes fake-gcs-server far longer than this poll), and its saved state."""
    path = until(lambda: command.saved(), "the command to save its state")[0]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == cli.EXIT_INTERRUPTED, proc.stderr.read()
    return state.Saved.from_json(path.read_text())


# --- fixtures --------------------------------------------------------------


@pytest.fixture(scope="module")
def resumable(backends, log_dir, shipped):
    """gcp-storage-emulator, and a served function minting sessions on it (through
    a proxy that tests can script: 503s and stalls on chunk PUTs)."""
    storage = emulators.start_gcp_storage_emulator(log_dir, BUCKET)
    scripts: list = []

    def script(request):
        return scripts[-1](request) if scripts else None

    proxy = RecordingProxy(storage.url, script=script, keep_host=True).__enter__()
    function = None
    try:
        env = emulators.function_env(
            backends["firestore"],
            storage,
            PROJECT,
            BUCKET,
            backends["redis"],
            STORAGE_EMULATOR_HOST=proxy.url,
            CDN_BASE_URL=f"{storage.url}/{BUCKET}",
        )
        function = start_shipped(shipped, env, log_dir, name="function-gcp-storage-emulator")
        yield {
            "storage": storage,
            "proxy": proxy,
            "scripts": scripts,
            "function": Served(function),
            "cdn": f"{storage.url}/{BUCKET}",
        }
    finally:
        if function is not None:
            function.stop()
        proxy.__exit__(None, None, None)
        storage.stop()


@pytest.fixture
def on_resumable(resumable, make_key, tmp_path):
    key, workspace = make_key()
    resumable["scripts"].clear()
    return Command(resumable["function"].url, key, tmp_path / "cache"), workspace


@pytest.fixture
def on_fake_gcs(served_default, make_key, tmp_path):
    key, workspace = make_key()
    return Command(served_default.url, key, tmp_path / "cache"), workspace


# --- against fake-gcs-server ------------------------------------------------


def test_a_file_that_is_not_its_type_fails_with_its_own_status_and_why(on_fake_gcs, tmp_path):
    """A web page saved as .mp4: the upload goes through, the service reads it and refuses it; the
    command says so, with the status that means "rerunning will not help"."""
    command, _ = on_fake_gcs
    path = tmp_path / "page.mp4"
    path.write_bytes(b"<!doctype html><title>saved page</title>" + b"<p>text</p>" * 500)
    done = command.run("upload", str(path))
    assert done.returncode == cli.EXIT_NOT_MEDIA == 6, done.stderr
    assert "refused it as video/mp4: content_mismatch: " in done.stderr
    assert "--content-type" in done.stderr
    assert done.stdout == ""
    assert command.saved() == []
    ok = tmp_path / "real.mp4"
    write_media(ok, MIB)
    done = command.run("upload", str(ok))
    assert done.returncode == 0, done.stderr
    assert "media       1.0 s, 64x48, h264" in done.stdout, done.stderr


@pytest.mark.parametrize("restart", [False, True])
def test_the_commands_own_advice_works_a_picture_named_mp4_goes_up_with_its_real_type(on_fake_gcs, tmp_path, restart):
    """A PNG renamed .mp4 is refused (exit 6, "pass --content-type"); passing its real type (with or without
    --restart) is another request, under another Idempotency-Key, and completes."""
    command, _ = on_fake_gcs
    path = tmp_path / "x.mp4"
    path.write_bytes(media("image.png"))
    refused = command.run("upload", str(path))
    assert refused.returncode == cli.EXIT_NOT_MEDIA, refused.stderr
    assert "--content-type" in refused.stderr, refused.stderr
    done = command.run("upload", str(path), "--content-type", "image/png", *(["--restart"] if restart else []))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("uploaded x.mp4"), done.stdout
    assert "media       64x48, png" in done.stdout, done.stdout


def test_64_mib_upload_is_byte_exact_and_json_output_is_exactly_the_four_fields(
    on_fake_gcs, backends, tmp_path, served_default
):
    command, _ = on_fake_gcs
    data = write_media(tmp_path / "clip.mp4", 64 * MIB)
    done = command.run("upload", str(tmp_path / "clip.mp4"), "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = json.loads(done.stdout)
    assert set(out) == {"id", "source_url", "size_bytes", "media"}
    assert done.stdout.count("\n") == 1
    assert out["media"] == {"duration_seconds": 1.0, "width": 64, "height": 48, "codecs": ["h264"]}
    assert out["size_bytes"] == len(data)
    assert out["source_url"].endswith(".mp4")
    cdn = backends["env"]["CDN_BASE_URL"]
    assert requests.get(out["source_url"], timeout=60).content == data
    assert command.saved() == []  # state removed once the upload ended

    shown = command.run("status", out["id"])
    assert shown.returncode == 0, shown.stderr
    upload = json.loads(shown.stdout)
    assert upload["status"] == "completed"
    assert upload["size_bytes"] == len(data)
    assert upload["crc32c"] == crc32c(data)  # declared by the command, checked by storage
    assert upload["content_type"] == "video/mp4"
    assert out["source_url"].startswith(cdn)


def test_human_output_without_a_terminal_is_clean(on_fake_gcs, tmp_path):
    command, _ = on_fake_gcs
    write_media(tmp_path / "voice.wav", 3 * MIB + 5)
    done = command.run("upload", str(tmp_path / "voice.wav"))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == "uploaded voice.wav (3.0 MiB)"
    assert lines[1].split()[0] == "id"
    assert lines[1].split()[1].startswith("upl_")
    assert lines[2].split()[0] == "source_url"
    assert lines[2].split()[1].endswith(".wav")
    # What the service read of it: 16-bit mono samples at 8 kHz (tests/helpers.py sized_media).
    assert lines[3] == f"media       {round((3 * MIB + 5 - 44) / 16000, 3)} s, pcm_s16le"
    assert len(lines) == 4
    assert "\r" not in done.stdout
    assert "\x1b" not in done.stdout


def run_on_terminal(command: Command, *args: str) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal; what it showed there."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns, as a terminal has
    proc = subprocess.Popen(
        command.argv(*args), cwd=ROOT, env=command.env, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL
    )
    os.close(follower)
    shown = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            proc.kill()
            raise AssertionError("no output for 60 s")
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command exited and closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    return proc.wait(timeout=30), shown.decode(errors="replace")


def test_a_terminal_gets_a_progress_bar_unless_quiet(on_fake_gcs, tmp_path):
    command, _ = on_fake_gcs
    write_media(tmp_path / "big.webm", 24 * MIB)
    status, shown = run_on_terminal(command, "upload", str(tmp_path / "big.webm"), "--chunk-size", "1MiB")
    assert status == 0, shown
    assert "big.webm" in shown
    assert "100%" in shown
    assert "24.0M/24.0M" in shown
    assert "B/s" in shown  # the rate
    write_media(tmp_path / "quiet.webm", 4 * MIB)
    status, shown = run_on_terminal(command, "upload", str(tmp_path / "quiet.webm"), "--quiet")
    assert status == 0, shown
    assert "%" not in shown
    assert "B/s" not in shown
    assert "uploaded quiet.webm" in shown


def test_a_changed_file_is_refused_then_restart_uploads_it_as_it_is_now(on_fake_gcs, tmp_path, backends, db):
    """Interrupted, then the file changes: exit 3 and nothing sent. --restart
    cancels the old upload and uploads the new bytes. (No status query is
    made before the refusal, so fake-gcs-server can judge this.)"""
    command, _workspace = on_fake_gcs
    path = tmp_path / "cut.mov"
    write_media(path, 32 * MIB)
    first = command.start("upload", str(path), "--chunk-size", "256KiB")
    saved = interrupt_once_saved(first, command)

    new = write_media(path, 8 * MIB + 1)
    refused = command.run("upload", str(path))
    assert refused.returncode == cli.EXIT_FILE_CHANGED, refused.stderr
    assert f"changed since upload {saved.upload_id}" in refused.stderr
    assert "--restart" in refused.stderr
    assert refused.stdout == ""
    assert command.saved(), "the refusal keeps the state, so the choice stays the user's"

    restarted = command.run("upload", str(path), "--json", "--restart")
    assert restarted.returncode == 0, restarted.stderr
    out = json.loads(restarted.stdout)
    assert out["id"] != saved.upload_id
    assert out["size_bytes"] == len(new)
    assert requests.get(out["source_url"], timeout=30).content == new
    old = json.loads(command.run("status", saved.upload_id).stdout)
    assert old["status"] == "cancelled"
    assert command.saved() == []


def test_api_errors_print_code_and_message_with_documented_exit_statuses(on_fake_gcs, tmp_path):
    command, _ = on_fake_gcs
    write_media(tmp_path / "notes.txt", 10)
    unknown = command.run("upload", str(tmp_path / "notes.txt"))
    assert unknown.returncode == cli.EXIT_USAGE
    assert "pass --content-type" in unknown.stderr

    refused = command.run("upload", str(tmp_path / "notes.txt"), "--content-type", "text/html")
    assert refused.returncode == cli.EXIT_REFUSED
    assert refused.stderr.startswith("unsupported_content_type: ")
    assert refused.stdout == ""

    missing = command.run("status", "upl_" + "0" * 32)
    assert missing.returncode == cli.EXIT_REFUSED
    assert missing.stderr.startswith("upload_not_found: ")

    absent = command.run("upload", str(tmp_path / "nope.mp4"))
    assert absent.returncode == cli.EXIT_USAGE
    assert "cannot read" in absent.stderr

    bad_key = Command(command.env["FRAMELANE_API_URL"], "fl_live_" + "x" * 43, command.cache)
    denied = bad_key.run("status", "upl_" + "0" * 32)
    assert denied.returncode == cli.EXIT_REFUSED
    assert denied.stderr.startswith("invalid_api_key: ")
    assert "fl_live_" not in denied.stderr  # the key is never echoed

    no_key = {k: v for k, v in command.env.items() if k != "FRAMELANE_API_KEY"}
    usage = subprocess.run(
        command.argv("status", "x"), cwd=ROOT, env=no_key, capture_output=True, text=True, timeout=60
    )
    assert usage.returncode == cli.EXIT_USAGE
    assert "FRAMELANE_API_KEY" in usage.stderr


def test_cancel_cancels_and_forgets_the_saved_state(on_fake_gcs, tmp_path):
    command, _ = on_fake_gcs
    path = tmp_path / "drop.mp3"
    write_media(path, 32 * MIB)
    saved = interrupt_once_saved(command.start("upload", str(path), "--chunk-size", "256KiB"), command)
    cancelled = command.run("cancel", saved.upload_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["status"] == "cancelled"
    assert command.saved() == []


def test_429_with_retry_after_is_honoured(served_default, make_key, tmp_path):
    """A proxy in front of the API answers the first POST with 429 and
    Retry-After: 2; the command waits at least that long, then succeeds."""
    answered: list[float] = []

    def script(request):
        if request["method"] == "POST" and not answered:
            answered.append(request["at"])
            return Answer(
                429,
                {"Retry-After": "2", "Content-Type": "application/json"},
                b'{"error": {"code": "rate_limited", "message": "Slow down.", "details": {}}}',
            )
        return None

    key, _ = make_key()
    with RecordingProxy(served_default.url, script=script) as proxy:
        command = Command(proxy.url, key, tmp_path / "cache")
        write_media(tmp_path / "a.png", 1000)
        done = command.run("upload", str(tmp_path / "a.png"), "--json")
        assert done.returncode == 0, done.stderr
        posts = [r for r in proxy.requests if r["method"] == "POST"]
    assert len(posts) == 2
    assert posts[1]["at"] - posts[0]["at"] >= 2.0
    assert posts[0]["headers"]["Idempotency-Key"] == posts[1]["headers"]["Idempotency-Key"]


def test_on_fake_gcs_a_resume_finalizes_a_short_object_which_the_command_catches_and_the_next_run_uploads_anew(
    on_fake_gcs, served_default, tmp_path, db
):
    """`make run`'s step 4 on its stand-in: fake-gcs-server finalizes a session when asked what it
    holds, so the rerun's status query makes a short object. The command compares it with the
    file, says so and exits 5, never "uploaded"; the service rejects it; the next run starts anew."""
    command, workspace = on_fake_gcs
    path = tmp_path / "sample.mp4"
    data = write_media(path, 32 * MIB)
    saved = interrupt_once_saved(command.start("upload", str(path), "--chunk-size", "256KiB"), command)

    caught = command.run("upload", str(path))
    assert caught.returncode == cli.EXIT_NOT_THE_FILE, caught.stderr
    assert caught.stdout == ""  # never "uploaded"
    assert f"upload {saved.upload_id} does not hold {path}" in caught.stderr
    assert f"bytes of the file's {len(data)}" in caught.stderr  # what storage's final answer said
    assert "the service rejected it: size_mismatch" in caught.stderr
    assert "Run the same command again to upload the file anew." in caught.stderr
    assert command.saved() == []
    upload = json.loads(command.run("status", saved.upload_id).stdout)
    assert upload["status"] == "rejected"
    assert upload["size_bytes"] == len(data)
    assert requests.get(saved.source_url, timeout=30).status_code == 404  # the short object is gone

    anew = command.run("upload", str(path), "--json")
    assert anew.returncode == 0, anew.stderr
    assert f"upload {saved.upload_id} was rejected; starting a new one" in anew.stderr
    out = json.loads(anew.stdout)
    assert out["id"] != saved.upload_id
    assert requests.get(out["source_url"], timeout=60).content == data
    assert sorted(u["state"] for u in workspace_uploads(db, workspace)) == ["completed", "rejected"]


def test_a_rejection_the_service_reports_is_an_error_never_uploaded(served_default, make_key, tmp_path):
    """Storage's final answer matches the file, but the service says rejected: the command believes the service."""
    rejected = {
        "status": "rejected",
        "size_bytes": 1000,
        "crc32c": None,
        "rejection": {"code": "checksum_mismatch", "message": "Declared otherwise."},
    }

    def script(request):
        if request["method"] == "GET" and request["path"].startswith("/v1/uploads/upl_"):
            return Answer(200, {"Content-Type": "application/json"}, json.dumps(rejected).encode())
        return None

    key, _ = make_key()
    with RecordingProxy(served_default.url, script=script) as proxy:
        command = Command(proxy.url, key, tmp_path / "cache")
        write_media(tmp_path / "a.png", 1000)
        done = command.run("upload", str(tmp_path / "a.png"))
        gets = [r for r in proxy.requests if r["method"] == "GET"]
    assert done.returncode == cli.EXIT_NOT_THE_FILE
    assert done.stdout == ""
    assert "the service rejected it: checksum_mismatch: Declared otherwise." in done.stderr
    assert len(gets) == 1  # the upload's state is read once


@pytest.mark.parametrize(
    ("resource", "problem"),
    [
        ({"size": "1000", "crc32c": "AAAAAA=="}, None),
        ({"size": 1000, "crc32c": "AAAAAA=="}, None),
        ({"size": "999", "crc32c": "AAAAAA=="}, "storage finalized 999 bytes of the file's 1000"),
        ({"size": "1000", "crc32c": "BBBBBB=="}, "the stored object's crc32c is BBBBBB==, the file's AAAAAA=="),
        ({"size": "1000"}, None),  # says nothing of the crc32c: no facts, nothing vouched (the service must)
        ({}, None),
    ],
)
def test_the_final_answer_is_compared_with_the_file(resource, problem):
    final = Finalized(resource)
    assert final.differs(1000, "AAAAAA==") == problem
    assert (final.facts is not None) == ("crc32c" in resource)


# --- against gcp-storage-emulator: resuming -----------------------------------


def test_sigkill_mid_upload_then_rerun_completes_with_one_upload_and_one_object(on_resumable, resumable, tmp_path, db):
    command, workspace = on_resumable
    path = tmp_path / "crash.mp4"
    data = write_media(path, 32 * MIB)
    run = command.start("upload", str(path), "--chunk-size", "256KiB", "--json")
    saved = kill_after_progress(run, command, len(data), 2 * MIB, signal.SIGKILL)
    assert run.returncode == -signal.SIGKILL
    held = session_holds(saved.upload_url, len(data))
    assert 0 < held < len(data)

    again = command.run("upload", str(path), "--json")
    assert again.returncode == 0, again.stderr
    assert f"resuming upload {saved.upload_id}" in again.stderr
    out = json.loads(again.stdout)
    assert out["id"] == saved.upload_id
    assert object_bytes(resumable["storage"].url, out["source_url"], resumable["cdn"]) == data
    assert len(workspace_uploads(db, workspace)) == 1
    assert len(objects_under(resumable["storage"].url, f"uploads/{workspace}/")) == 1
    # Bytes the session already held were not sent again.
    chunk_puts = [
        r
        for r in resumable["proxy"].requests
        if r["method"] == "PUT" and saved.upload_id[4:] in r["path"] and r["body"]
    ]
    assert sum(len(r["body"]) for r in chunk_puts) < len(data) + 2 * 256 * 1024


def test_ctrl_c_exits_130_with_private_state_and_a_rerun_resumes(on_resumable, resumable, tmp_path):
    command, _ = on_resumable
    path = tmp_path / "pause.mov"
    data = write_media(path, 16 * MIB)
    run = command.start("upload", str(path), "--chunk-size", "256KiB")
    saved = kill_after_progress(run, command, len(data), 1 * MIB, signal.SIGINT)
    assert run.returncode == cli.EXIT_INTERRUPTED
    assert "interrupted; run the same command again to resume" in run.stderr.read()
    [saved_path] = command.saved()
    assert stat.S_IMODE(saved_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(saved_path.parent.stat().st_mode) == 0o700
    assert command.env["FRAMELANE_API_KEY"] not in saved_path.read_text()

    again = command.run("upload", str(path))
    assert again.returncode == 0, again.stderr
    assert f"resuming upload {saved.upload_id}" in again.stderr
    source_url = next(line.split()[1] for line in again.stdout.splitlines() if line.startswith("source_url"))
    assert object_bytes(resumable["storage"].url, source_url, resumable["cdn"]) == data
    assert command.saved() == []


def test_a_crash_before_the_state_was_saved_gets_the_same_session_back(on_resumable, resumable, tmp_path, db):
    """The Idempotency-Key comes from the file's identity: with the state gone
    (a crash between the 201 and the save), the rerun's POST is a replay, and
    the session it names says how far it got."""
    command, workspace = on_resumable
    path = tmp_path / "lost.mp4"
    data = write_media(path, 16 * MIB)
    run = command.start("upload", str(path), "--chunk-size", "256KiB")
    saved = kill_after_progress(run, command, len(data), 1 * MIB, signal.SIGKILL)
    for leftover in command.saved():
        leftover.unlink()

    again = command.run("upload", str(path), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["id"] == saved.upload_id
    assert f"resuming upload {saved.upload_id}" in again.stderr
    assert object_bytes(resumable["storage"].url, json.loads(again.stdout)["source_url"], resumable["cdn"]) == data
    assert len(workspace_uploads(db, workspace)) == 1


def test_a_replayed_session_finalized_with_other_bytes_is_left_for_a_new_upload(on_resumable, resumable, tmp_path, db):
    """GCS answers a finalized session's status query with 200 and the object. When a rerun's replay
    names such a session and the object is not the file, the rerun uploads anew: it never calls it done."""
    command, workspace = on_resumable
    path = tmp_path / "replayed.mp4"
    data = write_media(path, 16 * MIB)
    saved = kill_after_progress(
        command.start("upload", str(path), "--chunk-size", "256KiB"), command, len(data), 1 * MIB, signal.SIGKILL
    )
    for leftover in command.saved():
        leftover.unlink()  # a crash before the state was saved: the rerun's POST is a replay
    status_query = f"bytes */{len(data)}"

    def script(request):
        if (
            request["method"] == "PUT"
            and saved.upload_id[4:] in request["path"]
            and request["headers"].get("Content-Range") == status_query
        ):
            return Answer(
                200, {"Content-Type": "application/json"}, json.dumps({"size": str(MIB), "crc32c": "AAAAAA=="}).encode()
            )
        return None

    resumable["scripts"].append(script)
    again = command.run("upload", str(path), "--json")
    assert again.returncode == 0, again.stderr
    assert f"upload {saved.upload_id} does not hold the file; starting a new one" in again.stderr
    out = json.loads(again.stdout)
    assert out["id"] != saved.upload_id
    assert object_bytes(resumable["storage"].url, out["source_url"], resumable["cdn"]) == data
    assert len(workspace_uploads(db, workspace)) == 2


def test_503s_and_a_stalled_chunk_are_ridden_out(on_resumable, resumable, tmp_path):
    """The proxy in front of Storage fails the 2nd and 4th chunk PUTs with 503
    (unforwarded) and stalls the 3rd past the command's timeout (forwarded:
    the session keeps it). Not the 1st: gcp-storage-emulator says
    `Range: bytes=0-0` for a session holding nothing, where GCS says no Range."""
    command, _ = on_resumable
    chunks: list[str] = []

    def script(request):
        if request["method"] != "PUT" or not request["body"]:
            return None
        chunks.append(request["headers"]["Content-Range"])
        if len(chunks) in (2, 4):
            return Answer(503, {"Content-Type": "text/plain"}, b"backend error")
        if len(chunks) == 3:
            return Stall(6)
        return None

    resumable["scripts"].append(script)
    path = tmp_path / "flaky.mp4"
    data = write_media(path, 3 * MIB + 12345)
    done = command.run("upload", str(path), "--chunk-size", "512KiB", "--timeout", "2", "--json")
    assert done.returncode == 0, done.stderr
    assert object_bytes(resumable["storage"].url, json.loads(done.stdout)["source_url"], resumable["cdn"]) == data
    # Each failed chunk was sent again from the offset the session reported;
    # the stalled one was kept by the session, so not sent again.
    assert chunks[1] == chunks[2]
    assert chunks[3] == chunks[4]
    assert len(chunks) == 9
    assert len(set(chunks)) == 7


# --- a storage server that misbehaves ---------------------------------------


def _clean_failure(done, saved_url: str | None = None) -> None:
    """Exit 1 with one clean line: no traceback, never the session URL."""
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    assert "upload_id=" not in done.stderr
    if saved_url:
        assert saved_url not in done.stderr


def test_an_offset_going_back_and_forth_is_bounded_and_the_file_never_sent_over_and_over(
    on_resumable, resumable, tmp_path
):
    """Storage takes each chunk, then says it holds nothing: every rise reset the retries and the
    command sent 100 MB for a 2 MiB file. Now the regressions and the bytes sent are bounded."""
    command, _ = on_resumable
    size, chunk = 2 * MIB, 256 * 1024

    def script(request):
        if request["method"] == "PUT" and request["body"]:
            first = int(request["headers"]["Content-Range"].split()[1].split("-")[0])
            held = first + chunk if first == 0 else 0  # the first chunk "lands"; every later one resets
            return Answer(308, {"Range": f"bytes=0-{held - 1}"} if held else {})
        return None

    resumable["scripts"].append(script)
    path = tmp_path / "wobbly.mp4"
    write_media(path, size)
    before = len(resumable["proxy"].requests)  # the proxy is the module's: earlier tests' requests are there
    done = command.run("upload", str(path), "--chunk-size", "256KiB")
    _clean_failure(done)
    assert "went back" in done.stderr
    assert command.saved() == []
    sent = sum(len(r["body"]) for r in resumable["proxy"].requests[before:] if r["method"] == "PUT" and r["body"])
    assert sent <= 3 * size + chunk


def test_a_range_past_the_files_end_is_a_clean_error_and_a_rerun_does_not_repeat_it(on_resumable, resumable, tmp_path):
    """Once, storage's answer claiming more bytes than the file has crashed the command, and every
    rerun crashed the same way. Now it is a clean error, and a rerun (storage sane again) resumes
    the session from what it really holds. The first chunk reaches storage, so the session holds
    bytes (the stand-in says `bytes=0-0` for an empty session, where GCS says nothing)."""
    command, _ = on_resumable
    puts: list[str] = []

    def script(request):
        if request["method"] == "PUT":
            puts.append(request["headers"].get("Content-Range", ""))
            if len(puts) > 1:
                return Answer(308, {"Range": f"bytes=0-{10 * MIB}"})
        return None

    resumable["scripts"].append(script)
    path = tmp_path / "short.mp4"
    data = write_media(path, MIB)
    done = command.run("upload", str(path), "--chunk-size", "256KiB")
    _clean_failure(done)
    assert "holds" in done.stderr
    assert command.saved() == []
    resumable["scripts"].clear()
    again = command.run("upload", str(path), "--json")
    assert again.returncode == 0, again.stderr
    assert object_bytes(resumable["storage"].url, json.loads(again.stdout)["source_url"], resumable["cdn"]) == data


def test_a_redirect_from_storage_is_never_followed(on_resumable, resumable, tmp_path):
    """A 307 (or a 308 with Location) would carry the file to another host: refused, not followed."""
    command, _ = on_resumable
    with RecordingProxy(resumable["storage"].url) as elsewhere:

        def script(request):
            if request["method"] == "PUT" and request["body"]:
                return Answer(307, {"Location": elsewhere.url + "/upload/storage/v1/b/x/o?upload_id=elsewhere"})
            return None

        resumable["scripts"].append(script)
        path = tmp_path / "moved.mp4"
        write_media(path, MIB)
        done = command.run("upload", str(path), "--chunk-size", "256KiB")
        _clean_failure(done)
        assert "redirect" in done.stderr
        assert elsewhere.requests == []


def test_an_unexpected_failure_is_one_clean_line_without_the_session_url(on_resumable, resumable, tmp_path):
    """A final answer that cannot be decoded raised deep in requests, and the traceback held the URL."""
    command, _ = on_resumable

    def script(request):
        if request["method"] == "PUT" and request["body"]:
            return Answer(200, {"Content-Encoding": "gzip", "Content-Type": "application/json"}, b"not gzip at all")
        return None

    resumable["scripts"].append(script)
    path = tmp_path / "garbled.mp4"
    write_media(path, MIB)
    done = command.run("upload", str(path), "--chunk-size", "1MiB")
    _clean_failure(done)
    assert done.stderr.startswith("error: unexpected ")


# --- no services ------------------------------------------------------------


@pytest.mark.parametrize(
    ("api_url", "upload_url", "allowed"),
    [
        ("https://api.framelane.example", "https://storage.googleapis.com/upload?upload_id=x", True),
        ("https://api.framelane.example", "http://storage.googleapis.com/upload?upload_id=x", False),
        ("https://api.framelane.example", "ftp://storage.example/upload", False),
        ("http://127.0.0.1:8080", "http://127.0.0.1:4443/upload?upload_id=x", True),
        ("http://localhost:8080", "http://127.0.0.1:4443/upload", True),
        ("http://[::1]:8080", "http://[::1]:4443/upload", True),
        ("http://10.0.0.5:8080", "http://10.0.0.5:4443/upload", False),
    ],
)
def test_an_upload_url_over_plain_http_is_refused_unless_the_api_is_local(api_url, upload_url, allowed):
    from client import cli

    if allowed:
        cli.check_upload_url(api_url, upload_url)
    else:
        with pytest.raises(cli.Failure, match="not https; the file was not sent"):
            cli.check_upload_url(api_url, upload_url)


def test_retry_is_bounded_in_attempts_and_in_time_and_honours_retry_after():
    slept: list[float] = []
    clock = [0.0]

    def sleep(seconds):
        slept.append(seconds)
        clock[0] += seconds

    retry = Retry(attempts=4, budget=1000, base=1, cap=30, sleep=sleep, clock=lambda: clock[0])
    timeout = requests.Timeout("read timed out")
    retry.wait(timeout)
    retry.wait(timeout)
    retry.wait(timeout)
    with pytest.raises(GaveUp, match="4 tries in a row"):
        retry.wait(timeout)
    assert len(slept) == 3
    assert all(0 <= s <= 2**i for i, s in enumerate(slept))

    retry.progress()
    busy = requests.Response()
    busy.status_code, busy.headers["Retry-After"] = 503, "7"
    retry.wait(busy)
    assert slept[-1] >= 7

    long = Retry(attempts=100, budget=10, sleep=sleep, clock=lambda: clock[0])
    busy.headers["Retry-After"] = "3600"
    with pytest.raises(GaveUp, match="10 s without progress"):
        long.wait(busy)


def test_what_is_retried():
    def response(status: int, body: bytes = b"") -> requests.Response:
        r = requests.Response()
        r.status_code, r._content = status, body
        return r

    for status in (408, 429, 500, 502, 503, 504):
        assert Retry.transient(response(status))
    for status in (400, 401, 403, 404, 413, 415, 422):
        assert not Retry.transient(response(status))
    assert Retry.transient(response(409, b'{"error": {"code": "idempotency_key_in_use"}}'))
    assert not Retry.transient(response(409, b'{"error": {"code": "idempotency_key_reused"}}'))
    assert Retry.transient(requests.ConnectionError())
    assert Retry.transient(requests.Timeout())


def test_retry_after_reads_seconds_and_http_dates():
    r = requests.Response()
    r.headers["Retry-After"] = "120"
    assert retry_after(r) == 120
    r.headers["Retry-After"] = "Sun, 29 Nov 2026 17:00:30 GMT"
    assert retry_after(r, now=datetime(2026, 11, 29, 17, 0, tzinfo=UTC).timestamp()) == 30
    r.headers["Retry-After"] = "soon"
    assert retry_after(r) is None


def test_status_query_answers_are_read_as_gcs_sends_them():
    r = requests.Response()
    r.status_code = 308
    assert persisted(r) == 0  # no Range: the session holds nothing
    r.headers["Range"] = "bytes=0-262143"
    assert persisted(r) == 262144


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        *(
            (f"x.{ext}", media)
            for media, exts in EXTENSIONS.items()
            for ext in exts
            if (media, ext) != ("audio/mp4", "mp4")
        ),
        ("CLIP.MP4", "video/mp4"),
        ("song.m4a", "audio/mp4"),
        ("notes.txt", None),
        ("noext", None),
    ],
)
def test_content_type_is_guessed_from_our_table(name, expected):
    assert cli.guess_content_type(name) == expected


def test_aliases_are_ours():
    assert set(ALIASES.values()) <= set(EXTENSIONS)


def test_idempotency_key_follows_the_file_identity(tmp_path):
    path = tmp_path / "f.mp4"
    path.write_bytes(b"x")
    file = state.FileId.of(str(path))
    key = cli.idempotency_key(file, "AAAAAA==", None)
    assert key == cli.idempotency_key(state.FileId.of(str(path)), "AAAAAA==", None)
    assert key != cli.idempotency_key(file, "AAAAAQ==", None)
    assert key != cli.idempotency_key(file, "AAAAAA==", "upl_1")
    os.utime(path, ns=(1, 1))
    assert key != cli.idempotency_key(state.FileId.of(str(path)), "AAAAAA==", None)
    assert len(key) <= 255
    assert key.isascii()


@pytest.mark.parametrize(
    ("text", "expected"), [("8MiB", 8 * MIB), ("256KiB", 262144), ("262144", 262144), ("1g", 1 << 30)]
)
def test_chunk_sizes(text, expected):
    assert cli.parse_size(text) == expected


@pytest.mark.parametrize("text", ["100", "0", "1.5MiB", "-256KiB", "lots"])
def test_bad_chunk_sizes(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_size(text)
