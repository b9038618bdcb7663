"""(h) The upload command's throughput beside google-cloud-storage's own.

The floor is `Blob.upload_from_filename` (resumable, the same chunk size) to the
same emulator's staging bucket, then the placement every upload pays since
issue 23 (one rewrite to the served bucket, the staging object deleted: on
fake-gcs-server the rewrite copies the bytes, as GCS's does not within one
location and storage class), timed around those calls alone: its process start,
its imports and its client are left out. The command is timed as a user meets it, the whole
process: start, the CRC32C pass, `POST /v1/uploads`, every chunk, exit. So the
ratio charges the command with everything it does and the floor with nothing
but the bytes. Its peak RSS comes from the kernel's accounting of the exited
process (`wait4`, through a small launcher: see `_LAUNCHER`), so it is the
true peak, not a sample.

Run by bench/run.py; `python -m bench.command floor FILE STORAGE_URL BUCKET CHUNK`
is the floor's own process.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import requests

from dev import emulators, samples

ROOT = Path(__file__).resolve().parent.parent
SIZE = 256 * 1024 * 1024
CHUNK = 8 * 1024 * 1024
MIB = 1024 * 1024


def _floor(path: str, storage_url: str, bucket: str, chunk: int) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project="bench", credentials=AnonymousCredentials(), client_options={"api_endpoint": storage_url}
    )
    name = f"bench-floor/{os.getpid()}.mp4"
    blob = client.bucket(emulators.staging_bucket(bucket)).blob(name, chunk_size=chunk)
    started = time.perf_counter()
    blob.upload_from_filename(path, content_type="video/mp4")
    placed = client.bucket(bucket).blob(name)
    placed.content_type = "video/mp4"
    token, _, _ = placed.rewrite(blob, if_generation_match=0)
    while token is not None:
        token, _, _ = placed.rewrite(blob, token=token, if_generation_match=0)
    blob.delete(if_generation_match=blob.generation)
    print(time.perf_counter() - started)


# Linux keeps a process's peak RSS across exec (exec_mmap records the old
# memory's high-water mark), so a child forked from this large process would
# report at least this process's size. A small launcher forks the command and
# reports the command's own peak, via wait4.
_LAUNCHER = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execv(sys.argv[2], sys.argv[2:])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def _run(argv: list[str], env: dict, rss_file: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MiB and stdout of one process."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-S", "-c", _LAUNCHER, str(rss_file), *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv[2:4]} exited {done.returncode}: {done.stderr[-2000:]}")
    return elapsed, int(rss_file.read_text()) / 1024, done.stdout


def _delete_everything(storage_url: str, bucket: str) -> None:
    """Keep the emulator's memory flat between rounds (it holds objects in memory): both buckets."""
    for name in (bucket, emulators.staging_bucket(bucket)):
        listing = requests.get(f"{storage_url}/storage/v1/b/{name}/o", timeout=60).json()
        for item in listing.get("items", []):
            requests.delete(f"{storage_url}/storage/v1/b/{name}/o/{quote(item['name'], safe='')}", timeout=60)


def measure(api_url: str, key: str, storage_url: str, bucket: str, rounds: int = 3) -> dict:
    with tempfile.TemporaryDirectory(prefix="framelane-bench-command-") as tmp:
        path = Path(tmp) / "clip.mp4"
        path.write_bytes(samples.mp4_of_size(SIZE))  # a real MP4: the service checks it
        env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
        command_env = {
            **env,
            "FRAMELANE_API_URL": api_url,
            "FRAMELANE_API_KEY": key,
            "XDG_CACHE_HOME": str(Path(tmp) / "cache"),
        }
        floor, command, rss = [], [], []
        for round_ in range(rounds):  # interleaved: floor, command, floor, command, ...
            _delete_everything(storage_url, bucket)
            _, _, out = _run(
                [sys.executable, "-m", "bench.command", "floor", str(path), storage_url, bucket, str(CHUNK)],
                env,
                Path(tmp) / "rss",
            )
            floor.append(float(out))
            _delete_everything(storage_url, bucket)
            # A new modification time is a new file identity: a new upload, not a replay of the last.
            os.utime(path, ns=(time.time_ns(), time.time_ns() + round_))
            elapsed, peak, _ = _run(
                [sys.executable, "-m", "client", "upload", str(path), "--json", "--chunk-size", str(CHUNK)],
                command_env,
                Path(tmp) / "rss",
            )
            command.append(elapsed)
            rss.append(peak)
        _delete_everything(storage_url, bucket)
    floor_mibs = SIZE / MIB / statistics.median(floor)
    command_mibs = SIZE / MIB / statistics.median(command)
    return {
        "floor_mibs": floor_mibs,
        "command_mibs": command_mibs,
        "ratio": command_mibs / floor_mibs,
        "peak_rss_mib": max(rss),
        "rounds": rounds,
        "floor_s": floor,
        "command_s": command,
    }


if __name__ == "__main__" and sys.argv[1:2] == ["floor"]:
    _floor(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
