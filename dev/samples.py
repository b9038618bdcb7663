"""Real media of any size, for the tests, `make smoke` and the bench: a fixture from tests/media/
(the service checks what it gets, lib/media.py), grown in a box its readers skip."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

MEDIA = Path(__file__).resolve().parent.parent / "tests" / "media"


def mp4_of_size(size: int, filler: Callable[[int], bytes] = os.urandom,
                fixture: str = "clip-faststart.mp4") -> bytes:
    """An ISO BMFF file (MP4, MOV, M4A) of exactly `size` bytes: the fixture, then a `free` box of
    `filler`'s bytes (random by default, so each file's checksums are its own)."""
    base = (MEDIA / fixture).read_bytes()
    return base + (size - len(base)).to_bytes(4, "big") + b"free" + filler(size - len(base) - 8)
