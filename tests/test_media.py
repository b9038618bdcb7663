"""The verifier (lib/media.py) on real media and on impostors and hostile files: every type's
fixture gives the facts ffprobe gave when it was made, nothing else passes as it, and no file, however
built, costs more than the budget or ends in anything but a verdict."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest

from lib import media, reading
from lib.mediatypes import CONTENT_TYPES
from lib.reading import Mismatch, Reader, Unreadable

MEDIA = Path(__file__).resolve().parent / "media"
FACTS = json.loads((MEDIA / "facts.json").read_text())
NAMES = sorted(FACTS)


def fixture(name: str) -> bytes:
    return (MEDIA / name).read_bytes()


def verdict(content_type: str, data: bytes, **budget: int) -> tuple[object, Reader]:
    """The facts or the refusal (its class) for `data` declared as `content_type`, and the reader."""
    reader = Reader.of(data, **budget)
    try:
        return media.verify(content_type, reader), reader
    except (Mismatch, Unreadable) as refusal:
        return refusal, reader


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def test_every_content_type_has_a_fixture():
    assert {facts["content_type"] for facts in FACTS.values()} == set(CONTENT_TYPES)


@pytest.mark.parametrize("name", NAMES)
def test_each_fixture_verifies_with_the_facts_ffprobe_gave(name):
    facts = FACTS[name]
    found, reader = verdict(facts["content_type"], fixture(name))
    assert isinstance(found, reading.Media), found
    assert (found.width, found.height) == (facts["width"], facts["height"])
    if facts["content_type"].startswith(("video/", "audio/")):
        assert found.duration_seconds == pytest.approx(facts["duration"], abs=0.05)
        assert list(found.codecs) == facts["streams"]
    assert reader.bytes_read <= len(fixture(name))


IMPOSTORS = {
    "random bytes": random.Random(7).randbytes(4096),
    "an HTML page": b"<!doctype html><html><body>" + b"<p>not media</p>" * 200 + b"</body></html>",
    "plain text": b"Just some words, nothing more.\n" * 100,
}


@pytest.mark.parametrize("content_type", sorted(CONTENT_TYPES))
@pytest.mark.parametrize("impostor", sorted(IMPOSTORS))
def test_random_bytes_html_and_text_are_a_content_mismatch(content_type, impostor):
    found, _ = verdict(content_type, IMPOSTORS[impostor])
    assert isinstance(found, Mismatch), (content_type, impostor, found)


@pytest.mark.parametrize("name", NAMES)
def test_each_fixture_is_refused_as_every_type_it_is_not(name):
    own = FACTS[name]["content_type"]
    for content_type in sorted(CONTENT_TYPES):
        if media.same_kind(content_type, own):
            continue
        found, _ = verdict(content_type, fixture(name))
        assert isinstance(found, Mismatch | Unreadable), (name, content_type, found)


def test_the_mp4_family_is_told_apart_by_its_tracks():
    sound, picture = fixture("sound.m4a"), fixture("clip-faststart.mp4")
    assert "no video track" in str(verdict("video/mp4", sound)[0])
    assert "no audio track" in str(verdict("audio/mp4", picture)[0])
    assert isinstance(verdict("video/quicktime", fixture("clip.mp4"))[0], reading.Media)
    assert isinstance(verdict("audio/mp4", fixture("clip.mp4"))[0], reading.Media)


class Sparse:
    """A large object held as a few pieces at offsets, zeros between: read through `fetch`, counting."""

    def __init__(self, size: int, pieces: dict[int, bytes]):
        self.size, self.pieces = size, pieces

    def fetch(self, start: int, end: int) -> bytes:
        out = bytearray(end - start)
        for at, piece in self.pieces.items():
            lo, hi = max(start, at), min(end, at + len(piece))
            if lo < hi:
                out[lo - start:hi - start] = piece[lo - at:hi - at]
        return bytes(out)


def moov_at_end(mdat_size: int) -> Sparse:
    """clip.mp4's own boxes around an mdat of `mdat_size` bytes, its index (moov) last."""
    data = fixture("clip.mp4")
    boxes, at = {}, 0
    while at < len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        boxes[kind] = data[at:at + size]
        at += size
    assert list(boxes) == [b"ftyp", b"free", b"mdat", b"moov"]  # ffmpeg's default: the index last
    head = boxes[b"ftyp"] + struct.pack(">I", 1) + b"mdat" + struct.pack(">Q", mdat_size)
    return Sparse(len(head) + mdat_size - 16 + len(boxes[b"moov"]),
                  {0: head, len(head) + mdat_size - 16: boxes[b"moov"]})


