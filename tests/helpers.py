"""Test helpers: schema validation against the OpenAPI documents, and a
recording HTTP proxy that shows what the function sends to Storage."""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from dev import samples
from lib.media.mediatypes import ALIASES, CONTENT_TYPES

# Every API key minted through the `make_key` fixture this session, for the
# secrets audit that runs last. (It lives here, not in conftest, because pytest
# imports conftest under another module name than the tests do.)
SESSION_KEYS: set[str] = set()
# Every webhook signing secret the session made (tests/test_secrets_audit.py looks for them).
SESSION_WEBHOOK_SECRETS: set[str] = set()


def schema_errors(doc: dict, ref: str, instance) -> list[str]:
    """Messages for every way `instance` breaks `doc`'s schema at `ref` (e.g. '#/components/schemas/UploadOut')."""
    registry = Registry().with_resource("urn:doc", Resource.from_contents(doc, default_specification=DRAFT202012))
    validator = Draft202012Validator({"$ref": f"urn:doc{ref}"}, registry=registry)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]


def response_schema_errors(doc: dict, status: int, body, path: str = "/v1/uploads", method: str = "post") -> list[str]:
    """Check a response (POST /v1/uploads by default) against the document's declared response for `status`."""
    responses = doc["paths"][path][method]["responses"]
    if str(status) not in responses:
        if status == 404 and "Error" in doc["components"]["schemas"]:
            return schema_errors(doc, "#/components/schemas/Error", body)
        return [f"status {status} is not documented"]
    content = responses[str(status)].get("content")
    if not content:
        return []
    pointer = path.replace("~", "~0").replace("/", "~1")
    return schema_errors(doc, f"#/paths/{pointer}/{method}/responses/{status}/content/application~1json/schema", body)


