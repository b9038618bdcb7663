"""The media check (lib/media/) on real media, on impostors, disguised, broken and hostile files:
every type's fixture is completed with the facts ffprobe gave, nothing else passes as it, a header
with anything behind it is refused, a long many-track file fits the budget, and nothing a decoder
does (raise, crash, hang, run out of memory) is anything but a verdict, or a 503 where it is ours."""

from __future__ import annotations

import io
import json
import math
import random
import signal
import struct
import time
from pathlib import Path

import pytest
from PIL import Image

from dev.samples import long_mp4
from lib import media
from lib.api.models import MediaFacts
from lib.media import engines, probe, sandbox
from lib.media.facts import CONTENT_MISMATCH, UNREADABLE_MEDIA, Budget, Limits, Verdict
from lib.media.mediatypes import CONTENT_TYPES
from tests.conftest import ROOT

MEDIA = Path(__file__).resolve().parent  # the fixtures beside this file
FACTS = json.loads((MEDIA / "facts.json").read_text())
NAMES = sorted(FACTS)
LIMITS = Limits(media.BUDGET.max_pixels, media.BUDGET.max_bytes)


def fixture(name: str) -> bytes:
    return (MEDIA / name).read_bytes()


def checked(content_type: str, data: bytes, budget: Budget = media.BUDGET) -> Verdict:
    """The verdict of the real check: a sandboxed child, served `data` as Storage would serve it."""
    return media.check(content_type, len(data), lambda start, end: data[start:end], time.monotonic() + 60, budget)


class Memory(io.BytesIO):
    """An object in memory, as the engines read one (lib/media/facts.py Source)."""

    over_budget = False

    def __init__(self, data: bytes):
        super().__init__(data)
        self.size = len(data)

    def read_at(self, offset: int, length: int) -> bytes:
        return self.getvalue()[offset : offset + length]


def judged(content_type: str, data: bytes) -> dict[str, object]:
    """The verdict's fields from the engines run here, in this process (for the many checks of a
    table: a child each would take minutes); the child runs the very same `judge`."""
    return probe.judge(content_type, Memory(data), LIMITS)  # type: ignore[arg-type]  # a Remote in the child; any Source reads alike


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def top_boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    boxes, at = [], 0
    while at < len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        boxes.append((kind, at, size))
        at += size
    return boxes


# -- real media ----------------------------------------------------------------------------------


def test_every_content_type_has_a_fixture():
    assert {facts["content_type"] for facts in FACTS.values()} == set(CONTENT_TYPES)


@pytest.mark.parametrize("name", NAMES)
def test_each_fixture_is_completed_with_the_facts_ffprobe_gave(name):
    facts = FACTS[name]
    found = checked(facts["content_type"], fixture(name))
    assert found.media is not None, (found.code, found.reason, found.failure)
    assert (found.media.width, found.media.height) == (facts["width"], facts["height"])
    if facts["content_type"].startswith(("video/", "audio/")):
        assert found.media.duration_seconds == pytest.approx(facts["duration"], abs=0.05)
        assert list(found.media.codecs) == facts["streams"]
    assert 0 < found.usage.bytes_read <= len(fixture(name))
    assert found.usage.reads == 1
    assert found.usage.cpu_ms > 0
    assert found.usage.sandbox in ("seccomp", "limits only")


@pytest.mark.parametrize(("name", "codec"), [("captions.srt", "subrip"), ("captions.vtt", "webvtt")])
def test_subtitles_are_read_cue_by_cue_with_ffmpegs_codec_name_and_their_end(name, codec):
    found = judged(FACTS[name]["content_type"], fixture(name))
    assert found["media"] == {"duration_seconds": 1.0, "width": None, "height": None, "codecs": [codec]}


def test_an_srt_without_cue_numbers_and_with_crlf_is_read():
    srt = b"00:00:01,000 --> 00:00:02,500\r\nHello\r\n\r\n00:00:03,000 --> 00:00:04,250\r\nthere\r\n"
    assert judged("application/x-subrip", srt)["media"]["duration_seconds"] == 4.25  # type: ignore[index]  # a dict here