def test_an_index_at_the_end_of_a_large_file_costs_one_more_read():
    big = moov_at_end(50 * 1024**3)  # 50 GiB of samples, then the index
    reader = Reader(big.size, big.fetch)
    found = media.verify("video/mp4", reader)
    assert (found.duration_seconds, found.width, found.height) == (1.0, 64, 48)
    assert reader.reads == 2 and reader.bytes_read <= 2 * reading.WINDOW


def test_a_file_cut_before_its_index_is_unreadable():
    data = fixture("clip.mp4")
    found, _ = verdict("video/mp4", data[:len(data) - 100])
    assert isinstance(found, Unreadable)


HOSTILE = {
    # A box claiming more than the file holds.
    "a lying box size": ("video/mp4", box(b"ftyp", b"isom" * 4) + struct.pack(">I", 10**9) + b"moov"),
    # A box of size 0 (to its container's end) that is itself the moov and holds only itself.
    "a moov of size 0 holding itself": ("video/mp4", box(b"ftyp", b"isom" * 4) + (b"\x00\x00\x00\x00moov" * 500)),
    # A million empty boxes before any index.
    "many tiny boxes": ("video/mp4", box(b"ftyp", b"isom" * 4) + box(b"free", b"") * 100_000),
    # Traks nested in traks, deeper than any parser should follow.
    "deep boxes": ("video/mp4", box(b"ftyp", b"isom" * 4) + box(b"moov", b"".join(
        [struct.pack(">I", 8 * (2000 - i)) + b"trak" for i in range(2000)]))),
    # free boxes of 100 KiB: every hop is another read.
    "scattered boxes": ("video/mp4", box(b"ftyp", b"isom" * 4) + box(b"free", bytes(100_000)) * 40),
    "an EBML element larger than the file": ("video/webm", b"\x1a\x45\xdf\xa3\x88" + bytes(8)),
    "EBML with unknown sizes all the way": ("video/webm", b"\x1a\x45\xdf\xa3\x84\x42\x82\x81w"
                                            + b"\x18\x53\x80\x67\x01\xff\xff\xff\xff\xff\xff\xff" * 3000),
    "a JPEG of fill bytes": ("image/jpeg", b"\xff\xd8" + b"\xff" * 200_000),
    "a JPEG of empty segments": ("image/jpeg", b"\xff\xd8" + b"\xff\xe1\x00\x02" * 50_000),
    "an Ogg page of lies": ("audio/ogg", b"OggS\x00\x02" + bytes(20) + b"\xff" + b"OggS" * 20_000),
    "AAC frames stating 3 bytes": ("audio/aac", b"\xff\xf1\x50\x80\x00\x7f\xfc" * 50_000),
    "a font of 65,535 tables": ("font/ttf", b"\x00\x01\x00\x00\xff\xff" + bytes(100)),
    "an ID3 tag larger than the file": ("audio/mpeg", b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f" + bytes(100)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_files_end_in_a_verdict_within_the_budget(name):
    content_type, data = HOSTILE[name]
    found, reader = verdict(content_type, data)
    assert isinstance(found, Mismatch | Unreadable), found
    assert reader.bytes_read <= reading.MAX_BYTES and reader.reads <= reading.MAX_READS
    assert reader.steps <= reading.MAX_STEPS + 1


def mutations(data: bytes, rng: random.Random, count: int):
    """`count` damaged copies of `data`: bytes flipped, 32-bit fields set to extremes, cut, spliced."""
    for _ in range(count):
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            how, at = rng.randrange(5), rng.randrange(len(out) or 1)
            if how == 0 and out:
                out[at] ^= 1 << rng.randrange(8)
            elif how == 1 and len(out) >= at + 4:
                out[at:at + 4] = struct.pack(">I", rng.choice([0, 1, 7, 8, 2**31, 2**32 - 1, rng.getrandbits(32)]))
            elif how == 2:
                del out[at:]
            elif how == 3:
                out[at:at] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
            elif how == 4 and out:
                other = rng.randrange(len(out))
                out[at:at + 16] = out[other:other + 16]
        yield bytes(out)


@pytest.mark.parametrize("name", NAMES)
def test_fuzzed_fixtures_end_in_facts_or_a_verdict_within_the_budget(name):
    """300 seeded mutations of each fixture (the same ones every run): nothing raises but the two
    verdicts, and no reader passes its budget."""
    content_type, data = FACTS[name]["content_type"], fixture(name)
    for damaged in mutations(data, random.Random(name), 300):
        found, reader = verdict(content_type, damaged, max_bytes=8192, max_reads=4)
        assert isinstance(found, reading.Media | Mismatch | Unreadable), found
        assert reader.bytes_read <= 8192 and reader.reads <= 4 and reader.steps <= reading.MAX_STEPS + 1
