"""The containers of moving pictures, read for lib/media.py: ISO BMFF (MP4, QuickTime, M4A) and WebM.

- ISO BMFF: the top-level boxes, skipping `mdat` by its size, so an index (`moov`) at the end
  costs one more read; in `moov` only the path to `mvhd`, `tkhd`, `mdhd`, `hdlr` and `stsd`. No
  box is entered twice or deeper than that path.
- WebM: the EBML header's DocType, then the Segment's Info and Tracks, before its first Cluster.

Every size a file states is checked against its container before it is followed.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from lib.reading import Media, Mismatch, Reader, Unreadable, be16, be32

_ISO_TOP = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"moof", b"mfra", b"meta",
            b"styp", b"sidx", b"pdin", b"prft", b"emsg"}


# The names ffmpeg gives the codecs containers state by their own names (others are kept, lower-cased).
_CODEC_NAMES = {"avc1": "h264", "avc3": "h264", "hvc1": "hevc", "hev1": "hevc", "av01": "av1", "vp08": "vp8",
                "vp09": "vp9", "mp4v": "mpeg4", "mp4a": "aac", "opus": "opus", "fLaC": "flac", ".mp3": "mp3",
                "ac-3": "ac3", "ec-3": "eac3", "jpeg": "mjpeg", "apch": "prores", "apcn": "prores", "apcs": "prores",
                "apco": "prores", "ap4h": "prores", "V_VP8": "vp8", "V_VP9": "vp9", "V_AV1": "av1",
                "A_OPUS": "opus", "A_VORBIS": "vorbis"}


def codec_name(stated: str) -> str:
    return _CODEC_NAMES.get(stated, _CODEC_NAMES.get(stated.lower(), stated.lower()))





def _box(reader: Reader, at: int, end: int) -> tuple[bytes, int, int]:
    """The box at `at` within [at, end): its type, where its payload starts, where it ends."""
    reader.step()
    head = reader.exact(at, 8, "box header")
    size, kind = be32(head, 0), head[4:8]
    start = at + 8
    if size == 1:
        size = int(struct.unpack(">Q", reader.exact(at + 8, 8, "box header"))[0])
        start = at + 16
    elif size == 0:  # to the end of its container
        size = end - at
    if size < start - at or at + size > end:
        raise Unreadable(f"its {kind.decode('latin-1')!r} box states {size} bytes, which its container cannot hold")
    return kind, start, at + size


def _children(reader: Reader, start: int, end: int) -> dict[bytes, list[tuple[int, int]]]:
    """The boxes in [start, end), by type: each one's payload start and end."""
    found: dict[bytes, list[tuple[int, int]]] = {}
    at = start
    while at + 8 <= end:
        kind, payload, at = _box(reader, at, end)
        found.setdefault(kind, []).append((payload, at))
    return found


def _track(reader: Reader, start: int, end: int) -> tuple[bytes, str | None, tuple[int, int], float | None]:
    """A `trak`'s handler, codec, dimensions (display, else coded) and duration."""
    boxes = _children(reader, start, end)
    mdia = _children(reader, *boxes[b"mdia"][0]) if b"mdia" in boxes else {}
    handler = reader.exact(mdia[b"hdlr"][0][0] + 8, 4, "hdlr box") if b"hdlr" in mdia else b""
    duration = _duration(reader, mdia[b"mdhd"][0]) if b"mdhd" in mdia else None
    size = (0, 0)
    if b"tkhd" in boxes:
        tkhd_start, tkhd_end = boxes[b"tkhd"][0]
        if tkhd_end - tkhd_start >= 84:
            dims = reader.exact(tkhd_end - 8, 8, "tkhd box")
            size = (be32(dims, 0) >> 16, be32(dims, 4) >> 16)
    minf = _children(reader, *mdia[b"minf"][0]) if b"minf" in mdia else {}
    stbl = _children(reader, *minf[b"stbl"][0]) if b"stbl" in minf else {}
    codec = None
    if b"stsd" in stbl:
        stsd_start, stsd_end = stbl[b"stsd"][0]
        if be32(reader.exact(stsd_start + 4, 4, "stsd box"), 0) > 0:
            entry = reader.exact(stsd_start + 8, 36 if handler == b"vide" else 8, "sample description")
            codec = codec_name(entry[4:8].decode("latin-1").strip(" \x00")) or None
            if handler == b"vide" and size == (0, 0):
                size = (be16(entry, 32), be16(entry, 34))
    return handler, codec, size, duration


def _duration(reader: Reader, box: tuple[int, int]) -> float | None:
    """Seconds an `mvhd` or `mdhd` states (None: unknown, as a fragmented file's may be)."""
    version = reader.exact(box[0], 1, "header box")[0]
    if version == 1:
        timescale, length = struct.unpack(">IQ", reader.exact(box[0] + 20, 12, "header box"))
        unknown = 2**64 - 1
    else:
        timescale, length = struct.unpack(">II", reader.exact(box[0] + 12, 8, "header box"))
        unknown = 2**32 - 1
    if timescale == 0:
        raise Unreadable("its movie header states a timescale of 0")
    return None if length in (0, unknown) else length / timescale