@pytest.mark.parametrize(
    ("encoding", "data"),
    [
        ("UTF-16 with its mark", "1\n00:00:01,000 --> 00:00:02,000\nÉté\n".encode("utf-16")),
        ("Windows-1252", "1\n00:00:01,000 --> 00:00:02,000\nCaf\xe9\n".encode("cp1252")),
    ],
)
def test_an_srt_in_another_encoding_is_read(encoding, data):
    assert judged("application/x-subrip", data)["media"]["duration_seconds"] == 2.0  # type: ignore[index]  # a dict here


def test_a_few_malformed_cues_are_skipped_as_players_skip_them_but_markup_is_refused():
    cues = "".join(f"{n}\n00:00:{n:02d},000 --> 00:00:{n:02d},500\nline {n}\n\n" for n in range(1, 20))
    typo = cues + "20\n00:00:20,000 --> 00:00:2x,500\nline 20\n"
    assert judged("application/x-subrip", typo.encode())["media"]["duration_seconds"] == 19.5  # type: ignore[index]  # a dict here
    junk = cues + "\n".join(f"junk line {n}" for n in range(200))
    assert judged("application/x-subrip", junk.encode())["code"] == UNREADABLE_MEDIA
    markup = cues + "<script>alert(1)</script>\n"
    assert judged("application/x-subrip", markup.encode())["code"] == CONTENT_MISMATCH


def test_unpadded_webvtt_timings_and_white_lines_between_blocks_are_read():
    vtt = b"WEBVTT\n\nNOTE made by hand\n   \n1\n0:0:1.5 --> 0:0:3.25 align:middle\nhello\n"
    assert judged("text/vtt", vtt)["media"]["duration_seconds"] == 3.25  # type: ignore[index]  # a dict here


def test_a_picture_larger_than_a_window_is_read_across_windows():
    """Pillow reads chunks that span the parent's windows: each read gets every byte it asks for."""
    out = io.BytesIO()
    Image.frombytes("RGB", (700, 700), random.Random(3).randbytes(700 * 700 * 3)).save(out, format="PNG")
    assert len(out.getvalue()) > 3 * media.BUDGET.first_window
    found = checked("image/png", out.getvalue())
    assert found.media is not None, found
    assert found.media.width == 700, found
    assert found.usage.reads >= 2, found


def test_an_animated_png_is_a_png():
    frames = [Image.new("RGB", (32, 24), colour) for colour in ("red", "green", "blue")]
    out = io.BytesIO()
    frames[0].save(out, format="PNG", save_all=True, append_images=frames[1:], duration=100)
    assert out.getvalue()[37:41] == b"acTL"  # an APNG, as a browser would show it
    found = checked("image/png", out.getvalue())
    assert found.media is not None
    assert found.media.codecs == ("apng",)
    assert found.media.width == 32


# -- impostors -------------------------------------------------------------------------------------

IMPOSTORS = {
    "random bytes": random.Random(7).randbytes(4096),
    "an HTML page": b"<!doctype html><html><body>" + b"<p>not media</p>" * 200 + b"</body></html>",
    "plain text": b"Just some words, nothing more.\n" * 100,
}


@pytest.mark.parametrize("content_type", sorted(CONTENT_TYPES))
@pytest.mark.parametrize("impostor", sorted(IMPOSTORS))
def test_random_bytes_html_and_text_are_a_content_mismatch(content_type, impostor):
    found = judged(content_type, IMPOSTORS[impostor])
    assert found.get("code") == CONTENT_MISMATCH, (content_type, impostor, found)


@pytest.mark.parametrize("name", NAMES)
def test_each_fixture_is_refused_as_every_type_it_is_not(name):
    own = FACTS[name]["content_type"]
    for content_type in sorted(CONTENT_TYPES):
        if engines.identify.same_kind(content_type, own):
            continue
        found = judged(content_type, fixture(name))
        assert found.get("code") in (CONTENT_MISMATCH, UNREADABLE_MEDIA), (name, content_type, found)


