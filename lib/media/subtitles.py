"""Subtitles: text (UTF-8, UTF-16 by its mark, else Latin-1) whose blocks are cues (in WebVTT notes,
styles and regions too), every cue's timing read; a few malformed blocks are skipped, as players skip
them, but not markup or a file of anything else behind a first cue."""

from __future__ import annotations

import codecs
import re

from lib.media.facts import Limits, Media, Mismatch, Source, Unreadable

TYPES = {"text/vtt", "application/x-subrip"}
# Hours optional and any field unpadded, as players take them.
_TIME = r"(?:(\d{1,3}):)?(\d{1,2}):(\d{1,2})[,.](\d{1,3})"
SRT_CUE = re.compile(rf"^{_TIME}[ \t]*-->[ \t]*{_TIME}(?:[ \t].*)?$")
VTT_CUE = SRT_CUE
MARKUP = re.compile(rb"<(?:!doctype|html|head|body|script|iframe|svg|object)\b", re.IGNORECASE)
# Blocks that are not cues (a timing typed wrong, a cue with none) are skipped, as players and FFmpeg
# skip them, while they are a few: at most this share of the blocks and of the text.
STRAYS = 0.25


def prepare() -> None:
    for name in ("utf-8-sig", "utf-16", "latin-1"):
        codecs.lookup(name)  # imported on first use


def check(declared: str, source: Source, known: bool, limits: Limits) -> Media:
    if source.size > limits.max_bytes:
        raise Unreadable(f"a subtitle file of more than {limits.max_bytes // 2**20} MiB")
    raw = source.read_at(0, source.size)
    if MARKUP.search(raw):
        raise Mismatch(f"The bytes hold HTML markup, so they are not {declared}.")
    text = _text(raw)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks, block = [], []  # blocks of lines, split at blank (or white) lines
    for line in lines:
        if line.strip():
            block.append(line.strip())
        elif block:
            blocks.append(block)
            block = []
    if block:
        blocks.append(block)
    if declared == "text/vtt":
        if not blocks or not re.match(r"^WEBVTT(?:[ \t].*)?$", blocks[0][0]):
            raise Mismatch("The bytes do not begin with WEBVTT, so they are not text/vtt.")
        cues = [b for b in blocks[1:] if not b[0].startswith(("NOTE", "STYLE", "REGION"))]
        if not cues:  # a header alone is a WebVTT file with no cue, as the standard allows
            return Media.sane(None, codecs=("webvtt",))
        return _cues(cues, VTT_CUE, "WebVTT", "webvtt", declared)
    return _cues(blocks, SRT_CUE, "SubRip", "subrip", declared)


def _text(raw: bytes) -> str:
    """The file's text: UTF-16 by its byte order mark, else UTF-8 (a mark or not), else Latin-1 (any bytes
    read; an SRT in Windows-1252 or GB2312 still has ASCII timings)."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            pass
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _seconds(match: re.Match[str], first: int) -> float:
    hours, minutes, seconds, millis = (match.group(first + i) for i in range(4))
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(millis.ljust(3, "0")) / 1000


def _cues(blocks: list[list[str]], cue: re.Pattern[str], name: str, codec: str, declared: str) -> Media:
    """The last cue's end; Mismatch where no block is a cue, Unreadable where too many are not."""
    end, strays, stray_bytes = 0.0, 0, 0
    for lines in blocks:
        # A cue's timing is its first line, or its second after an identifier: in SRT a number, in
        # WebVTT any text.
        identified = len(lines) > 1 and (lines[0].isdigit() or codec == "webvtt")
        timing = lines[0] if "-->" in lines[0] else lines[1] if identified else ""
        match = cue.match(timing)
        if match is None:
            strays += 1
            stray_bytes += sum(len(line) for line in lines)
            continue
        end = max(end, _seconds(match, 5))
    cues = len(blocks) - strays
    if cues == 0:
        raise Mismatch(f"The bytes hold no {name} cue, so they are not {declared}.")
    if strays > STRAYS * len(blocks) or stray_bytes > STRAYS * sum(len(line) for b in blocks for line in b):
        raise Unreadable(f"{strays} of its {len(blocks)} blocks are not {name} cues")
    return Media.sane(end, codecs=(codec,))
