"""Whether an object's bytes are the media declared, and their facts: identify, check, read, within a budget.

`verify(declared, reader)` identifies the bytes by their magic numbers (filetype), checks that
against the declared content type, and reads the facts (`Media`) with the type's parser
(lib/containers.py, lib/formats.py) through a budgeted `Reader` (lib/reading.py). It raises
`Mismatch` when the bytes are not that type at all (another format, no signature) and `Unreadable`
when they begin as it but cannot be read as it (truncated, sizes that lie, past the budget). The
same bytes always get the same verdict.
"""

from __future__ import annotations

from collections.abc import Callable

import filetype

from lib import containers, formats
from lib.mediatypes import ALIASES
from lib.reading import Media, Mismatch, Reader

PARSERS: dict[str, Callable[[Reader, str], Media]] = {
    "video/mp4": containers.iso_bmff, "video/quicktime": containers.iso_bmff, "audio/mp4": containers.iso_bmff,
    "video/webm": containers.webm,
    "image/png": formats.png, "image/jpeg": formats.jpeg, "image/webp": formats.webp, "image/gif": formats.gif,
    "audio/mpeg": formats.mp3, "audio/wav": formats.wav, "audio/aac": formats.aac, "audio/ogg": formats.ogg,
    "text/vtt": formats.vtt, "application/x-subrip": formats.srt,
    "font/ttf": formats.sfnt, "font/otf": formats.sfnt, "font/woff": formats.woff, "font/woff2": formats.woff,
}
# Content types that share one container format, each accepted for the other: the renderer reads
# them alike. A video type still needs a video track, audio/mp4 an audio track (lib/containers.py).
FAMILIES = ({"video/mp4", "video/quicktime", "audio/mp4", "video/x-m4v"}, {"font/ttf", "font/otf"})


def identify(head: bytes) -> str | None:
    """What the bytes' magic numbers say they are (a media type), or None."""
    if head.startswith(b"ID3"):
        return None  # an ID3 tag opens MP3 and AAC files alike: their parsers tell them apart
    kind = filetype.guess(head)
    if kind is None:
        return None
    mime: str = kind.mime
    if mime == "application/font-sfnt":
        return "font/otf" if head[:4] == b"OTTO" else "font/ttf"
    if mime == "application/font-woff":
        return "font/woff2" if head[:4] == b"wOF2" else "font/woff"
    return ALIASES.get(mime, mime)


def same_kind(identified: str, declared: str) -> bool:
    return identified == declared or any(identified in family and declared in family for family in FAMILIES)


def verify(declared: str, reader: Reader) -> Media:
    """The facts of bytes that are `declared` (a canonical content type). Raises Mismatch or Unreadable."""
    if reader.size == 0:
        raise Mismatch(f"The object is empty, so it is not {declared}.")
    head = reader.read(0, 261)  # all filetype looks at
    identified = identify(head)
    if identified is not None and not same_kind(identified, declared):
        raise Mismatch(f"The bytes are {identified}, not {declared}.")
    return PARSERS[declared](reader, declared)