def test_the_mp4_family_is_told_apart_by_its_tracks():
    assert "no video track" in str(judged("video/mp4", fixture("sound.m4a"))["reason"])
    assert "no audio track" in str(judged("audio/mp4", fixture("clip-faststart.mp4"))["reason"])
    assert "media" in judged("video/quicktime", fixture("clip.mp4"))
    assert "media" in judged("audio/mp4", fixture("clip.mp4"))


# -- disguised and broken: a format's header, and anything behind it --------------------------------

HTML = b"<!doctype html><html><body><script>fetch('/steal')</script>" + b"<p>not media</p>" * 300 + b"</body></html>"


def _disguised() -> dict[str, tuple[str, bytes]]:
    png, jpg, mp3, mp4, faststart, ttf = (
        fixture(n) for n in ("image.png", "image.jpg", "sound.mp3", "clip.mp4", "clip-faststart.mp4", "font.ttf")
    )
    sof = jpg.index(b"\xff\xc0")
    sof_end = sof + 2 + struct.unpack(">H", jpg[sof + 2 : sof + 4])[0]
    tag_end = 10 + sum(b << (7 * (3 - i)) for i, b in enumerate(mp3[6:10])) if mp3.startswith(b"ID3") else 0
    first = mp3[tag_end : tag_end + 417]  # 128 kb/s at 44.1 kHz: 417-byte frames

    def mdat_as(data: bytes, payload: bytes | None) -> bytes:
        return b"".join(
            data[at : at + size]
            if kind != b"mdat"
            else b""
            if payload is None
            else box(b"mdat", payload.ljust(size - 8, b" ")[: size - 8])
            for kind, at, size in top_boxes(data)
        )

    tables = struct.unpack(">H", ttf[4:6])[0]
    return {
        "a GIF89a header, then JavaScript": ("image/gif", b"GIF89a\x40\x00\x30\x00\x00\x00\x00" + b"alert(1);" * 300),
        "a PNG signature and IHDR, then HTML": ("image/png", png[:33] + HTML),
        "a JPEG start and frame header, then HTML": ("image/jpeg", b"\xff\xd8" + jpg[sof:sof_end] + HTML),
        "an MP4 whose mdat holds HTML": ("video/mp4", mdat_as(mp4, HTML)),
        "an MP4 with its index first, whose mdat holds HTML": ("video/mp4", mdat_as(faststart, HTML)),
        "an MP4 whose mdat is missing": ("video/mp4", mdat_as(mp4, None)),
        "two MP3 frames, then HTML": ("audio/mpeg", mp3[:tag_end] + first * 2 + HTML * 4),
        "a WEBVTT header, then HTML": ("text/vtt", b"WEBVTT\n\n" + HTML),
        "an SRT cue, then HTML": ("application/x-subrip", b"1\n00:00:00,000 --> 00:00:01,000\nhi\n\n" + HTML),
        "a font's table directory, then HTML": ("font/ttf", ttf[: 12 + 16 * tables] + HTML),
        "an ID3 tag alone, as AAC": ("audio/aac", b"ID3\x04\x00\x00\x00\x00\x00\x00"),
        "an AAC cut at the end of its tag": (
            "audio/aac",
            b"ID3\x04\x00\x00\x00\x00\x00\x00" + fixture("sound.aac")[:7],
        ),
        "an MP3 of 128 bytes": ("audio/mpeg", mp3[:128]),
        "an MP3 cut inside its first frame": ("audio/mpeg", mp3[: tag_end + 200]),
        "an MP4 cut before the end of its index": ("video/mp4", mp4[:-200]),
        "an MP4 with its index first, cut in half": ("video/mp4", faststart[: len(faststart) // 2]),
        "an Ogg of header pages only": ("audio/ogg", fixture("sound.ogg")[:3000]),
        "a Canon CR3 raw photo (ISO BMFF, brand crx, CRAW tracks)": (
            "video/mp4",
            mp4[:8] + b"crx " + mp4[12:].replace(b"avc1", b"CRAW"),
        ),
        "a PNG whose header states 0 x 0": ("image/png", png[:16] + bytes(8) + png[24:]),
        "a PNG whose IHDR fails its CRC": ("image/png", png[:29] + b"\x00\x00\x00\x00" + png[33:]),
    }


DISGUISED = _disguised()


@pytest.mark.parametrize("name", sorted(DISGUISED))
def test_disguised_and_broken_files_are_rejected(name):
    content_type, data = DISGUISED[name]
    found = checked(content_type, data)
    assert found.media is None, found
    assert found.code in (CONTENT_MISMATCH, UNREADABLE_MEDIA), found
    assert found.reason


def test_a_truncated_mp3_does_not_keep_the_duration_its_header_claims():
    """An MP3 whose Xing header counts 10 s of frames, cut after 2 s: its header is not backed."""
    frames = _mp3_frames(10.0)
    cut = frames[: len(frames) // 5]
    whole = judged("audio/mpeg", frames)
    assert whole["media"]["duration_seconds"] == pytest.approx(10.0, abs=0.1)  # type: ignore[index]  # a dict here
    found = judged("audio/mpeg", cut)
    assert found.get("code") == UNREADABLE_MEDIA, found
    assert "cut short" in str(found["reason"]), found


def _mp3_frames(seconds: float) -> bytes:
    """A real MP3 (LAME, with its Xing header) of `seconds` of silence, made by the service's FFmpeg."""
    import av

    out = io.BytesIO()
    with av.open(out, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=44100, layout="mono")
        silence = av.AudioFrame(format="s16p", layout="mono", samples=1152)
        silence.sample_rate = 44100
        silence.planes[0].update(bytes(silence.planes[0].buffer_size))
        for n in range(int(seconds * 44100 / 1152)):
            silence.pts = n * 1152
            container.mux(stream.encode(silence))
        container.mux(stream.encode(None))
    return out.getvalue()


# -- real shapes the header parsers refused or misnamed (issue 31) --------------------------------------


def _made(
    format_: str, codec: str, options: dict[str, str] | None = None, video: str | None = None, rate: int = 44100
) -> bytes:
    """One second of silence (and black pictures where `video` names their codec), muxed by the service's
    own FFmpeg: real files of the shapes issue 31 named."""
    import av

    out = io.BytesIO()
    with av.open(out, "w", format=format_, options=options or {}) as container:
        picture = None
        if video:
            picture = container.add_stream(video, rate=10)
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        sound = container.add_stream(codec, rate=rate, layout="mono")
        format_name = (
            sound.codec_context.codec.audio_formats[0].name if sound.codec_context.codec.audio_formats else "s16"
        )
        for n in range(10 if video else 0):
            frame = av.VideoFrame(64, 48, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            frame.pts = n
            container.mux(picture.encode(frame))  # type: ignore[union-attr]  # made above when video is named
        samples = 1152
        for n in range(rate // samples):
            frame = av.AudioFrame(format=format_name, layout="mono", samples=samples)
            frame.sample_rate = rate
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            frame.pts = n * samples
            container.mux(sound.encode(frame))
        container.mux(sound.encode(None))
        if picture is not None:
            container.mux(picture.encode(None))
    return out.getvalue()


@pytest.mark.parametrize(
    ("shape", "content_type", "made", "codecs"),
    [
        ("MP3 in MP4", "video/mp4", lambda: _made("mp4", "libmp3lame", video="mpeg4"), ("mpeg4", "mp3")),
        (
            "big-endian PCM in MOV (twos)",
            "video/quicktime",
            lambda: _made("mov", "pcm_s16be", video="mpeg4"),
            ("mpeg4", "pcm_s16be"),
        ),
        (
            "little-endian PCM in MOV (sowt)",
            "video/quicktime",
            lambda: _made("mov", "pcm_s16le", video="mpeg4"),
            ("mpeg4", "pcm_s16le"),
        ),
        ("Microsoft ADPCM in WAV", "audio/wav", lambda: _made("wav", "adpcm_ms"), ("adpcm_ms",)),
        ("IMA ADPCM in WAV", "audio/wav", lambda: _made("wav", "adpcm_ima_wav"), ("adpcm_ima_wav",)),
        ("RF64", "audio/wav", lambda: _made("wav", "pcm_s16le", {"rf64": "always"}), ("pcm_s16le",)),
        ("Opus in Ogg", "audio/ogg", lambda: _made("ogg", "libopus", rate=48000), ("opus",)),
        ("FLAC in Ogg", "audio/ogg", lambda: _made("ogg", "flac"), ("flac",)),
    ],
)
def test_real_shapes_complete_with_ffmpegs_codec_names_and_their_length(shape, content_type, made, codecs):
    found = checked(content_type, made())
    assert found.media is not None, (shape, found)
    assert found.media.codecs == codecs
    assert found.media.duration_seconds == pytest.approx(1.0, abs=0.1)


def test_an_mp3_with_stray_bytes_between_its_tag_and_its_first_frame_is_read():
    """ffmpeg and mutagen look ahead for the first frame; so does the check."""
    data = fixture("sound.mp3")
    tag_end = 10 + sum(b << (7 * (3 - i)) for i, b in enumerate(data[6:10]))
    strays = data[:tag_end] + bytes(300) + b"\x12\x34stray" + data[tag_end:]
    found = checked("audio/mpeg", strays)
    assert found.media is not None, found
    assert found.media.codecs == ("mp3",), found


# -- facts sane or absent --------------------------------------------------------------------------


def _webm_with_duration(value: float) -> bytes:
    """clip.webm with its Info's Duration (an 8-byte float, element 0x4489) set to `value`."""
    data = bytearray(fixture("clip.webm"))
    at = data.index(b"\x44\x89")
    size = data[at + 2] & 0x7F
    data[at + 3 : at + 3 + size] = struct.pack(">d" if size == 8 else ">f", value)
    return bytes(data)


@pytest.mark.parametrize("duration", [math.nan, -5.0, math.inf, 1.8e19 * 1000])
def test_an_absurd_stated_duration_is_absent_never_nan(duration):
    """Real frames behind a Duration of NaN, -5 s, Infinity or 1.8e19 s: completed, the duration absent."""
    found = checked("video/webm", _webm_with_duration(duration))
    assert found.media is not None, found
    assert found.media.duration_seconds is None
    assert (found.media.width, found.media.height) == (64, 48)
    json.dumps(found.media.as_record(), allow_nan=False)


@pytest.mark.parametrize(
    "stored",
    [
        {"duration_seconds": math.nan, "width": 2**31, "height": 0, "codecs": ["png"]},
        {"duration_seconds": -5, "width": -1, "height": True, "codecs": []},
        {"duration_seconds": math.inf, "width": 64.5, "height": None, "codecs": []},
    ],
)
def test_a_stored_absurd_fact_is_shown_as_null(stored):
    """Records written before the bounds (or by a defect) never put NaN into an answer or a webhook."""
    facts = MediaFacts(**stored)
    assert (facts.duration_seconds, facts.width, facts.height) == (None, None, None)
    json.dumps(facts.model_dump(), allow_nan=False)


def _png_of_width(width: int) -> bytes:
    """image.png with its IHDR stating `width` (its CRC made again)."""
    import zlib

    png = bytearray(fixture("image.png"))
    png[16:20] = struct.pack(">I", width)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def test_a_png_stating_2_31_pixels_across_is_refused():
    found = checked("image/png", _png_of_width(2**31 - 1))
    assert found.media is None, found
    assert found.code == UNREADABLE_MEDIA, found


def test_an_mvhd_stating_1_8e19_seconds_never_reaches_an_answer():
    data = bytearray(fixture("clip-faststart.mp4"))
    at = data.index(b"mvhd") + 4  # version 0: flags, created, modified, timescale, duration
    data[at + 16 : at + 20] = struct.pack(">I", 2**32 - 1)
    data[at + 12 : at + 16] = struct.pack(">I", 1)  # 4.3e9 s at a timescale of 1
    found = checked("video/mp4", bytes(data))
    if found.media is not None:
        stated = found.media.duration_seconds
        assert stated is None or stated <= 31 * 24 * 3600
    else:
        assert found.code == UNREADABLE_MEDIA


def test_a_picture_of_too_many_pixels_is_refused_before_it_is_decoded():
    out = io.BytesIO()
    Image.new("1", (10_000, 6_000)).save(out, format="PNG")  # 60 MP, a few KB
    found = checked("image/png", out.getvalue())
    assert found.code == UNREADABLE_MEDIA
    assert "pixels" in found.reason


# -- nothing breaks a check ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raised",
    [
        ZeroDivisionError,
        RecursionError,
        KeyError,
        struct.error,
        AssertionError,
        SystemError,
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"),
        MemoryError,
    ],
)
def test_whatever_an_engine_raises_is_a_verdict(monkeypatch, raised):
    def engine(*_args: object) -> None:
        raise raised if isinstance(raised, BaseException) else raised("unexpected")

    monkeypatch.setattr(engines, "check", engine)
    found = judged("audio/aac", fixture("sound.aac"))
    assert found["code"] == UNREADABLE_MEDIA
    name = type(raised).__name__ if isinstance(raised, BaseException) else raised.__name__
    assert found["failure"] == name


def test_a_module_the_engine_failed_to_load_is_ours_not_a_verdict(monkeypatch):
    """The child runs as nobody, who may not read what was not imported before: a missing module is
    a broken deployment (a 503, the upload settled again), never a rejected file."""

    def engine(*_args: object) -> None:
        raise ModuleNotFoundError("No module named 'av.subtitles'")

    monkeypatch.setattr(engines, "check", engine)
    assert "engine_failed" in judged("video/mp4", fixture("clip.mp4"))


def test_the_parent_answers_an_engine_failure_with_no_verdict(monkeypatch):
    said = b'{"engine_failed": "ModuleNotFoundError: av.subtitles"}'
    _child(
        monkeypatch,
        f"out = sys.stdout.buffer; out.write(b'S' + b'V' + len({said!r}).to_bytes(4, 'big') + {said!r}); out.flush()",
    )
    with pytest.raises(media.EngineFailed, match=r"av\.subtitles"):
        checked("video/mp4", fixture("clip.mp4"))


def _child(monkeypatch, program: str) -> None:
    """The child replaced by `program` (Python), started as the real one is."""
    monkeypatch.setattr(sandbox, "_CHILD", "import os, signal, sys, time; " + program)


def test_a_child_that_crashes_after_it_started_is_a_verdict(monkeypatch):
    _child(monkeypatch, "sys.stdout.buffer.write(b'S'); sys.stdout.flush(); os.kill(os.getpid(), signal.SIGSEGV)")
    found = checked("video/mp4", fixture("clip.mp4"))
    assert (found.code, found.failure) == (UNREADABLE_MEDIA, signal.SIGSEGV.name)


@pytest.mark.parametrize(
    "said",
    [
        "b'R' + bytes(5)",  # a read request cut off
        "b'V' + (100).to_bytes(4, 'big') + b'{\"media\": '",  # a verdict cut off
        "b'V' + (3).to_bytes(4, 'big') + b'[1]'",  # a verdict that is no object
        "b'V' + (2**31).to_bytes(4, 'big')",  # a verdict larger than any the child writes
    ],
)
def test_a_child_that_dies_mid_message_is_a_verdict_never_an_exception(monkeypatch, said):
    _child(
        monkeypatch,
        f"out = sys.stdout.buffer; out.write(b'S' + {said}); out.flush(); os.kill(os.getpid(), signal.SIGSEGV)",
    )
    found = checked("video/mp4", fixture("clip.mp4"))
    assert (found.code, found.failure) == (UNREADABLE_MEDIA, signal.SIGSEGV.name)


def test_a_child_out_of_cpu_time_is_a_verdict(monkeypatch):
    _child(monkeypatch, "sys.stdout.buffer.write(b'S'); sys.stdout.flush(); os.kill(os.getpid(), signal.SIGXCPU)")
    found = checked("video/mp4", fixture("clip.mp4"))
    assert found.code == UNREADABLE_MEDIA
    assert "CPU time" in found.reason


def test_a_child_that_cannot_start_is_ours_not_a_verdict(monkeypatch):
    _child(monkeypatch, "sys.exit(1)")
    with pytest.raises(media.EngineFailed):
        checked("video/mp4", fixture("clip.mp4"))


def test_a_child_that_hangs_ends_at_the_deadline_with_no_verdict(monkeypatch):
    _child(monkeypatch, "sys.stdout.buffer.write(b'S'); sys.stdout.flush(); time.sleep(3600)")
    data = fixture("clip.mp4")
    with pytest.raises(media.CheckTimedOut):
        media.check("video/mp4", len(data), lambda start, end: data[start:end], time.monotonic() + 1.0)


def test_a_decoder_out_of_memory_is_a_verdict():
    """Within the pixel count, but past the child's memory: the limit holds, and it is a verdict."""
    out = io.BytesIO()
    Image.new("RGB", (7_000, 7_000)).save(out, format="PNG")  # 49 MP: 147 MB of pixels
    found = checked("image/png", out.getvalue(), Budget(memory_bytes=200 * 2**20))
    assert found.code == UNREADABLE_MEDIA, found
    assert "memory" in found.reason, found


def test_the_sandbox_refuses_sockets_programs_processes_and_file_writes():
    import platform
    import subprocess
    import sys

    if platform.machine() not in probe._ARCHES:
        pytest.skip(f"the seccomp filter knows x86_64 and aarch64, not {platform.machine()}")
    said = subprocess.run(
        [sys.executable, "-m", "lib.media.probe", "--self-test"],
        capture_output=True,
        check=True,
        timeout=60,
        cwd=ROOT,
    )
    results = json.loads(said.stdout)
    assert results["seccomp"] == "installed"
    for attempt in ("socket", "program", "process", "file write"):
        assert results[attempt].startswith("refused"), results
    assert results["thread"] == "allowed"


# -- the budget ------------------------------------------------------------------------------------


class Sparse:
    """A large object held as a few pieces at offsets, zeros between: read through `fetch`, counting."""

    def __init__(self, size: int, pieces: dict[int, bytes]):
        self.size, self.pieces = size, pieces

    def fetch(self, start: int, end: int) -> bytes:
        out = bytearray(end - start)
        for at, piece in self.pieces.items():
            lo, hi = max(start, at), min(end, at + len(piece))
            if lo < hi:
                out[lo - start : hi - start] = piece[lo - at : hi - at]
        return bytes(out)


def test_an_index_past_50_gib_of_samples_costs_one_more_read():
    """clip.mp4's samples at their own offsets, in an mdat grown to 50 GiB, then its index."""
    data = fixture("clip.mp4")
    boxes = {kind: data[at : at + size] for kind, at, size in top_boxes(data)}
    assert list(boxes) == [b"ftyp", b"free", b"mdat", b"moov"]  # ffmpeg's default: the index last
    samples = boxes[b"mdat"][8:]
    mdat_size = 50 * 1024**3
    head = boxes[b"ftyp"] + struct.pack(">I4sQ", 1, b"mdat", mdat_size) + samples  # samples at offset 48, as before
    big = Sparse(
        len(boxes[b"ftyp"]) + mdat_size + len(boxes[b"moov"]),
        {0: head, len(boxes[b"ftyp"]) + mdat_size: boxes[b"moov"]},
    )
    found = media.check("video/mp4", big.size, big.fetch, time.monotonic() + 60)
    assert found.media is not None, found
    assert (found.media.duration_seconds, found.media.width, found.media.codecs) == (1.0, 64, ("h264", "aac"))
    assert found.usage.reads == 2
    assert found.usage.bytes_read <= 2 * media.BUDGET.first_window


@pytest.fixture(scope="module")
def two_hours(tmp_path_factory):
    """A 2-hour MP4 with a video and 8 AAC tracks at 48 kHz (an 11 MB index), its index last and first."""
    folder = tmp_path_factory.mktemp("long")
    made = {}
    for where, faststart in (("last", False), ("first", True)):
        long_mp4(folder / f"{where}.mp4", 7200, 8, faststart=faststart)
        made[where] = (folder / f"{where}.mp4").read_bytes()
    return made


@pytest.mark.parametrize("where", ["last", "first"])
def test_a_two_hour_eight_track_mp4_is_read_within_the_budget_in_large_reads(two_hours, where):
    data = two_hours[where]
    found = checked("video/mp4", data)
    assert found.media is not None, found
    assert found.media.duration_seconds == 7200.0
    assert found.media.codecs == ("mpeg4",) + ("aac",) * 8
    # The 11 MB index in windows that double along the run: a handful of reads, never one per box.
    assert found.usage.reads <= 10
    assert found.usage.bytes_read <= media.BUDGET.max_bytes


def test_past_the_budget_is_a_verdict_naming_it(two_hours):
    found = checked("video/mp4", two_hours["last"], Budget(max_bytes=4 * 2**20))
    assert found.code == UNREADABLE_MEDIA, found
    assert "budget" in found.reason, found
    assert found.usage.bytes_read <= 4 * 2**20


# -- fuzzing ---------------------------------------------------------------------------------------


def mutations(data: bytes, rng: random.Random, count: int):
    """`count` damaged copies of `data`: bytes flipped, 32-bit fields set to extremes, cut, spliced."""
    for _ in range(count):
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            how, at = rng.randrange(5), rng.randrange(len(out) or 1)
            if how == 0 and out:
                out[at] ^= 1 << rng.randrange(8)
            elif how == 1 and len(out) >= at + 4:
                out[at : at + 4] = struct.pack(">I", rng.choice([0, 1, 7, 8, 2**31, 2**32 - 1, rng.getrandbits(32)]))
            elif how == 2:
                del out[at:]
            elif how == 3:
                out[at:at] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
            elif how == 4 and out:
                other = rng.randrange(len(out))
                out[at : at + 16] = out[other : other + 16]
        yield bytes(out)


def _sane(found: dict[str, object]) -> None:
    """A verdict: facts within their bounds, or a refusal with its reason."""
    if "media" in found:
        facts = found["media"]
        assert isinstance(facts, dict)
        json.dumps(facts, allow_nan=False)
        assert facts == MediaFacts(**facts).model_dump()  # nothing the model would have to null
    else:
        assert found["code"] in (CONTENT_MISMATCH, UNREADABLE_MEDIA), found
        assert found["reason"], found


@pytest.mark.parametrize("name", NAMES)
def test_fuzzed_fixtures_end_in_sane_facts_or_a_verdict(name):
    """150 seeded mutations of each fixture (the same ones every run), through the engines."""
    content_type = FACTS[name]["content_type"]
    for damaged in mutations(fixture(name), random.Random(name), 150):
        _sane(judged(content_type, damaged))


def test_fuzzed_fixtures_through_the_sandbox_end_in_a_verdict():
    """A few mutations of each fixture through the child itself: no crash, hang or limit is anything
    but a verdict."""
    for name in NAMES:
        for damaged in mutations(fixture(name), random.Random(f"child {name}"), 2):
            found = checked(FACTS[name]["content_type"], damaged)
            assert found.media is not None or found.code in (CONTENT_MISMATCH, UNREADABLE_MEDIA)
