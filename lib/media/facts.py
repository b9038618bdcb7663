"""What the media check answers, and the bounds every fact keeps (pure: the child and the API share it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

CONTENT_MISMATCH, UNREADABLE_MEDIA = "content_mismatch", "unreadable_media"

# The bounds a fact must hold to be stated. The engines give none outside them, and the API
# (lib/api/models.py MediaFacts) shows a stored one outside them as null: JSON never carries NaN,
# Infinity, a negative duration or a picture no decoder would allocate.
MAX_DURATION_SECONDS = 31 * 24 * 3600.0  # a month: no real file the renderer takes is longer
MAX_DIMENSION = 65535  # the most JPEG, WebP and FFmpeg's image checks allow on a side


def sane_duration(value: object) -> float | None:
    """`value` as a duration in seconds (rounded to the millisecond), or None where it is no sane one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value)
    return round(seconds, 3) if math.isfinite(seconds) and 0 <= seconds <= MAX_DURATION_SECONDS else None


def sane_dimension(value: object) -> int | None:
    """`value` as a width or height in pixels, or None where it is no sane one."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIMENSION:
        return None
    return value


class Mismatch(Exception):
    """The bytes are not the declared type at all (content_mismatch)."""


class Unreadable(Exception):
    """The bytes begin as the declared type but do not decode as it (unreadable_media)."""


class Source(Protocol):
    """The object an engine reads: a seekable binary file of `size` bytes, and ranges of it."""

    size: int

    def read(self, size: int = -1, /) -> bytes | None: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...

    def read_at(self, offset: int, length: int) -> bytes: ...


@dataclass(frozen=True)
class Media:
    """What the bytes hold, as ffprobe states it: duration (s), width and height (pixels), and each
    stream's codec by FFmpeg's name, in stream order."""

    duration_seconds: float | None = None
    width: int | None = None
    height: int | None = None
    codecs: tuple[str, ...] = ()

    @classmethod
    def sane(
        cls, duration: object = None, width: object = None, height: object = None, codecs: tuple[str, ...] = ()
    ) -> Media:
        """Facts kept within the bounds above (a fact outside them is absent)."""
        return cls(sane_duration(duration), sane_dimension(width), sane_dimension(height), tuple(codecs))

    def as_record(self) -> dict[str, object]:
        return {
            "duration_seconds": self.duration_seconds,
            "width": self.width,
            "height": self.height,
            "codecs": list(self.codecs),
        }


@dataclass(frozen=True)
class Budget:
    """What one check may take: counted, never timed, so a verdict never depends on the clock
    (`cpu_seconds` is CPU time, not wall time: the same bytes cost the same)."""

    max_bytes: int = 64 * 1024 * 1024  # all ranged reads together
    max_reads: int = 64
    first_window: int = 256 * 1024  # what a read asks for at least
    max_window: int = 8 * 1024 * 1024  # a run of sequential reads doubles its window up to this
    memory_bytes: int = 512 * 1024 * 1024  # the decoding child's address space (its imports take ~130 MiB)
    cpu_seconds: int = 4  # the decoding child's CPU time
    max_pixels: int = 50_000_000  # a picture larger than this is a decompression bomb, refused


@dataclass(frozen=True)
class Limits:
    """What the engines are told of the budget (the child's own limits are the kernel's)."""

    max_pixels: int
    max_bytes: int


@dataclass
class Usage:
    """What a check took."""

    bytes_read: int = 0
    reads: int = 0
    cpu_ms: float = 0.0
    peak_rss_kib: int = 0  # the decoding child's, at its end
    sandbox: str = ""  # "seccomp" where the child's filter was installed, "limits only" where the kernel refused it


@dataclass(frozen=True)
class Verdict:
    """`media` when the bytes are the type declared; else the refusal's `code` and `reason` (a clause
    for the rejection's message), and `failure`, the type of what a decoder raised where one did."""

    media: Media | None
    code: str | None = None
    reason: str = ""
    failure: str | None = None
    usage: Usage = field(default_factory=Usage)

    @property
    def completed(self) -> bool:
        return self.media is not None
