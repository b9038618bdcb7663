"""Sound and moving pictures, by FFmpeg (PyAV): the demuxer's facts as ffprobe gives them, each track's
first frame decoded at the offset the index gives, and frames where the stated duration says they are."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import av
import av.logging

from lib.media.facts import Limits, Media, Mismatch, Source, Unreadable

TYPES = {  # the content type: the FFmpeg demuxers that may read it
    "video/mp4": {"mov,mp4,m4a,3gp,3g2,mj2"},
    "video/quicktime": {"mov,mp4,m4a,3gp,3g2,mj2"},
    "audio/mp4": {"mov,mp4,m4a,3gp,3g2,mj2"},
    "video/webm": {"matroska,webm"},
    "audio/mpeg": {"mp3"},
    "audio/wav": {"wav"},
    "audio/aac": {"aac"},
    "audio/ogg": {"ogg"},
}
# A track decodes if one of its first packets gives a frame (a stream may open on frames that need
# earlier ones); the tail of a file is read for at most so many packets, from a seek to TAIL_AT of
# its bytes where it has no index to seek by.
PACKETS_PER_TRACK = 64
TAIL_PACKETS = 4096
TAIL_AT = 0.8
TAIL_ROOM = 16 * 1024  # a byte seek leaves at least this much after it: a few frames even of a small file
CUES = b"\x53\xab\x84\x1c\x53\xbb\x6b"  # a SeekHead's SeekID naming the Cues element (EBML ID 0x1C53BB6B)
# The frames must reach this share of the duration the header states (raw MP3 and AAC durations
# are FFmpeg's estimate from a bitrate, which a VBR file's frames may miss by some 15%).
BACKED = 0.75
Track = av.VideoStream | av.AudioStream


def prepare() -> None:
    av.logging.set_level(None)  # FFmpeg's own complaints: the verdict says what matters
    for module in pkgutil.walk_packages(av.__path__, "av."):  # PyAV imports some (av.subtitles) on first use
        if not module.name.endswith("__main__"):  # its command line, which would run
            importlib.import_module(module.name)


def check(declared: str, source: Source, known: bool, limits: Limits) -> Media:
    """ffprobe's facts of `source`, which is `declared`; `known`: its magic numbers say so."""
    try:
        container = av.open(source, mode="r")
    except av.error.FFmpegError as exc:
        if known:
            raise Unreadable(f"FFmpeg cannot read it ({exc.strerror})") from None
        raise Mismatch(f"The bytes are nothing FFmpeg reads, so they are not {declared}.") from None
    with container:
        if container.format.name not in TYPES[declared]:
            raise Mismatch(f"The bytes are {container.format.name.split(',')[0]}, not {declared}.")
        tracks: list[Track] = [
            s for s in container.streams if isinstance(s, av.VideoStream | av.AudioStream) and not _cover(s)
        ]
        pictures = [s for s in tracks if isinstance(s, av.VideoStream)]
        if declared.startswith("video/") and not pictures:
            raise Mismatch(f"It has no video track, so it is not {declared} (sound alone is audio/mp4).")
        if declared == "audio/mp4" and not any(s.type == "audio" for s in tracks):
            raise Mismatch("It has no audio track, so it is not audio/mp4.")
        if declared.startswith("audio/") and declared != "audio/mp4" and pictures:
            raise Mismatch(f"It has a video track, so it is not {declared}.")  # Ogg Theora, say
        if not tracks:
            raise Unreadable("it holds no sound or pictures")
        duration = container.duration / av.time_base if container.duration is not None else None
        try:
            _decode_first_frames(container, tracks)
            _backed(container, tracks, duration, source)
        except av.error.FFmpegError as exc:
            raise Unreadable(f"FFmpeg cannot read its frames ({exc.strerror})") from None
        picture = pictures[0].codec_context if pictures else None
        codecs = tuple(
            name
            for s in container.streams
            if s.type in ("audio", "video", "subtitle") and (name := s.codec_context.codec.canonical_name) != "none"
        )
        return Media.sane(duration, picture and picture.width, picture and picture.height, codecs)


def _cover(stream: av.stream.Stream) -> bool:
    """A picture attached as cover art (an MP3's or M4A's), not a video track."""
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def _decode_first_frames(container: av.container.InputContainer, tracks: list[Track]) -> None:
    """Each track's first frame, decoded from the packets at the offsets the index gives."""
    for stream in tracks:
        stream.codec_context.thread_count = 1  # no worker threads: the child's CPU is its own
    waiting, by_index = {s.index: 0 for s in tracks}, {s.index: s for s in tracks}
    for packet in container.demux(tracks):
        index = packet.stream.index
        if index not in waiting:
            continue
        if packet.size == 0:  # the end of the stream: what the decoder still holds
            frames = _frames(by_index[index], None)
        else:
            waiting[index] += 1
            frames = _frames(by_index[index], packet)
        if frames:
            del waiting[index]
        elif waiting[index] >= PACKETS_PER_TRACK or packet.size == 0:
            break
        if not waiting:
            return
    stream = next(s for s in tracks if s.index in waiting)
    raise Unreadable(f"its {stream.type} track ({stream.codec_context.codec.canonical_name}) does not decode")


