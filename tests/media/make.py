"""Makes the media fixtures in this folder (committed: tests read them, nothing here runs at
test time). One small file per content type uploads take (lib/media/mediatypes.py), each a
second long at 64x48 where it has pictures, and what ffprobe says of each (facts.json), the
answer the verifier (lib/media/) must give.

Run it again only to change a fixture: `make media-fixtures` (Debian's ffmpeg and ffprobe, and
fontTools with brotli from requirements-dev.txt for the fonts).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PICTURE = ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=1"]
SOUND = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=1"]
TAIL = ["-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact"]

# file name -> (content type, ffmpeg arguments between the inputs and the output)
MADE = {
    "clip.mp4": (
        "video/mp4",
        PICTURE + SOUND + ["-c:v", "libx264", "-crf", "40", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "16k"],
    ),
    "clip-faststart.mp4": (
        "video/mp4",
        [*PICTURE, "-c:v", "libx264", "-crf", "40", "-pix_fmt", "yuv420p", "-movflags", "+faststart"],
    ),
    "clip.mov": ("video/quicktime", PICTURE + SOUND + ["-c:v", "mpeg4", "-q:v", "31", "-c:a", "aac", "-b:a", "16k"]),
    "clip.webm": (
        "video/webm",
        PICTURE + SOUND + ["-c:v", "libvpx-vp9", "-crf", "60", "-b:v", "0", "-c:a", "libopus", "-b:a", "16k"],
    ),
    "image.png": ("image/png", [*PICTURE, "-frames:v", "1"]),
    "image.jpg": ("image/jpeg", [*PICTURE, "-frames:v", "1", "-q:v", "20"]),
    "image.webp": ("image/webp", [*PICTURE, "-frames:v", "1", "-c:v", "libwebp", "-quality", "20"]),
    "image.gif": ("image/gif", [*PICTURE, "-frames:v", "1"]),
    "sound.mp3": ("audio/mpeg", [*SOUND, "-c:a", "libmp3lame", "-b:a", "32k"]),
    "sound.wav": ("audio/wav", [*SOUND, "-ar", "8000", "-c:a", "pcm_s16le"]),
    "sound.aac": ("audio/aac", [*SOUND, "-c:a", "aac", "-b:a", "16k", "-f", "adts"]),
    "sound.m4a": ("audio/mp4", [*SOUND, "-c:a", "aac", "-b:a", "16k"]),
    "sound.ogg": ("audio/ogg", [*SOUND, "-c:a", "libvorbis", "-q:a", "0"]),
    "sound.opus": ("audio/ogg", [*SOUND, "-c:a", "libopus", "-b:a", "16k"]),
}
WRITTEN = {
    "captions.vtt": ("text/vtt", "WEBVTT\n\n00:00.000 --> 00:01.000\nHello, caf\u00e9\n"),
    "captions.srt": ("application/x-subrip", "1\n00:00:00,000 --> 00:00:01,000\nHello, caf\u00e9\n"),
}
FONTS = {
    "font.ttf": ("font/ttf", None),
    "font.otf": ("font/otf", None),
    "font.woff": ("font/woff", "woff"),
    "font.woff2": ("font/woff2", "woff2"),
}


def probe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    info = json.loads(out)
    video = [s for s in info["streams"] if s["codec_type"] == "video"]
    return {
        "duration": float(info["format"].get("duration", 0)) or None,
        "width": video[0]["width"] if video else None,
        "height": video[0]["height"] if video else None,
        "streams": [s["codec_name"] for s in info["streams"]],
    }


def font(path: Path, flavor: str | None, cff: bool) -> None:
    from fontTools.fontBuilder import FontBuilder  # only here: fixtures are made rarely
    from fontTools.pens.t2CharStringPen import T2CharStringPen
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    builder = FontBuilder(1000, isTTF=not cff)
    builder.setupGlyphOrder([".notdef", "A"])
    builder.setupCharacterMap({ord("A"): "A"})
    if cff:
        pen = T2CharStringPen(600, None)
        pen.moveTo((0, 0)), pen.lineTo((300, 700)), pen.lineTo((600, 0)), pen.closePath()
        charstrings = {".notdef": T2CharStringPen(600, None).getCharString(), "A": pen.getCharString()}
        builder.setupCFF("FixtureSans", {"FullName": "Fixture Sans"}, charstrings, {})
    else:
        pen = TTGlyphPen(None)
        pen.moveTo((0, 0)), pen.lineTo((300, 700)), pen.lineTo((600, 0)), pen.closePath()
        builder.setupGlyf({".notdef": TTGlyphPen(None).glyph(), "A": pen.glyph()})
    builder.setupHorizontalMetrics({".notdef": (600, 0), "A": (600, 0)})
    builder.setupHorizontalHeader(ascent=800, descent=-200)
    builder.setupNameTable({"familyName": "Fixture Sans", "styleName": "Regular"})
    builder.setupOS2()
    builder.setupPost()
    builder.font.flavor = flavor
    builder.font["head"].created = builder.font["head"].modified = 0  # the same bytes every time
    builder.font.recalcTimestamp = False
    builder.save(str(path))


def main() -> None:
    facts: dict[str, dict] = {}
    for name, (content_type, args) in MADE.items():
        path = HERE / name
        subprocess.run(["ffmpeg", "-v", "error", "-y", *args, *TAIL, str(path)], check=True)
        facts[name] = {"content_type": content_type, **probe(path)}
    for name, (content_type, text) in WRITTEN.items():
        (HERE / name).write_text(text, encoding="utf-8")
        facts[name] = {"content_type": content_type, "duration": None, "width": None, "height": None, "streams": []}
    for name, (content_type, flavor) in FONTS.items():
        font(HERE / name, flavor, cff=name == "font.otf")
        facts[name] = {"content_type": content_type, "duration": None, "width": None, "height": None, "streams": []}
    (HERE / "facts.json").write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
    for name in sorted(facts):
        print(f"{(HERE / name).stat().st_size:>7} {name}", file=sys.stderr)


if __name__ == "__main__":
    main()
