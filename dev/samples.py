"""Real media of any size, for the tests, `make smoke` and the bench: a fixture from tests/media/
(the service checks what it gets, lib/media/), grown in a box its readers skip."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av

MEDIA = Path(__file__).resolve().parent.parent / "tests" / "media"


def mp4_of_size(size: int, filler: Callable[[int], bytes] = os.urandom, fixture: str = "clip-faststart.mp4") -> bytes:
    """An ISO BMFF file (MP4, MOV, M4A) of exactly `size` bytes: the fixture, then a `free` box of
    `filler`'s bytes (random by default, so each file's checksums are its own)."""
    base = (MEDIA / fixture).read_bytes()
    return base + (size - len(base)).to_bytes(4, "big") + b"free" + filler(size - len(base) - 8)


def long_mp4(path: Path, seconds: int, audio_tracks: int, sample_rate: int = 48000, faststart: bool = False) -> None:
    """A real MP4 of `seconds` with one video track (MPEG-4 Part 2, 64x48, a keyframe a second) and
    `audio_tracks` AAC tracks at `sample_rate`, its index (`moov`) last, or first with `faststart`:
    one frame of each encoded once, then muxed again and again (a 2-hour, 8-track file at 48 kHz,
    22 MB with an 11 MB index, takes about 10 s)."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"} if faststart else {}) as out:
        video = out.add_stream("mpeg4", rate=1)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        picture = av.VideoFrame(64, 48, "yuv420p")
        for plane in picture.planes:
            plane.update(bytes(plane.buffer_size))
        keyframe = bytes(video.encode(picture)[0])
        sounds = [out.add_stream("aac", rate=sample_rate, layout="mono") for _ in range(audio_tracks)]
        silence = av.AudioFrame(format="fltp", layout="mono", samples=1024)
        silence.sample_rate = sample_rate
        for plane in silence.planes:
            plane.update(bytes(plane.buffer_size))
        encoded: list[av.Packet] = []
        for n in range(4):  # past the encoder's priming: a steady frame of silence
            silence.pts = n * 1024
            encoded += sounds[0].encode(silence)
        frame = bytes(encoded[-1])
        for second in range(seconds):
            _mux(out, video, keyframe, second, 1, Fraction(1, 1))
            for sound in sounds:
                for k in range(second * sample_rate // 1024, (second + 1) * sample_rate // 1024):
                    _mux(out, sound, frame, k * 1024, 1024, Fraction(1, sample_rate))


def _mux(
    out: av.container.OutputContainer,
    stream: av.stream.Stream,
    data: bytes,
    pts: int,
    duration: int,
    time_base: Fraction,
) -> None:
    packet = av.Packet(data)
    packet.stream, packet.pts, packet.dts, packet.duration, packet.time_base = stream, pts, pts, duration, time_base
    out.mux(packet)


def webm_clusters(base: bytes, size: int) -> bytes:
    """The WebM `base` played again and again (its packets muxed anew, their times shifted, with
    Cues) until its frames take nine tenths of `size` bytes: a file whose frames run (nearly) to its end."""
    source = av.open(io.BytesIO(base))
    packets = [packet for packet in source.demux() if packet.size]
    length = Fraction(source.duration or 0, av.time_base)
    into = io.BytesIO()
    with av.open(into, "w", format="webm") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in source.streams}
        rounds = 0
        while into.tell() < size * 0.9:
            for packet in packets:
                shift = int(rounds * length / packet.time_base)
                again = av.Packet(bytes(packet))
                again.stream, again.time_base = streams[packet.stream.index], packet.time_base
                again.duration = packet.duration
                again.pts = (packet.pts or 0) + shift
                again.dts = (packet.dts if packet.dts is not None else packet.pts or 0) + shift
                again.is_keyframe = packet.is_keyframe
                out.mux(again)
            rounds += 1
    return into.getvalue()
