"""`make run` as a newcomer meets it: it starts, prints its curls and its demo key, and a PUT
to an upload it minted brings `upload.completed` to its receiver, signature verified, printed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from dev import emulators
from tests.conftest import ROOT


def _start_make_run(tmp_path):
    """`python -m dev.run` on free ports, its output in a file, in a process group of its own."""
    ports = {
        name: str(emulators.free_port())
        for name in (
            "FUNCTION_PORT",
            "FIRESTORE_PORT",
            "STORAGE_PORT",
            "PUBSUB_PORT",
            "ISSUER_PORT",
            "RECEIVER_PORT",
            "DEMO_PORT",
            "DELIVERIES_PORT",
            "REDIS_PORT",
        )
    }
    out_path = tmp_path / "make-run.out"
    with open(out_path, "wb") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "dev.run"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **ports, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    return ports, out_path, run


def test_make_run_shows_a_put_turn_into_a_verified_upload_completed_webhook(tmp_path):
    ports, out_path, run = _start_make_run(tmp_path)
    try:

        def printed(pattern: str, timeout: float = 120) -> re.Match:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                match = re.search(pattern, out_path.read_text(errors="replace"))
                if match:
                    return match
                assert run.poll() is None, out_path.read_text(errors="replace")[-3000:]
                time.sleep(0.1)  # poll interval for its output, not a stand-in for readiness
            raise AssertionError(f"make run never printed {pattern!r}:\n{out_path.read_text()[-3000:]}")

        key = printed(r"Demo API key for workspace ws_demo: (fl_live_\S+)").group(1)
        printed(r"Ctrl-C stops everything")
        text = out_path.read_text()
        assert "add-webhook --workspace ws_demo" in text
        assert "webhook-deliveries --workspace ws_demo" in text
        assert "-m client upload" in text
        # Step 4 says what the stand-in does to a resume, and that the command catches it.
        assert "finalizes a session when asked how much it holds" in text
        assert "(exit 5" in text
        demo = f"http://127.0.0.1:{ports['DEMO_PORT']}"
        assert f"open {demo}" in text
        assert "Upload a file" in requests.get(demo + "/", timeout=30).text
        assert requests.get(demo + "/upchunk.js", timeout=30).status_code == 200  # npm ci ran
        # Each printed block runs on its own, in a fresh shell, as a newcomer pastes it.
        blocks = printed_blocks(text)
        created = run_block(blocks["1"])
        assert '"upload_url"' in created
        assert '"id": "upl_' in created.replace('":"', '": "')
        cancelled = run_block(blocks["3"])
        assert '"status":"cancelled"' in cancelled.replace(" ", "")
        completed = run_block(blocks["2"])
        clip = (ROOT / "tests/media/clip.mp4").stat().st_size
        assert f"source_url: 200, {clip} bytes" in completed  # served once checked
        assert '"media":{"duration_seconds":1.0,"width":64,"height":48,"codecs":["h264","aac"]}' in completed.replace(
            " ", ""
        )
        assert '"status":"completed"' in completed.replace(" ", "")
        # The limits: the API's view (three creates so far, step 1's still pending) and the ops CLI's.
        limits_shown = run_block(blocks["6"])
        assert '"creates_in_last_minute":3' in limits_shown.replace(" ", "")
        assert '"pending_uploads":1' in limits_shown.replace(" ", "")
        assert "1 of 1000 uploads pending (the defaults)" in limits_shown
        # ... and its set-limits line, pasted as printed (issue 34: it lacked its environment and exited 2).
        assert "Workspace ws_demo may create 120 uploads a minute and have" in limits_shown
        assert "120 creates a minute" in run_block(blocks["6"].splitlines()[1])  # as stored, the ops CLI says
        url = f"http://127.0.0.1:{ports['FUNCTION_PORT']}"
        created = requests.post(
            f"{url}/v1/uploads",
            json={"content_type": "video/mp4"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ).json()
        put = requests.put(
            created["upload_url"],
            data=(ROOT / "tests/media/clip.mp4").read_bytes(),
            headers={"Content-Type": "video/mp4"},
            timeout=30,
        )
        assert put.status_code in (200, 201)
        line = printed(
            rf"\[webhook\] upload\.completed {created['id']} status=completed "
            r"\(webhook-id evt_[0-9a-f]{32}; (signature verified|SIGNATURE NOT VERIFIED)\)",
            timeout=30,
        )
        assert line.group(1) == "signature verified"
        # Step 7: the smoke, through make, against this deployment; the key never echoed.
        smoked = run_block(blocks["7"])
        assert "smoke: the deployment works" in smoked
        assert "ok    completed by the storage event" in smoked
        assert key not in smoked  # make echoes nothing of the command (@), the smoke never prints it
        assert key not in out_path.read_text().split("Demo API key", 1)[0]  # nothing before it printed the key
        # The commands after the steps, pasted as printed: add an endpoint, list the attempts, another key.
        hooks = "".join(
            line[2:] + "\n"
            for line in text.split("\nWebhooks:", 1)[1].split("\nMore keys:", 1)[0].splitlines()
            if line.startswith("  ")
        )
        listed = run_block(hooks)
        assert re.search(r"^whsec_\S+$", listed, re.M), listed
        assert "upload.completed" in listed, listed
        more = re.search(r"^More keys: (.+)$", text, re.M).group(1)
        assert re.search(r"^fl_live_\S+$", run_block(more), re.M)
    finally:
        os.killpg(run.pid, signal.SIGINT)
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=10)
    assert run.returncode == 0, out_path.read_text()[-2000:]


def printed_blocks(text: str) -> dict[str, str]:
    """The shell lines (indented two spaces) under each numbered step of the printout."""
    blocks, step = {}, None
    for line in text.splitlines():
        numbered = re.match(r"^(\d)\. ", line)
        if numbered:
            step = numbered.group(1)
            blocks[step] = ""
        elif step and line.startswith("  ") and not re.match(r"^   \S", line):  # 3 spaces: prose
            blocks[step] += line[2:] + "\n"
        elif line and not line[0].isspace():  # unindented prose: the numbered steps are over
            step = None
    return blocks


def run_block(block: str) -> str:
    done = subprocess.run(
        ["bash", "-c", block],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith(("RESP", "ID"))},
    )
    assert done.returncode == 0, (block, done.stdout, done.stderr)
    return done.stdout


def _children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (from /proc: each line of stat names its parent)."""
    found = set()
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = Path(f"/proc/{stat}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == pid:
                found.add(int(stat))
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ctrl_c_during_start_up_stops_at_once_and_leaves_nothing_running(tmp_path):
    """Interrupted while its first emulator is still starting, it stops there: nothing more is started,
    no key is minted or printed, and every process it had started (each in a group of its own) is gone."""
    _, out_path, run = _start_make_run(tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (started := _children(run.pid)):
            assert run.poll() is None, out_path.read_text()
            assert time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.01)  # poll interval for its first child, not a stand-in for readiness
        os.killpg(run.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to make run's group, not the emulators'
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=10)
    text = out_path.read_text()
    assert run.returncode == 0, text
    assert "Stopped during start-up; nothing is left running." in text
    assert "Demo API key" not in text
    assert "fl_live_" not in text
    assert "Logs kept" not in text
    assert not [pid for pid in started if _group_alive(pid)], text
    assert not _children(run.pid)
