"""The other formats' parsers, for lib/media.py: pictures, sound, subtitles and fonts, in bounded reads.

- PNG, GIF, WebP, JPEG: the header or chunk stating the dimensions.
- WAV: `fmt ` and `data`. MP3 and ADTS AAC: the first frames (an MP3's Xing/Info or VBRI frame
  count when it has one; otherwise the duration is estimated from the bitrate). Ogg: the first
  page's codec header and the granule position of the last page (one read at the end).
- Subtitles: UTF-8 text (the bytes read) opening as WebVTT or SubRip does. Fonts: the table
  directory (sfnt) or header (WOFF, WOFF2) fits the file.

Every size a file states is checked against the file before it is followed.
"""

from __future__ import annotations

import codecs
import re
import struct

from lib.reading import WINDOW, Media, Mismatch, Reader, Unreadable, be16, be32, le16


def _signed(reader: Reader, signatures: tuple[bytes, ...], declared: str) -> None:
    if not any(reader.read(0, len(signature)) == signature for signature in signatures):
        raise Mismatch(f"The bytes do not begin as {declared} does.")


def _sized(width: int, height: int) -> Media:
    if width <= 0 or height <= 0:
        raise Unreadable(f"its header states a {width}x{height} picture")
    return Media(None, width, height)


def png(reader: Reader, declared: str) -> Media:
    _signed(reader, (b"\x89PNG\r\n\x1a\n",), declared)
    header = reader.exact(8, 16, "header")
    if header[:8] != b"\x00\x00\x00\x0dIHDR":
        raise Unreadable("its first chunk is not IHDR")
    return _sized(be32(header, 8), be32(header, 12))


def gif(reader: Reader, declared: str) -> Media:
    _signed(reader, (b"GIF87a", b"GIF89a"), declared)
    width, height = struct.unpack("<HH", reader.exact(6, 4, "header"))
    return _sized(width, height)


def jpeg(reader: Reader, declared: str) -> Media:
    _signed(reader, (b"\xff\xd8\xff",), declared)
    at = 2
    while True:
        reader.step()
        marker = reader.exact(at, 2, "marker")
        if marker[0] != 0xFF:
            raise Unreadable("a marker is missing where one must be")
        if marker[1] == 0xFF:  # fill byte
            at += 1
            continue
        if marker[1] in (0x01, *range(0xD0, 0xD8)):  # no length follows
            at += 2
            continue
        length = be16(reader.exact(at + 2, 2, "segment"), 0)
        if marker[1] in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            frame = reader.exact(at + 5, 4, "frame header")
            return _sized(be16(frame, 2), be16(frame, 0))
        if marker[1] in (0xDA, 0xD9) or length < 2:
            raise Unreadable("its image data begins before its frame header")
        at += 2 + length


def _riff(reader: Reader, form: bytes, declared: str, wanted: set[bytes] | None) -> dict[bytes, tuple[int, int]]:
    """A RIFF file's top-level chunks, (data start, data end) by kind, read until each `wanted` kind
    is found (None: the first chunk alone), within the end its header states (0, as a stream may
    leave it: the file's end). A chunk's end is cut at the file's end."""
    head = reader.read(0, 12)
    if head[:4] != b"RIFF" or head[8:12] != form:
        raise Mismatch(f"The bytes do not begin as {declared} does.")
    stated = struct.unpack_from("<I", head, 4)[0]
    end = reader.size if stated < 4 else min(8 + stated, reader.size)
    found: dict[bytes, tuple[int, int]] = {}
    at = 12
    while at + 8 <= end and (wanted is None or not wanted <= found.keys()):
        reader.step()
        chunk = reader.exact(at, 8, "chunk header")
        size = struct.unpack_from("<I", chunk, 4)[0]
        found.setdefault(chunk[:4], (at + 8, min(at + 8 + size, reader.size)))
        if wanted is None:
            break
        at += 8 + size + (size & 1)
    return found