def parse_rfc3339_utc(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@dataclass(frozen=True)
class Answer:
    """A RecordingProxy script's reply in the server's place (the request is not forwarded)."""

    status: int
    headers: dict = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Stall:
    """A RecordingProxy script's order: forward, then hold the reply `seconds` before sending it."""

    seconds: float


class RecordingProxy:
    """A loopback HTTP proxy in front of a real server, recording each request.

    Used as STORAGE_EMULATOR_HOST to see exactly what the function sends to
    Storage (headers fake-gcs-server accepts but ignores, such as Origin).
    `script(request)`, if given, may answer a request itself (`Answer`) or
    stall its reply (`Stall`); None forwards it. `keep_host` passes the
    client's Host on, so a server that builds URLs from it (gcp-storage-emulator's
    resumable session URL) names the proxy.
    """

    def __init__(
        self, target_url: str, script: Callable[[dict], Answer | Stall | None] | None = None, keep_host: bool = False
    ):
        target = urlsplit(target_url)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if length and len(body or b"") < length:
                    # The client went away mid-body (killed). A server never sees such a request:
                    # forwarded short, it would hold a one-request-at-a-time server (gcp-storage-
                    # emulator) waiting for the rest, and every request behind it.
                    self.close_connection = True
                    return
                request = {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": body or b"",
                    "at": time.monotonic(),
                }
                with proxy.lock:
                    proxy.requests.append(request)
                    order = script(request) if script else None
                if isinstance(order, Answer):
                    self._reply(order.status, list(order.headers.items()), order.body)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
                dropped = ("connection",) if keep_host else ("host", "connection")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if isinstance(order, Stall):
                    time.sleep(order.seconds)  # the stall itself, not a wait for readiness
                self._reply(resp.status, resp.getheaders(), data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def content_type_pattern() -> str:
    """The accepted `content_type` values as one regular expression (JSON Schema dialect): the
    rule lib/uploads/naming.py's normalize_content_type applies, as the OpenAPI document must state it."""

    def caseless(name: str) -> str:
        # Escape only what is syntax: ECMA regexes in unicode mode reject `\-`.
        return "".join(f"[{c}{c.upper()}]" if c.isalpha() else "\\" + c if c in ".+" else c for c in name)

    names = "|".join(caseless(name) for name in sorted({*CONTENT_TYPES, *ALIASES}))
    # `(?![\s\S])` ends the string in both ECMA and Python regexes; `$` would
    # also match before a trailing newline in Python, which the service refuses.
    return f"^ *(?:{names}) *(?:;[^\\x00-\\x1f\\x7f-\\x9f]*)?(?![\\s\\S])"


# --- media: what every PUT in the tests sends (the service verifies it, lib/media/) ---------------------------

MEDIA_DIR = Path(__file__).resolve().parent / "media"


def media(name: str = "clip.mp4") -> bytes:
    """A fixture from tests/media/ (one per content type; tests/media/make.py made them)."""
    return (MEDIA_DIR / name).read_bytes()


# The fixture a file of each extension grows from (tests/media/), and how it grows, always as a file
# that decodes as a whole (the service decodes what lands, and refuses a header followed by junk): an
# MP4/MOV by a `free` box, WebM by its frames again (then a Void element inside its Segment), WAV by
# more samples, MP3 by its frames again behind an ID3 tag that holds the seeded bytes; a PNG or JPEG
# by bytes after its end, which decoders (Pillow's, browsers') never read.
GROWS_FROM = {
    "mp4": "clip-faststart.mp4",
    "mov": "clip.mov",
    "m4a": "sound.m4a",
    "webm": "clip.webm",
    "mp3": "sound.mp3",
    "png": "image.png",
    "jpg": "image.jpg",
}


# The extensions sized_media makes.
SIZED_EXTENSIONS = {*GROWS_FROM, "wav"}


def sized_media(extension: str, size: int, seed: int = 0) -> bytes:
    """A real file of that type of exactly `size` bytes, its filler seeded random bytes: big files
    for chunking and resuming tests, each different (so their checksums are their own)."""
    filler = random.Random(seed).randbytes
    if extension == "wav":  # 16-bit mono PCM at 8 kHz: any bytes are samples
        fmt = b"fmt " + (16).to_bytes(4, "little") + bytes.fromhex("0100 0100 401f0000 803e0000 0200 1000")
        return (
            b"RIFF"
            + (size - 8).to_bytes(4, "little")
            + b"WAVE"
            + fmt
            + b"data"
            + (size - 44).to_bytes(4, "little")
            + filler(size - 44)
        )
    base = media(GROWS_FROM[extension])
    if extension in ("mp4", "mov", "m4a"):
        return samples.mp4_of_size(size, filler, GROWS_FROM[extension])
    if extension == "webm":
        return _webm_grown(base, size, filler)
    if extension == "mp3":
        return _mp3_grown(base, size, filler)
    return base + filler(size - len(base))


def _webm_grown(base: bytes, size: int, filler: Callable[[int], bytes]) -> bytes:
    """The WebM's frames again and again to within 64 KiB of `size` (dev/samples.py), then a Void
    element (EBML ID 0xEC) of filler at the end of its Segment, whose 8-byte size grows to hold it."""
    base = samples.webm_clusters(base, size) if size > len(base) + 128 * 1024 else base
    at = base.index(b"\x18\x53\x80\x67") + 4  # the Segment's size, an 8-byte EBML number
    void = size - len(base)
    grown = int.from_bytes(base[at : at + 8], "big") & ((1 << 56) - 1)
    return (
        base[:at]
        + ((1 << 56) | (grown + void)).to_bytes(8, "big")
        + base[at + 8 :]
        + b"\xec"
        + ((1 << 56) | (void - 9)).to_bytes(8, "big")
        + filler(void - 9)
    )


def _mp3_grown(base: bytes, size: int, filler: Callable[[int], bytes]) -> bytes:
    """The MP3's audio frames (its own tag and its Xing frame, which counts them, left out) again and
    again, behind an ID3v2.3 tag whose PRIV frame holds filler to make `size`."""
    tag_end = 10 + sum(b << (7 * (3 - i)) for i, b in enumerate(base[6:10])) if base.startswith(b"ID3") else 0
    header = base[tag_end + 2]  # sound.mp3 is MPEG-1 Layer III at a constant bitrate, its frames unpadded
    bitrate = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)[header >> 4] * 1000
    frame = 144 * bitrate // (44100, 48000, 32000)[(header >> 2) & 3]
    frames = base[tag_end + frame :]  # after the Xing frame
    body = frames * max(1, (size - 64) // len(frames))
    body = body[: len(body) - len(body) % frame] if len(body) > size - 64 else body
    private = size - len(body) - 10 - 10 - len(b"framelane\0")
    frame_data = b"framelane\0" + filler(private)
    tag = b"PRIV" + len(frame_data).to_bytes(4, "big") + b"\x00\x00" + frame_data
    syncsafe = sum(((len(tag) >> (7 * i)) & 0x7F) << (8 * i) for i in range(4)).to_bytes(4, "big")
    return b"ID3\x03\x00\x00" + syncsafe + tag + body


def padded_mp4(size: int, seed: int = 0) -> bytes:
    """A real MP4 of exactly `size` bytes: clip-faststart.mp4 (its index first), then a `free` box."""
    return sized_media("mp4", size, seed)
