"""What bytes are by their magic numbers (filetype), and which declared types they may stand for."""

from __future__ import annotations

import codecs

import filetype

from lib.media.mediatypes import ALIASES

# Content types that share one format, each accepted for the other: the renderer reads them alike
# (a video type still needs a video track, audio/mp4 an audio track: lib/media/moving.py); an
# animated PNG is a PNG to every browser.
FAMILIES = (
    {"video/mp4", "video/quicktime", "audio/mp4", "video/x-m4v"},
    {"font/ttf", "font/otf"},
    {"image/png", "image/apng"},
)


def prepare() -> None:
    """filetype's matchers, some of which import a text codec on first use (ISO BMFF's: "hex")."""
    codecs.lookup("hex")
    identify(b"\x00\x00\x00\x18ftypisom" + bytes(249))


def identify(head: bytes) -> str | None:
    """What the bytes' magic numbers say they are (a media type), or None."""
    if head[4:12] == b"ftypcrx ":  # Canon's CR3 raw photo: ISO BMFF, which filetype takes for an MP4
        return "image/x-canon-cr3"
    if head.startswith(b"ID3"):
        return None  # an ID3 tag opens MP3 and AAC files alike: their demuxers tell them apart
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