def iso_bmff(reader: Reader, declared: str) -> Media:
    first = reader.read(4, 4)
    if first not in _ISO_TOP:
        raise Mismatch(f"The bytes do not begin as an MP4/QuickTime file does, so they are not {declared}.")
    at = 0
    moov = None
    while at < reader.size and moov is None:
        kind, payload, at = _box(reader, at, reader.size)
        if kind == b"moov":
            moov = (payload, at)
    if moov is None:
        raise Unreadable("it has no movie index (moov box): it may be cut short")
    boxes = _children(reader, *moov)
    duration = _duration(reader, boxes[b"mvhd"][0]) if b"mvhd" in boxes else None
    tracks = [_track(reader, *trak) for trak in boxes.get(b"trak", [])]
    video = [track for track in tracks if track[0] == b"vide"]
    if declared.startswith("video/") and not video:
        raise Mismatch(f"It holds no video track, so it is not {declared} (audio alone is audio/mp4).")
    if declared.startswith("audio/") and not any(track[0] == b"soun" for track in tracks):
        raise Mismatch(f"It holds no audio track, so it is not {declared}.")
    if duration is None:
        duration = max((track[3] for track in tracks if track[3] is not None), default=None)
    width, height = video[0][2] if video else (0, 0)
    return Media(duration, width or None, height or None,
                 tuple(track[1] for track in tracks if track[1] and track[0] in (b"vide", b"soun")))


def _vint(reader: Reader, at: int, marker: bool) -> tuple[int, int]:
    """An EBML variable-size integer at `at`: its value (the length marker kept for an ID) and length."""
    first = reader.exact(at, 1, "element header")[0]
    length = 9 - first.bit_length() if first else 9
    if length > 8 or (marker and length > 4):
        raise Unreadable("an element header is malformed")
    data = reader.exact(at, length, "element header")
    value = int.from_bytes(data, "big")
    if not marker:
        value &= (1 << (7 * length)) - 1
        if value == (1 << (7 * length)) - 1:
            value = -1  # unknown size
    return value, length


def _elements(reader: Reader, start: int, end: int,
              stop: Callable[[int], bool] = lambda _: False) -> Iterator[tuple[int, int, int]]:
    """The EBML elements in [start, end): (id, data start, data end); unknown sizes run to `end`."""
    at = start
    while at < end:
        reader.step()
        ident, id_length = _vint(reader, at, True)
        size, size_length = _vint(reader, at + id_length, False)
        data = at + id_length + size_length
        stop_at = end if size < 0 else data + size
        if stop_at > end:
            raise Unreadable(f"an element ({ident:#x}) states more bytes than its container holds")
        yield ident, data, stop_at
        if stop(ident):
            return
        at = stop_at


def _ebml_value(reader: Reader, start: int, end: int, kind: str) -> int | float | str:
    if end - start > 64:
        raise Unreadable("a header value is longer than any such value is")
    data = reader.exact(start, end - start, "header value")
    if kind == "float":
        return struct.unpack(">f" if len(data) == 4 else ">d", data)[0] if len(data) in (4, 8) else 0.0
    if kind == "str":
        return data.rstrip(b"\x00").decode("latin-1")
    return int.from_bytes(data, "big")


def webm(reader: Reader, declared: str) -> Media:
    if reader.read(0, 4) != b"\x1a\x45\xdf\xa3":
        raise Mismatch(f"The bytes do not begin as a WebM file does, so they are not {declared}.")
    elements = _elements(reader, 0, reader.size)
    _, header_start, header_end = next(elements)
    doc_type = next((_ebml_value(reader, s, e, "str") for i, s, e in _elements(reader, header_start, header_end)
                     if i == 0x4282), "")
    if doc_type != "webm":
        raise Mismatch(f"It is a Matroska file of type {doc_type!r}, not WebM, so it is not {declared}.")
    segment = next((element for element in elements if element[0] == 0x18538067), None)
    if segment is None:
        raise Unreadable("it has no Segment")
    scale, duration, tracks = 1_000_000, None, None
    # Info and Tracks come before the first Cluster (a browser's recording gives Clusters no size).
    for ident, start, end in _elements(reader, segment[1], segment[2], stop=lambda i: i == 0x1F43B675):
        if ident == 0x1549A966:  # Info
            for sub, s, e in _elements(reader, start, end):
                if sub == 0x2AD7B1:
                    scale = int(_ebml_value(reader, s, e, "int"))
                elif sub == 0x4489:
                    duration = float(_ebml_value(reader, s, e, "float"))
        elif ident == 0x1654AE6B:  # Tracks
            tracks = [_webm_track(reader, s, e) for sub, s, e in _elements(reader, start, end) if sub == 0xAE]
            break
    if tracks is None:
        raise Unreadable("it has no Tracks before its first Cluster")
    video = [track for track in tracks if track[0] == 1]
    if not video:
        raise Mismatch(f"It holds no video track, so it is not {declared}.")
    seconds = duration * scale / 1e9 if duration else None
    return Media(seconds, video[0][2] or None, video[0][3] or None,
                 tuple(codec_name(track[1]) for track in tracks if track[1]))


def _webm_track(reader: Reader, start: int, end: int) -> tuple[int, str, int, int]:
    kind, codec, width, height = 0, "", 0, 0
    for ident, s, e in _elements(reader, start, end):
        if ident == 0x83:
            kind = int(_ebml_value(reader, s, e, "int"))
        elif ident == 0x86:
            codec = str(_ebml_value(reader, s, e, "str"))
        elif ident == 0xE0:
            for sub, vs, ve in _elements(reader, s, e):
                if sub in (0xB0, 0xBA):
                    value = int(_ebml_value(reader, vs, ve, "int"))
                    width, height = (value, height) if sub == 0xB0 else (width, value)
    return kind, codec, width, height
