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
from lib.mediatypes import ALIASES, CONTENT_TYPES

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

    def __init__(self, target_url: str, script: Callable[[dict], Answer | Stall | None] | None = None,
                 keep_host: bool = False):
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
                request = {"method": self.command, "path": self.path, "headers": dict(self.headers),
                           "body": body or b"", "at": time.monotonic()}
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
    rule lib/naming.py's normalize_content_type applies, as the OpenAPI document must state it."""
    def caseless(name: str) -> str:
        # Escape only what is syntax: ECMA regexes in unicode mode reject `\-`.
        return "".join(f"[{c}{c.upper()}]" if c.isalpha() else "\\" + c if c in ".+" else c for c in name)

    names = "|".join(caseless(name) for name in sorted({*CONTENT_TYPES, *ALIASES}))
    # `(?![\s\S])` ends the string in both ECMA and Python regexes; `$` would
    # also match before a trailing newline in Python, which the service refuses.
    return f"^ *(?:{names}) *(?:;[^\\x00-\\x1f\\x7f-\\x9f]*)?(?![\\s\\S])"


# --- media: what every PUT in the tests sends (the service verifies it, lib/media.py) ---------------------------

MEDIA_DIR = Path(__file__).resolve().parent / "media"


def media(name: str = "clip.mp4") -> bytes:
    """A fixture from tests/media/ (one per content type; tests/media/make.py made them)."""
    return (MEDIA_DIR / name).read_bytes()


# The fixture a file of each extension grows from (tests/media/), and how it grows: an MP4/MOV by a
# `free` box, WebM by a Void element, WAV by more samples; the rest by trailing bytes, which their
# readers (and the service's, which reads only headers) ignore.
GROWS_FROM = {"mp4": "clip-faststart.mp4", "mov": "clip.mov", "m4a": "sound.m4a", "webm": "clip.webm",
               "mp3": "sound.mp3", "png": "image.png", "jpg": "image.jpg", "ogg": "sound.ogg"}


# The extensions sized_media makes.
SIZED_EXTENSIONS = {*GROWS_FROM, "wav"}


def sized_media(extension: str, size: int, seed: int = 0) -> bytes:
    """A real file of that type of exactly `size` bytes, its filler seeded random bytes: big files
    for chunking and resuming tests, each different (so their checksums are their own)."""
    filler = random.Random(seed).randbytes
    if extension == "wav":  # 16-bit mono PCM at 8 kHz: any bytes are samples
        fmt = b"fmt " + (16).to_bytes(4, "little") + bytes.fromhex("0100 0100 401f0000 803e0000 0200 1000")
        return b"RIFF" + (size - 8).to_bytes(4, "little") + b"WAVE" + fmt + b"data" + \
            (size - 44).to_bytes(4, "little") + filler(size - 44)
    base = media(GROWS_FROM[extension])
    if extension in ("mp4", "mov", "m4a"):
        return samples.mp4_of_size(size, filler, GROWS_FROM[extension])
    if extension == "webm":
        return base + b"\xec" + ((1 << 56) | (size - len(base) - 9)).to_bytes(8, "big") + filler(size - len(base) - 9)
    return base + filler(size - len(base))


def padded_mp4(size: int, seed: int = 0) -> bytes:
    """A real MP4 of exactly `size` bytes: clip-faststart.mp4 (its index first), then a `free` box."""
    return sized_media("mp4", size, seed)