def _frames(stream: Track, packet: av.Packet[Any] | None) -> int:
    try:
        return len(stream.decode(packet))
    except av.error.FFmpegError:
        return 0  # this packet is damaged or needs earlier ones; the next may decode


def _backed(
    container: av.container.InputContainer, tracks: list[Track], duration: float | None, source: Source
) -> None:
    """Frames where the stated duration says they are, or Unreadable: a header whose facts the bytes do
    not back (a file cut short, a header in front of something else).

    Where FFmpeg seeks by an index or by a few probes (MP4 and MOV by theirs, WebM by its Cues, Ogg by
    bisection, WAV by arithmetic), a frame must decode after a seek to BACKED of the duration (an index
    that points past the end of a file cut short finds none). A raw MP3 or AAC stream would be read
    frame by frame up to any time sought, so it is judged by bytes: the duration at the stated bitrate
    must fit in the file (an MP3 whose Xing header counts more than it holds), and a frame must decode
    after a seek to TAIL_AT of its bytes (or TAIL_ROOM before its end). A WebM without Cues, which
    would be read to any time sought, is judged by its first frames alone."""
    if not duration or duration <= 0:
        return
    name = container.format.name
    raw = name in ("mp3", "aac")
    rate = tracks[0].bit_rate or 0  # the stream's own (its frames' or its Xing header's), not the file's size over time
    if raw and duration * rate / 8 * BACKED > source.size:
        raise Unreadable(
            f"its header states {duration:.2f} s at {rate // 1000} kb/s, {duration * rate / 8:,.0f} "
            f"bytes, but the file holds {source.size:,}: it is cut short"
        )
    if name == "matroska,webm" and CUES not in source.read_at(0, 4096):
        return
    start = container.start_time / av.time_base if container.start_time is not None else 0.0
    target = None if raw else start + duration * BACKED  # the time (s) frames must reach, where times are known
    try:
        if target is None:
            at = max(0, min(int(source.size * TAIL_AT), source.size - TAIL_ROOM))
            container.seek(at, unsupported_byte_offset=True)
        else:
            container.seek(int(target * av.time_base), backward=True, any_frame=False)
    except av.error.FFmpegError:
        pass  # read on from the first frames: EOF before the target is a file cut short
    if _tail_decodes(container, tracks, target):
        return
    raise Unreadable(
        f"its header states {duration:.2f} s, but no frame decodes where the bytes should hold "
        f"its last quarter: it is cut short or its frames are not media"
    )


def _tail_decodes(container: av.container.InputContainer, tracks: list[Track], target: float | None) -> bool:
    """Whether frames decode where the target says (s; None: anywhere), within TAIL_PACKETS packets of
    where the demuxer stands; past TAIL_PACKETS, with the file going on, nothing holds against it (True).

    A seek by an index lands on the keyframe before the target. Past the target, a sound frame (each
    one decodes alone) or a picture's keyframe must decode; a file with pictures alone, whose next
    keyframe may lie past its end, needs the keyframe the seek landed on to decode and a packet that
    reaches the target."""
    by_index = {s.index: s for s in tracks}
    sound = any(isinstance(s, av.AudioStream) for s in tracks)
    for stream in tracks:
        stream.codec_context.flush_buffers()  # what the first frames left is not the tail's
    landed, decoding = False, None  # the keyframe the seek landed on gave a frame; the track being decoded
    for count, packet in enumerate(container.demux(tracks)):
        if count >= TAIL_PACKETS:
            return True
        track = by_index.get(packet.stream.index)
        if track is None or not packet.size:
            continue
        # Where the packet's frames end: a short file's one packet may span the target.
        at = (
            float((packet.pts + (packet.duration or 0)) * packet.time_base)
            if packet.pts is not None and packet.time_base
            else None
        )
        if target is not None and (at is None or at < target):
            if not landed and (packet.is_keyframe or decoding is track):  # a decoder may hold frames back
                decoding = track
                landed = bool(_frames(track, packet))
            continue
        if target is None or isinstance(track, av.AudioStream) or packet.is_keyframe:
            if _frames(track, packet):
                return True
        elif not sound and landed:
            return True
    return False
