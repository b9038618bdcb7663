"""(m) What a check reads: lib/media.py over every fixture in tests/media/, as made (a few KB: one
read takes it whole) and grown to 1 GiB, where only the headers may be read: an MP4/MOV/M4A with
its samples (`mdat`) grown so its index (`moov`) lies past them, the other pictures and sounds
with filler after their own bytes (ADTS AAC, a bare run of frames, with its frames again), as
sparse objects (only what is read is made; subtitles and
fonts are not grown: a WOFF states its own length, and neither comes in gigabytes). Counted by
the budgeted reader itself (lib/reading.py): bytes and reads per check."""

from __future__ import annotations

import json
import statistics
import struct
from pathlib import Path

from lib import media
from lib.reading import Reader

MEDIA = Path(__file__).resolve().parent.parent / "tests" / "media"
GIB = 1024**3


def _grown(data: bytes, size: int) -> tuple[int, dict[int, bytes]]:
    """The object `data` grown to `size` bytes, as {offset: bytes} (zeros between)."""
    if data[4:8] != b"ftyp":
        return size, {0: data}
    boxes, at = [], 0
    while at < len(data):
        length = struct.unpack_from(">I", data, at)[0]
        boxes.append(data[at:at + length])
        at += length
    head = b"".join(box for box in boxes if box[4:8] not in (b"mdat", b"moov"))
    moov = next(box for box in boxes if box[4:8] == b"moov")
    mdat_size = size - len(head) - len(moov)
    head += struct.pack(">I4sQ", 1, b"mdat", mdat_size)
    return size, {0: head, size - len(moov): moov}


def _fetch(pieces: dict[int, bytes]):
    def fetch(start: int, end: int) -> bytes:
        out = bytearray(end - start)
        for at, piece in pieces.items():
            lo, hi = max(start, at), min(end, at + len(piece))
            if lo < hi:
                out[lo - start:hi - start] = piece[lo - at:hi - at]
        return bytes(out)
    return fetch


def _repeating(data: bytes):
    def fetch(start: int, end: int) -> bytes:
        offset = start % len(data)
        return (data[offset:] + data * ((end - start) // len(data) + 1))[:end - start]
    return fetch


def measure() -> dict:
    facts = json.loads((MEDIA / "facts.json").read_text())
    rows = []
    for name in sorted(facts):
        data = (MEDIA / name).read_bytes()
        small = Reader.of(data)
        media.verify(facts[name]["content_type"], small)
        row = {"name": name, "size": len(data), "read": small.bytes_read, "reads": small.reads}
        if facts[name]["content_type"].startswith(("video/", "audio/", "image/")):
            if facts[name]["content_type"] == "audio/aac":
                big = Reader(GIB, _repeating(data))
            else:
                size, pieces = _grown(data, GIB)
                big = Reader(size, _fetch(pieces))
            media.verify(facts[name]["content_type"], big)
            row.update(big_read=big.bytes_read, big_reads=big.reads)
        rows.append(row)
    grown = [row for row in rows if "big_read" in row]
    return {"rows": rows,
            "median": statistics.median(row["read"] for row in rows), "max": max(row["read"] for row in rows),
            "big_median": statistics.median(row["big_read"] for row in grown),
            "big_max": max(row["big_read"] for row in grown), "big_max_reads": max(row["big_reads"] for row in grown)}
