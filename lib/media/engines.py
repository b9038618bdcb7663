"""The engines, in the decoding child: which one reads a declared type, and the check they share: the
bytes identified by their magic numbers first (a mismatch named), then decoded by the type's engine.

Each engine is a module with `TYPES`, `prepare()` (what it imports on first use, loaded before the
child gives up reading files) and `check(...)`, which answers `Media` or raises Mismatch or
Unreadable; whatever else one raises is a verdict too (lib/media/probe.py `judge`).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Collection
from typing import Protocol

from lib.media import identify
from lib.media.facts import Limits, Media, Mismatch, Source

ENGINES = ("moving", "pictures", "fonts", "subtitles")


class Engine(Protocol):
    TYPES: Collection[str]

    def prepare(self) -> None: ...

    def check(self, declared: str, source: Source, known: bool, limits: Limits) -> Media: ...


def engine(declared: str) -> Engine:
    """The engine that reads `declared`: one already imported first (prepare() imported the child's,
    and the child may import nothing more once it runs as nobody), else each in turn."""
    names = sorted(ENGINES, key=lambda name: f"lib.media.{name}" not in sys.modules)
    for name in names:
        module: Engine = importlib.import_module(f"lib.media.{name}")
        if declared in module.TYPES:
            return module
    raise Mismatch(f"{declared} is not a type the check knows.")


def prepare(declared: str) -> None:
    """Import the engine of `declared` (only that one: each costs its start-up) and what it loads lazily."""
    identify.prepare()
    with contextlib.suppress(Mismatch):  # check() says so
        engine(declared).prepare()


def check(declared: str, source: Source, limits: Limits) -> Media:
    """ffprobe's facts of the bytes, which are `declared` (Mismatch, Unreadable otherwise)."""
    head = source.read_at(0, 261)
    identified = identify.identify(head)
    if identified is not None and not identify.same_kind(identified, declared):
        raise Mismatch(f"The bytes are {identified}, not {declared}.")
    # Bytes whose magic numbers are the type's (or an ID3 tag's) are that type: past here, what fails
    # to read is unreadable_media. Bytes no signature names are a mismatch unless they read as the type.
    known = identified is not None or head.startswith(b"ID3")
    return engine(declared).check(declared, source, known, limits)
