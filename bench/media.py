"""(m) What a check costs: lib/media/ over every fixture in tests/media/ and over a 2-hour MP4 with eight
audio tracks (its 11 MB index last, then first), each through the real sandboxed child: bytes and reads
(counted by the parent), the child's CPU time and peak memory, and the wall time of the whole check;
then (n), the corpus of real files against the reference tools (bench/corpus.py)."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from bench import corpus
from dev.samples import long_mp4
from lib import media

MEDIA = Path(__file__).resolve().parent.parent / "tests" / "media"


def _check(content_type: str, data: bytes) -> dict:
    started = time.perf_counter()
    found = media.check(content_type, len(data), lambda start, end: data[start:end], time.monotonic() + 60)
    assert found.media is not None, (content_type, found)
    usage = found.usage
    return {
        "size": len(data),
        "read": usage.bytes_read,
        "reads": usage.reads,
        "cpu_ms": usage.cpu_ms,
        "rss_mib": usage.peak_rss_kib / 1024,
        "wall_ms": (time.perf_counter() - started) * 1000,
    }


def measure() -> dict:
    facts = json.loads((MEDIA / "facts.json").read_text())
    rows = [
        {
            "name": name,
            "type": facts[name]["content_type"],
            **_check(facts[name]["content_type"], (MEDIA / name).read_bytes()),
        }
        for name in sorted(facts)
    ]
    with tempfile.TemporaryDirectory() as folder:
        for where, faststart in (("index last", False), ("index first", True)):
            path = Path(folder) / "long.mp4"
            long_mp4(path, 7200, 8, faststart=faststart)
            rows.append(
                {"name": f"2 h, 8 audio tracks, {where}", "type": "video/mp4", **_check("video/mp4", path.read_bytes())}
            )
    kinds: dict[str, list[dict]] = {}
    for row in rows:
        kinds.setdefault(
            row["type"].split("/")[0] if row["type"] not in ("text/vtt", "application/x-subrip") else "subtitles", []
        ).append(row)
    per_kind = {
        kind: {
            "cpu_median": statistics.median(r["cpu_ms"] for r in kind_rows),
            "cpu_max": max(r["cpu_ms"] for r in kind_rows),
            "read_median": statistics.median(r["read"] for r in kind_rows),
            "read_max": max(r["read"] for r in kind_rows),
            "reads_max": max(r["reads"] for r in kind_rows),
        }
        for kind, kind_rows in sorted(kinds.items())
    }
    longest = [row for row in rows if row["name"].startswith("2 h")]
    return {
        "rows": rows,
        "per_kind": per_kind,
        "long": longest,
        "corpus": corpus.run(),
        "rss_max": max(row["rss_mib"] for row in rows),
        "wall_median": statistics.median(row["wall_ms"] for row in rows),
    }
