"""Reading an object within a budget: the Reader parsers read through, and what they return.

The `Reader` makes ranged reads through `fetch(start, end)`, cached in windows, within a budget
of bytes, reads and parse steps. The budget is counted, never timed, so a verdict cannot depend on
how busy the machine is; the reads themselves are bounded by the Storage client's timeouts
(lib/clients.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

WINDOW = 64 * 1024  # what one read asks for at least: a format's headers fit in one
MAX_BYTES = 1024 * 1024  # per object, all reads together
MAX_READS = 16
MAX_STEPS = 4096  # boxes, elements, chunks, markers, frames or pages a parser may visit


def be16(data: bytes, at: int) -> int:
    return int(struct.unpack_from(">H", data, at)[0])


def le16(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<H", data, at)[0])


def be32(data: bytes, at: int) -> int:
    return int(struct.unpack_from(">I", data, at)[0])


class Mismatch(Exception):
    """The bytes are not the declared type at all (`rejection.code` content_mismatch)."""


class Unreadable(Exception):
    """The bytes begin as the declared type but cannot be read as it (unreadable_media)."""


@dataclass(frozen=True)
class Media:
    """What the bytes hold, where their format states it."""

    duration_seconds: float | None = None
    width: int | None = None
    height: int | None = None
    codecs: tuple[str, ...] = ()

    def as_record(self) -> dict[str, object]:
        return {"duration_seconds": None if self.duration_seconds is None else round(self.duration_seconds, 3),
                "width": self.width, "height": self.height, "codecs": list(self.codecs)}


Fetch = Callable[[int, int], bytes]  # bytes [start, end) of the object


@dataclass
class Reader:
    """Ranged reads of one object of `size` bytes, within the budget."""

    size: int
    fetch: Fetch
    max_bytes: int = MAX_BYTES
    max_reads: int = MAX_READS
    max_steps: int = MAX_STEPS
    bytes_read: int = 0
    reads: int = 0
    steps: int = 0
    _windows: list[tuple[int, bytes]] = field(default_factory=list, init=False)

    @classmethod
    def of(cls, data: bytes, **budget: int) -> Reader:
        """A reader of bytes in memory (tests, fuzzing)."""
        return cls(len(data), lambda start, end: data[start:end], **budget)

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` (fewer at the end of the object)."""
        if offset < 0 or length < 0:
            raise Unreadable("its structure points outside the file")
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        for start, data in self._windows:
            if start <= offset and end <= start + len(data):
                return data[offset - start:end - start]
        # A whole window if the budget allows, else the least that answers.
        for want in (min(max(end, offset + WINDOW), self.size), end):
            if self.reads < self.max_reads and self.bytes_read + (want - offset) <= self.max_bytes:
                break
        else:
            raise Unreadable(f"it could not be read within the verification budget ({self.max_bytes:,} bytes "
                             f"in {self.max_reads} reads)")
        data = self.fetch(offset, want)
        self.reads += 1
        self.bytes_read += len(data)
        self._windows.append((offset, data))
        return data[:end - offset]

    def exact(self, offset: int, length: int, what: str) -> bytes:
        """Exactly `length` bytes at `offset`, or Unreadable naming `what` was cut short."""
        data = self.read(offset, length)
        if len(data) != length:
            raise Unreadable(f"it ends inside its {what}")
        return data

    def step(self) -> None:
        """Count one visit of a structure; too many is a file built to exhaust us."""
        self.steps += 1
        if self.steps > self.max_steps:
            raise Unreadable(f"it holds more than {self.max_steps} structures before its facts")
