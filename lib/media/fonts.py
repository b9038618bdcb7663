"""Fonts, by fontTools: the tables a font needs, each decompiled, and the first glyphs' outlines."""

from __future__ import annotations

import logging
import struct
from typing import BinaryIO, cast

from fontTools import ttLib

from lib.media.facts import Limits, Media, Mismatch, Source, Unreadable

TYPES = {"font/ttf", "font/otf", "font/woff", "font/woff2"}
REQUIRED = ("cmap", "head", "hhea", "hmtx", "maxp", "name", "post")  # OpenType's required tables




def prepare() -> None:
    """Each table reader and WOFF2's (with brotli), which fontTools imports on first use."""
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    for tag in (*REQUIRED, "OS/2", "glyf", "loca", "CFF ", "CFF2"):
        ttLib.getTableClass(tag)
    import fontTools.ttLib.woff2  # noqa: F401 - imported for its side effect: loaded before the sandbox closes


def check(declared: str, source: Source, known: bool, limits: Limits) -> Media:
    try:
        face = ttLib.TTFont(cast(BinaryIO, source), lazy=True, fontNumber=0)
    except (ttLib.TTLibError, struct.error, ValueError, EOFError) as exc:
        if not known:
            raise Mismatch(f"The bytes are no font, so they are not {declared}.") from None
        raise Unreadable(f"fontTools does not read it as a font ({exc})") from None
    with face:
        outlines = [tag for tag in ("glyf", "CFF ", "CFF2") if tag in face]
        missing = [tag for tag in REQUIRED if tag not in face]
        if missing or not outlines:
            raise Unreadable(f"it lacks the table{'s' if len(missing) > 1 else ''} a font needs: "
                             f"{', '.join(missing) or 'glyf, CFF or CFF2'}")
        tag = ""
        try:
            for tag in (*REQUIRED, *outlines):
                face[tag]  # each table decompiled: a table directory in front of anything else fails here
            if "glyf" in face:
                tag, glyphs = "glyf", face["glyf"]
                for name in face.getGlyphOrder()[:256]:  # the first glyphs' outlines, expanded
                    glyphs[name].expand(glyphs)
        except (ttLib.TTLibError, struct.error, ValueError, KeyError, IndexError, AssertionError, EOFError):
            raise Unreadable(f"its {tag.strip()} table does not read") from None
    return Media.sane()