def webp(reader: Reader, declared: str) -> Media:
    chunks = _riff(reader, b"WEBP", declared, None)
    if not chunks:
        raise Unreadable("it has no image chunk")
    kind, (start, _) = next(iter(chunks.items()))
    data = reader.exact(start, 10, "image header")
    if kind == b"VP8X":
        return _sized(int.from_bytes(data[4:7], "little") + 1, int.from_bytes(data[7:10], "little") + 1)
    if kind == b"VP8 " and data[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 6)
        return _sized(width & 0x3FFF, height & 0x3FFF)
    if kind == b"VP8L" and data[0] == 0x2F:
        bits = int.from_bytes(data[1:5], "little")
        return _sized((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    raise Unreadable("its first chunk is not a VP8, VP8L or VP8X image")


def _wave_codec(fmt: bytes) -> str:
    """ffmpeg's name for a WAVE format tag (WAVE_FORMAT_EXTENSIBLE's sub-format read through)."""
    tag, bits = le16(fmt, 0), le16(fmt, 14)
    if tag == 0xFFFE and len(fmt) >= 26:
        tag = le16(fmt, 24)
    if tag == 1:
        return "pcm_u8" if bits == 8 else f"pcm_s{bits}le"
    if tag == 3:
        return f"pcm_f{bits}le"
    return {6: "pcm_alaw", 7: "pcm_mulaw", 0x55: "mp3"}.get(tag, f"wave_{tag:#06x}")


def wav(reader: Reader, declared: str) -> Media:
    chunks = _riff(reader, b"WAVE", declared, {b"fmt ", b"data"})
    if b"fmt " not in chunks or b"data" not in chunks:
        raise Unreadable("it lacks its format or data chunk")
    fmt_start, fmt_end = chunks[b"fmt "]
    fmt = reader.exact(fmt_start, 26 if fmt_end - fmt_start >= 26 else 16, "format chunk")
    byte_rate = struct.unpack_from("<I", fmt, 8)[0]
    if byte_rate == 0:
        raise Unreadable("its format chunk states 0 bytes a second")
    start, end = chunks[b"data"]
    return Media((end - start) / byte_rate, codecs=(_wave_codec(fmt),))


def _after_id3(reader: Reader) -> int:
    """Where the audio starts: after an ID3v2 tag, if there is one."""
    head = reader.read(0, 10)
    if head[:3] != b"ID3" or len(head) < 10:
        return 0
    size = 0
    for byte in head[6:10]:
        size = (size << 7) | (byte & 0x7F)
    return 10 + size + (10 if head[5] & 0x10 else 0)


_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_MP3_KBPS = {  # (MPEG-1?, layer): bitrates by index
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_KBPS[(False, 3)] = _MP3_KBPS[(False, 2)]


def _mp3_frame(header: bytes) -> tuple[int, int, int, int, int] | None:
    """An MPEG audio frame header's (layer, bitrate, sample rate, samples, frame bytes), or None."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version, layer = (header[1] >> 3) & 3, 4 - ((header[1] >> 1) & 3)
    rate_index, kbps_index = (header[2] >> 2) & 3, header[2] >> 4
    if version == 1 or layer == 4 or rate_index == 3 or kbps_index in (0, 15):
        return None
    rate = _MP3_RATES[version][rate_index]
    bitrate = _MP3_KBPS[(version == 3, layer)][kbps_index] * 1000
    padding = (header[2] >> 1) & 1
    samples = 384 if layer == 1 else (1152 if layer == 2 or version == 3 else 576)
    length = (12 * bitrate // rate + padding) * 4 if layer == 1 else samples // 8 * bitrate // rate + padding
    return layer, bitrate, rate, samples, length


def mp3(reader: Reader, declared: str) -> Media:
    start = _after_id3(reader)
    first = _mp3_frame(reader.read(start, 4))
    if first is None:
        raise Mismatch(f"No MPEG audio frame begins the bytes, so they are not {declared}.")
    layer, bitrate, rate, samples, length = first
    following = reader.read(start + length, 4)
    if following and _mp3_frame(following) is None:
        raise Unreadable("its second frame does not follow its first")
    frame = reader.read(start, min(length, 200))
    for tag_at in (frame.find(b"Xing"), frame.find(b"Info")):
        if tag_at > 0 and len(frame) >= tag_at + 12 and frame[tag_at + 7] & 1:
            return Media(be32(frame, tag_at + 8) * samples / rate, codecs=(f"mp{layer}",))
    if frame[36:40] == b"VBRI" and len(frame) >= 54:
        return Media(be32(frame, 50) * samples / rate, codecs=(f"mp{layer}",))
    return Media((reader.size - start) * 8 / bitrate, codecs=(f"mp{layer}",))


_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def aac(reader: Reader, declared: str) -> Media:
    """ADTS: the frames in the first window; the duration is theirs if they are the whole file, else
    estimated from their bytes per second."""
    start = at = _after_id3(reader)
    frames, rate = 0, 0
    while at < reader.size and frames < 256:
        reader.step()
        header = reader.read(at, 7)
        if len(header) < 7 or header[0] != 0xFF or header[1] & 0xF6 != 0xF0:
            if frames == 0:
                raise Mismatch(f"No ADTS frame begins the bytes, so they are not {declared}.")
            raise Unreadable(f"frame {frames + 1} does not follow frame {frames}")
        index = (header[2] >> 2) & 0xF
        length = ((header[3] & 3) << 11) | (header[4] << 3) | (header[5] >> 5)
        if index >= len(_AAC_RATES) or length < 7:
            raise Unreadable(f"frame {frames + 1}'s header is malformed")
        rate = _AAC_RATES[index]
        frames, at = frames + 1, at + length
    seconds = frames * 1024 / rate
    if at < reader.size:
        seconds *= (reader.size - start) / (at - start)
    return Media(seconds, codecs=("aac",))


def _ogg_page(reader: Reader, at: int) -> tuple[bytes, int]:
    """An Ogg page's header (27 bytes) and where its data starts."""
    header = reader.exact(at, 27, "page header")
    if header[:5] != b"OggS\x00":
        raise Unreadable("a page does not begin where one must")
    return header, at + 27 + header[26]


def ogg(reader: Reader, declared: str) -> Media:
    if reader.read(0, 4) != b"OggS":
        raise Mismatch(f"The bytes do not begin as an Ogg file does, so they are not {declared}.")
    header, data = _ogg_page(reader, 0)
    packet = reader.read(data, 40)
    serial = header[14:18]
    if packet.startswith(b"OpusHead") and len(packet) >= 12:
        codec, rate, skip = "opus", 48000, int.from_bytes(packet[10:12], "little")
    elif packet.startswith(b"\x01vorbis") and len(packet) >= 16:
        codec, rate, skip = "vorbis", int.from_bytes(packet[12:16], "little"), 0
    elif packet.startswith(b"\x7fFLAC") and len(packet) >= 30:
        codec, rate, skip = "flac", int.from_bytes(packet[27:30], "big") >> 4, 0
    elif packet.startswith((b"\x80theora", b"\x01video")):
        raise Mismatch(f"It is video in Ogg, not {declared}.")
    else:
        raise Unreadable("its first stream is not Opus, Vorbis or FLAC")
    if rate == 0:
        raise Unreadable("its codec header states a sample rate of 0")
    tail_at = max(0, reader.size - WINDOW)
    tail = reader.read(tail_at, reader.size - tail_at)
    granule, at = None, tail.rfind(b"OggS")
    while at >= 0 and granule is None:
        reader.step()
        if tail[at + 14:at + 18] == serial and len(tail) >= at + 14:
            value = int.from_bytes(tail[at + 6:at + 14], "little", signed=True)
            granule = value if value >= 0 else None
        at = tail.rfind(b"OggS", 0, at)
    return Media(max(0, granule - skip) / rate if granule is not None else None, codecs=(codec,))


_SRT_CUE = re.compile(r"\A\s*\d+[ \t]*\r?\n\d+:\d{2}:\d{2}[,.]\d{3}[ \t]+-->[ \t]+\d+:\d{2}:\d{2}[,.]\d{3}")


def _text(reader: Reader, declared: str) -> str:
    """The bytes read as UTF-8 (the first window; a character it cuts is left out)."""
    data = reader.read(0, WINDOW)
    if b"\x00" in data:
        raise Mismatch(f"The bytes hold NUL bytes, so they are not text ({declared}).")
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(data, final=len(data) == reader.size)
    except UnicodeDecodeError as exc:
        raise Unreadable(f"it is not valid UTF-8 (byte {exc.start})") from None
    return text.removeprefix("\ufeff")


def vtt(reader: Reader, declared: str) -> Media:
    if not re.match(r"WEBVTT(?:[ \t\r\n]|\Z)", _text(reader, declared)):
        raise Mismatch(f"It does not open with the WEBVTT header, so it is not {declared}.")
    return Media()


def srt(reader: Reader, declared: str) -> Media:
    if not _SRT_CUE.match(_text(reader, declared)):
        raise Mismatch(f"It does not open with a SubRip cue (a number, then a time range), so it is not {declared}.")
    return Media()


def sfnt(reader: Reader, declared: str) -> Media:
    _signed(reader, (b"\x00\x01\x00\x00", b"true", b"OTTO"), declared)
    tables = be16(reader.exact(4, 2, "font header"), 0)
    if not 1 <= tables <= 256:
        raise Unreadable(f"it states {tables} tables")
    directory = reader.exact(12, 16 * tables, "table directory")
    for index in range(tables):
        reader.step()
        offset, length = struct.unpack_from(">II", directory, 16 * index + 8)
        if offset + length > reader.size:
            raise Unreadable(f"its {directory[16 * index:16 * index + 4]!r} table lies beyond the file's end")
    return Media()


def woff(reader: Reader, declared: str) -> Media:
    _signed(reader, (b"wOF2",) if declared == "font/woff2" else (b"wOFF",), declared)
    length = be32(reader.exact(8, 4, "font header"), 0)
    if length != reader.size:
        raise Unreadable(f"its header states {length} bytes, but {reader.size} landed")
    return Media()
