"""Fonts, by fontTools: every table decompiled (as fontTools itself opens a font), and the first glyphs'
outlines expanded; a font must have the header and glyph count every sfnt has."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import struct
from typing import BinaryIO, cast

import fontTools.ttLib.tables
from fontTools import ttLib

from lib.media.facts import Limits, Media, Mismatch, Source, Unreadable

TYPES = {"font/ttf", "font/otf", "font/woff", "font/woff2"}
REQUIRED = ("head", "maxp")  # what every sfnt has: its header and its glyph count
GLYPHS = 256  # outlines expanded, from the first


def prepare() -> None:
    """Every table's reader, WOFF2's (with brotli) and CFF's, which fontTools imports on first use."""
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    for module in pkgutil.walk_packages(fontTools.ttLib.tables.__path__, "fontTools.ttLib.tables."):
        importlib.import_module(module.name)
    for name in ("fontTools.ttLib.woff2", "fontTools.cffLib", "fontTools.misc.psCharStrings"):
        importlib.import_module(name)


def check(declared: str, source: Source, known: bool, limits: Limits) -> Media:
    try:
        face = ttLib.TTFont(cast(BinaryIO, source), lazy=True, fontNumber=0)
    except (ttLib.TTLibError, struct.error, ValueError, EOFError) as exc:
        if not known:
            raise Mismatch(f"The bytes are no font, so they are not {declared}.") from None
        raise Unreadable(f"fontTools does not read it as a font ({exc})") from None
    with face:
        missing = [tag for tag in REQUIRED if tag not in face]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            raise Unreadable(f"it lacks the table{plural} every font has: {', '.join(missing)}")
        tag = ""
        try:
            for tag in face.keys():  # noqa: SIM118 - a TTFont is not iterable: keys() is how it lists its tables
                face[tag]  # each table decompiled: a table directory in front of anything else fails here
            if "glyf" in face:
                tag, glyphs = "glyf", face["glyf"]
                for name in face.getGlyphOrder()[:GLYPHS]:
                    glyphs[name].expand(glyphs)
        except (
            ttLib.TTLibError,
            struct.error,
            ValueError,
            KeyError,
            IndexError,
            AssertionError,
            EOFError,
            TypeError,
            AttributeError,
        ):  # fontTools' words for a table whose bytes are not what it says
            raise Unreadable(f"its {tag.strip()} table does not read") from None
    return Media.sane()
