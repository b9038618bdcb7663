"""Subtitles: UTF-8 text whose every block is a cue (or, in WebVTT, a note, style or region)."""

from __future__ import annotations

import codecs
import re

from lib.media.facts import Limits, Media, Mismatch, Source, Unreadable

TYPES = {"text/vtt", "application/x-subrip"}
_SRT_TIME = r"(\d{1,3}):([0-5]\d):([0-5]\d)[,.](\d{1,3})"
_VTT_TIME = r"(?:(\d{1,3}):)?([0-5]\d):([0-5]\d)\.(\d{3})"
SRT_CUE = re.compile(rf"^{_SRT_TIME}\s*-->\s*{_SRT_TIME}(?:\s+.*)?$")
VTT_CUE = re.compile(rf"^{_VTT_TIME}[ \t]+-->[ \t]+{_VTT_TIME}(?:[ \t]+.*)?$")




def prepare() -> None:
    codecs.lookup("utf-8-sig")  # imported on first use


def check(declared: str, source: Source, known: bool, limits: Limits) -> Media:
    if source.size > limits.max_bytes:
        raise Unreadable(f"a subtitle file of more than {limits.max_bytes // 2**20} MiB")
    raw = source.read_at(0, source.size)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Mismatch(f"The bytes are not UTF-8 text, so they are not {declared}.") from None
    blocks = [b.strip("\n").split("\n") for b in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").replace("\r", "\n"))
              if b.strip()]
    if declared == "text/vtt":
        return _vtt(blocks)
    return _srt(blocks)


def _seconds(match: re.Match[str], first: int) -> float:
    hours, minutes, seconds, millis = (match.group(first + i) for i in range(4))
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(millis.ljust(3, "0")) / 1000


def _srt(blocks: list[list[str]]) -> Media:
    if not blocks:
        raise Mismatch("The bytes hold no SubRip cue, so they are not application/x-subrip.")
    end = 0.0
    for number, lines in enumerate(blocks, 1):
        timing = lines[1] if len(lines) > 1 and lines[0].strip().isdigit() else lines[0]
        match = SRT_CUE.match(timing.strip())
        if match is None:
            refusal = Mismatch if number == 1 else Unreadable
            raise refusal(f"block {number} of the file is not a SubRip cue" + (
                ", so it is not application/x-subrip." if number == 1 else ""))
        end = max(end, _seconds(match, 5))
    return Media.sane(end, codecs=("subrip",))


def _vtt(blocks: list[list[str]]) -> Media:
    if not blocks or not re.match(r"^WEBVTT(?:[ \t].*)?$", blocks[0][0]):
        raise Mismatch("The bytes do not begin with WEBVTT, so they are not text/vtt.")
    end = 0.0
    for number, lines in enumerate(blocks[1:], 2):
        if lines[0].startswith(("NOTE", "STYLE", "REGION")):
            continue
        timing = lines[1] if len(lines) > 1 and "-->" not in lines[0] else lines[0]
        match = VTT_CUE.match(timing.strip())
        if match is None:
            raise Unreadable(f"block {number} of the file is not a WebVTT cue")
        end = max(end, _seconds(match, 5))
    return Media.sane(end, codecs=("webvtt",))
