"""The archive that ships, tested as shipped. conftest's `shipped` is the zip terraform's
archive_file makes (function.tf's `function_files`), installed into a fresh virtualenv from its
requirements.txt alone; `serve`, `served_default` and `event_path` serve it, so every
served-function test (test_served, test_events, test_webhooks, test_smoke, ...) runs it. Here:
that they really do, and what only the archive can show."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

from tests.conftest import ROOT


def test_the_served_functions_run_the_archive_and_nothing_of_this_checkout(served_default, event_path, shipped):
    """Each served function's interpreter is the archive's virtualenv, its source the archive's."""
    source, bin_dir = shipped
    for served in (served_default, event_path["function"], event_path["deliveries"]):
        proc = Path(f"/proc/{served.service.pid}")
        argv = [arg.decode() for arg in (proc / "cmdline").read_bytes().split(b"\0")]
        # The venv's python running the venv's functions-framework (its shebang), on the archive's main.py.
        assert argv[0].startswith(str(bin_dir)), argv
        assert str(bin_dir / "functions-framework") in argv, argv
        assert argv[argv.index("--source") + 1] == str(source / "main.py")
        environ = [item.split(b"=", 1)[0] for item in (proc / "environ").read_bytes().split(b"\0")]
        assert b"PYTHONPATH" not in environ
    # What only the dev requirements bring is not there: the archive installs requirements.txt alone.
    site = next((bin_dir.parent / "lib").glob("python3*/site-packages"))
    assert (site / "functions_framework").is_dir()
    assert not (site / "pytest").exists()
    assert not (source / "tests").exists()
    assert not (source / "dev").exists()


def test_the_shipped_archive_passes_the_smoke(event_path, make_key):
    key, _ = make_key(mode="test")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dev.smoke",
            "--api-url",
            event_path["function"].url,
            "--emulators",
            "--event-seconds",
            "3",
        ],
        cwd=ROOT,
        env={**os.environ, "FRAMELANE_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "smoke: the deployment works"


def test_the_shipped_archive_serves_the_sweep_and_the_deliveries_function(event_path, oidc_issuer):
    """The sweep's token check needs google-auth's crypto; the deliveries function its own imports."""
    sweep = requests.post(
        event_path["function"].url + "/internal/sweep",
        headers={"Authorization": f"Bearer {oidc_issuer.token()}"},
        timeout=60,
    )
    assert sweep.status_code == 200, sweep.text
    assert set(sweep.json()) == {"expired", "completed", "rejected", "failed", "more"}
    assert requests.get(event_path["deliveries"].url + "/health", timeout=30).status_code == 200
    refused = requests.post(event_path["deliveries"].url + "/internal/webhooks", json={}, timeout=30)
    assert refused.status_code == 401  # routed and checked, by the archive's own code
