"""Inputs built to break the endpoint, against the served function (gunicorn
parses the HTTP), two ways: named cases, and schemathesis generating requests
from openapi.yaml. Storage sits behind a recording proxy, so the tests see
exactly what would reach GCS: no client input may land in an object name or a
header there.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import socket
import subprocess
import threading
import uuid
from urllib.parse import unquote

import pytest
import requests

from lib.api import idempotency
from tests.conftest import BUCKET, ROOT, start_shipped
from tests.helpers import RecordingProxy

VIDEO = {"content_type": "video/mp4", "filename": "clip.mp4"}


@pytest.fixture(scope="module")
def target(backends, log_dir, shipped):
    """A served function whose Storage traffic goes through a recording proxy."""
    with RecordingProxy(backends["storage"].url) as proxy:
        env = dict(backends["env"], STORAGE_EMULATOR_HOST=proxy.url)
        function = start_shipped(shipped, env, log_dir, name="function-hostile")
        try:
            yield function.url, proxy
        finally:
            function.stop()


@pytest.fixture
def ws_key(make_key):
    return make_key()


def post(url, key, body=None, raw: bytes | None = None, headers=None):
    data = raw if raw is not None else json.dumps(body if body is not None else VIDEO).encode()
    all_headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})}
    return requests.post(url + "/v1/uploads", data=data, headers=all_headers, timeout=30)


def raw_request(url: str, header_lines: list[bytes], body: bytes = json.dumps(VIDEO).encode()) -> tuple[int, bytes]:
    """Send bytes `requests` would refuse to (duplicate or malformed headers)."""
    host, port = url.removeprefix("http://").split(":")
    lines = [
        b"POST /v1/uploads HTTP/1.1",
        b"Host: " + host.encode(),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"Connection: close",
        *header_lines,
    ]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    status = int(response.split(b" ", 2)[1])
    return status, response.split(b"\r\n\r\n", 1)[1]


def initiations(proxy: RecordingProxy, since: int) -> list[dict]:
    return [r for r in proxy.requests[since:] if "uploadType=resumable" in r["path"]]


def assert_envelope(resp, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code
    assert resp.headers["Content-Type"] == "application/json"


# --- filename: never reaches the object name or a header -----------------------------------------


@pytest.mark.parametrize(
    ("filename", "extension"),
    [
        pytest.param("../../etc/passwd", "mp4", id="traversal"),
        pytest.param("..\\..\\windows\\system32\\x.mp4", "mp4", id="traversal-backslash"),
        pytest.param("/abs/path/x.M4V", "m4v", id="absolute"),
        pytest.param("x.mp4\x00.sh", "mp4", id="nul"),
        pytest.param("x.html", "mp4", id="html"),
        pytest.param("x.svg", "mp4", id="svg"),
        pytest.param("x.\u212a", "mp4", id="kelvin-sign"),
        pytest.param("x\r\nX-Evil: injected\r\n.mp4", "mp4", id="crlf"),
        pytest.param("é" * 5000 + ".mp4", "mp4", id="long-unicode"),
        pytest.param("😀" * 4000, "mp4", id="long-emoji-no-suffix"),
        pytest.param("x.%2e%2e%2fmp4", "mp4", id="percent-encoded"),
        pytest.param("x." + "a" * 11, "mp4", id="suffix-too-long"),
    ],
)
def test_hostile_filename_never_reaches_object_name_or_headers(target, ws_key, filename, extension):
    url, proxy = target
    key, workspace = ws_key
    seen = len(proxy.requests)
    resp = post(url, key, {"content_type": "video/mp4", "filename": filename})
    assert resp.status_code == 201, resp.text
    name = resp.json()["source_url"].split(f"/{BUCKET}/", 1)[1]
    assert re.fullmatch(rf"uploads/{workspace}/[0-9a-f]{{32}}\.{extension}", name)

    (initiation,) = initiations(proxy, seen)
    assert json.loads(initiation["body"])["name"] == name
    wire = "\n".join(
        [
            unquote(initiation["path"]),
            initiation["body"].decode("utf-8", "replace"),
            *(f"{k}: {v}" for k, v in initiation["headers"].items()),
        ]
    ).replace(name, "")
    for fragment in ("..", "X-Evil", "\r", "é", "😀", "passwd", "windows"):
        assert fragment not in wire


# --- content_type: refused before anything is sent to Storage ------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "code"),
    [
        pytest.param("video/mp4\r\nX-Evil: injected", "validation_error", id="crlf"),
        pytest.param("video/mp4\x00", "validation_error", id="nul"),
        pytest.param("video/mp4; x=\r\n", "validation_error", id="crlf-in-parameter"),
        pytest.param("../../video/mp4", "unsupported_content_type", id="traversal"),
        pytest.param("é" * 5000, "unsupported_content_type", id="long-unicode"),
        pytest.param("video/mp4\u2028", "unsupported_content_type", id="unicode-line-separator"),
        pytest.param("vıdeo/mp4", "unsupported_content_type", id="dotless-i"),  # noqa: RUF001 - the lookalike is the test
        pytest.param("text/html", "unsupported_content_type", id="html"),
    ],
)
def test_hostile_content_type_is_refused_and_nothing_reaches_storage(target, ws_key, content_type, code):
    url, proxy = target
    key, _ = ws_key
    seen = len(proxy.requests)
    resp = post(url, key, {"content_type": content_type})
    assert_envelope(resp, 422, code)
    assert "X-Evil" not in resp.text
    assert "é" not in resp.text
    assert initiations(proxy, seen) == []


def test_content_type_parameters_never_reach_storage(target, ws_key):
    url, proxy = target
    key, _ = ws_key
    seen = len(proxy.requests)
    resp = post(url, key, {"content_type": 'Video/MP4; codecs="avc1"; name="é"'})
    assert resp.status_code == 201
    (initiation,) = initiations(proxy, seen)
    headers = {k.lower(): v for k, v in initiation["headers"].items()}
    assert headers["x-upload-content-type"] == "video/mp4"


# --- bodies ---------------------------------------------------------------------------------------


def test_one_mib_body_is_refused_with_413(target, ws_key):
    url, _ = target
    key, _ = ws_key
    raw = json.dumps({"content_type": "video/mp4", "filename": "x" * (1 << 20)}).encode()
    assert_envelope(post(url, key, raw=raw), 413, "payload_too_large")


def test_one_mib_chunked_body_without_length_is_refused_with_413(target, ws_key):
    url, _ = target
    key, _ = ws_key

    def chunks():
        yield b'{"content_type": "video/mp4", "filename": "'
        for _ in range(64):
            yield b"x" * 16384
        yield b'"}'

    resp = requests.post(
        url + "/v1/uploads",
        data=chunks(),
        timeout=30,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert_envelope(resp, 413, "payload_too_large")


@pytest.mark.parametrize("path", ["/v1/uploads", "/nowhere", "/internal/storage-events"])
@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param(b"zz\r\n{}\r\n0\r\n\r\n", id="size-not-hex"),
        pytest.param(b"2\r\n{}XX0\r\n\r\n", id="no-crlf-after-data"),
        pytest.param(b"2\r\n{}\r\n", id="ends-before-the-last-chunk"),
    ],
)
def test_malformed_chunked_framing_is_400_without_a_key_and_logs_no_error(served_default, path, chunks):
    """The server cannot follow the body: a 400 in the envelope, the connection closed, no traceback."""
    host, port = served_default.url.removeprefix("http://").split(":")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    before = len(served_default.log_lines())
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + chunks)
        sock.shutdown(socket.SHUT_WR)  # the client has nothing more: the server must not wait for it
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
    assert response.status == 400, body
    assert response.getheader("Connection", "").lower() == "close"
    assert json.loads(body)["error"]["code"] == "bad_request"
    lines = served_default.log_lines()[before:]
    assert [line["httpRequest"]["status"] for line in lines if "httpRequest" in line] == [400]
    assert not [line for line in lines if line.get("severity") == "ERROR"]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"[" * 30000 + b"]" * 30000, id="deeply-nested-arrays"),
        pytest.param(b'{"a":' * 10000 + b"1" + b"}" * 10000, id="deeply-nested-objects"),
        pytest.param(b'{"content_type": "image/png", "content_type": "video/mp4"}', id="duplicate-keys"),
        pytest.param(b"content_type=video%2Fmp4", id="form-encoded"),
        pytest.param(b'{"content_type": "video/mp4"', id="truncated"),
        pytest.param(b"\xef\xbb\xbf{}", id="byte-order-mark"),
    ],
)
def test_malformed_json_is_400(target, ws_key, raw):
    url, _ = target
    key, _ = ws_key
    assert_envelope(post(url, key, raw=raw), 400, "invalid_json")


@pytest.mark.parametrize("idempotent", [False, True], ids=["plain", "idempotency-key"])
@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        # Past Python's 4,300-digit limit for int(str): once a 500.
        pytest.param(
            b'{"content_type": "video/mp4", "size_bytes": ' + b"9" * 5000 + b"}",
            422,
            "upload_too_large",
            id="size-5000-digits",
        ),
        pytest.param(
            b'{"content_type": "video/mp4", "size_bytes": -' + b"9" * 5000 + b"}",
            422,
            "validation_error",
            id="size-minus-5000-digits",
        ),
        pytest.param(b'{"content_type": "video/mp4", "size_bytes": 1e5000}', 422, "validation_error", id="size-1e5000"),
        pytest.param(
            b'{"content_type": "video/mp4", "filename": ' + b"9" * 5000 + b"}",
            422,
            "validation_error",
            id="filename-5000-digits",
        ),
        # Half a UTF-16 pair: valid JSON syntax, no character. Once a 500 with an Idempotency-Key.
        pytest.param(
            b'{"content_type": "video/mp4", "filename": "\\ud800.mp4"}', 400, "invalid_json", id="lone-high-surrogate"
        ),
        pytest.param(
            b'{"content_type": "video/mp4", "filename": "x\\udfff"}', 400, "invalid_json", id="lone-low-surrogate"
        ),
        pytest.param(b'{"content_type": "video/mp4", "\\ud800": 1}', 400, "invalid_json", id="lone-surrogate-key"),
    ],
)
def test_numbers_and_strings_python_cannot_hold_are_4xx_and_store_nothing(
    target, ws_key, db, raw, status, code, idempotent
):
    url, proxy = target
    key, workspace = ws_key
    seen = len(proxy.requests)
    idem = f"hostile-{uuid.uuid4()}"
    headers = {"Idempotency-Key": idem} if idempotent else {}
    resp = requests.post(
        url + "/v1/uploads", data=raw, timeout=30, headers={"Authorization": f"Bearer {key}", **headers}
    )
    assert_envelope(resp, status, code)
    assert initiations(proxy, seen) == []
    doc = db.collection(idempotency.COLLECTION).document(idempotency.record_id(workspace, "live", idem)).get()
    assert not doc.exists


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
    ],
)
def test_request_content_type_header_does_not_matter_for_a_json_body(target, ws_key, content_type):
    url, _ = target
    key, _ = ws_key
    headers = {"Authorization": f"Bearer {key}"}
    if content_type:
        headers["Content-Type"] = content_type
    resp = requests.post(url + "/v1/uploads", data=json.dumps(VIDEO), headers=headers, timeout=30)
    assert resp.status_code == 201, resp.text


# --- Idempotency-Key ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("k" * 256, id="too-long"),
        pytest.param("a\tb", id="tab"),
        pytest.param("", id="empty"),
    ],
)
def test_bad_idempotency_key_is_400_in_the_envelope(target, ws_key, value):
    url, _ = target
    key, _ = ws_key
    assert_envelope(post(url, key, headers={"Idempotency-Key": value}), 400, "invalid_idempotency_key")


@pytest.mark.parametrize(
    ("value", "code"),
    [
        pytest.param(b"caf\xc3\xa9", "invalid_idempotency_key", id="non-ascii"),
        pytest.param(b"a\x01b", "bad_request", id="control-char"),
        pytest.param(b"a\x7fb", "bad_request", id="delete-char"),
    ],
)
def test_idempotency_key_bytes_that_http_forbids_are_400_and_store_nothing(target, ws_key, db, value, code):
    """Non-ASCII reaches our check. Control characters are not valid HTTP: the
    HTTP server refuses them before the function runs, in the envelope too."""
    url, _ = target
    key, workspace = ws_key
    status, body = raw_request(url, [b"Authorization: Bearer " + key.encode(), b"Idempotency-Key: " + value])
    assert status == 400
    assert json.loads(body)["error"]["code"] == code
    from google.cloud.firestore_v1.base_query import FieldFilter

    from lib.api import idempotency

    stored = db.collection(idempotency.COLLECTION).where(filter=FieldFilter("workspace_id", "==", workspace))
    assert list(stored.stream()) == []


# --- Authorization --------------------------------------------------------------------------------


def test_two_authorization_headers_are_refused(target, ws_key):
    url, _ = target
    key, _ = ws_key
    status, body = raw_request(url, [b"Authorization: Bearer " + key.encode()] * 2)
    assert status == 401
    assert json.loads(body)["error"]["code"] == "invalid_api_key"


def _variants(key: str) -> dict[str, tuple[str, int]]:
    secret = key[len("fl_live_") :]
    return {
        "exact": (f"Bearer {key}", 201),
        "scheme-lower-case": (f"bearer {key}", 201),
        "surrounding-spaces": (f"Bearer   {key}  ", 201),
        "key-upper-case": (f"Bearer {key.upper()}", 401),
        "key-case-swapped": (f"Bearer {key.swapcase()}", 401),
        "truncated": (f"Bearer {key[:-1]}", 401),
        "one-char-longer": (f"Bearer {key}A", 401),
        "inner-space": (f"Bearer {key[:20]} {key[20:]}", 401),
        "other-mode-prefix": (f"Bearer fl_test_{secret}", 401),
        "valid-prefix-random-secret": (f"Bearer fl_live_{secrets.token_urlsafe(32)}", 401),
        "secret-only": (f"Bearer {secret}", 401),
        "other-scheme": (f"Token {key}", 401),
        "basic": (f"Basic {key}", 401),
    }


@pytest.mark.parametrize("variant", list(_variants("fl_live_" + "x" * 43)))
def test_key_variants(target, ws_key, variant):
    url, _ = target
    key, _ = ws_key
    header, status = _variants(key)[variant]
    resp = requests.post(url + "/v1/uploads", json=VIDEO, headers={"Authorization": header}, timeout=30)
    assert resp.status_code == status, resp.text
    if status == 401:
        assert resp.json()["error"]["code"] == "invalid_api_key"
        assert resp.headers["WWW-Authenticate"] == "Bearer"


def test_one_workspaces_idempotency_key_replayed_by_another_gets_its_own_upload(target, make_key):
    url, _ = target
    (key_a, ws_a), (key_b, ws_b) = make_key(), make_key()
    idem = f"shared-{uuid.uuid4()}"
    first = post(url, key_a, headers={"Idempotency-Key": idem})
    other = post(url, key_b, headers={"Idempotency-Key": idem})
    assert (first.status_code, other.status_code) == (201, 201)
    assert first.json()["upload_url"] != other.json()["upload_url"]
    assert f"/uploads/{ws_a}/" in first.json()["source_url"]
    assert f"/uploads/{ws_b}/" in other.json()["source_url"]
    # Different body under B's own record: B's key space is untouched by A.
    assert post(url, key_b, {"content_type": "image/png"}, headers={"Idempotency-Key": idem}).status_code == 409


# --- property-based: schemathesis against openapi.yaml ------------------------------------------------


@pytest.fixture(scope="module")
def deliveries_target(backends, log_dir, shipped):
    """The deliveries function (the webhook pushes' routes), served as deployed."""
    function = start_shipped(shipped, backends["env"], log_dir, name="function-hostile-deliveries", target="deliveries")
    try:
        yield function.url
    finally:
        function.stop()


# Which of openapi.yaml's operations each function serves: the webhook routes are the deliveries
# function's alone (the API's answers them 404), the health routes both's.
SERVED_BY = {
    "uploads": ("--exclude-path-regex", "^/internal/webhook"),
    "deliveries": ("--include-path-regex", "^/internal/webhook|^/health"),
}


@pytest.mark.parametrize(("function", "least"), [("uploads", 300), ("deliveries", 100)])
def test_schemathesis_finds_no_5xx_and_no_response_off_the_document(request, key, tmp_path, function, least):
    """Every check schemathesis has: no server error, status codes, content types,
    headers and bodies as documented, invalid input refused, valid input accepted,
    auth enforced, unsupported methods answered with Allow; against each function for
    the operations it serves."""
    url = (
        request.getfixturevalue("target")[0] if function == "uploads" else request.getfixturevalue("deliveries_target")
    )
    seed = os.environ.get("SCHEMATHESIS_SEED", "20261128")
    result = subprocess.run(
        [
            str(ROOT / ".venv/bin/schemathesis"),
            "run",
            str(ROOT / "openapi.yaml"),
            "--url",
            url,
            "--header",
            f"Authorization: Bearer {key}",
            "--checks",
            "all",
            "--max-examples",
            "300",
            "--seed",
            seed,
            "--suppress-health-check",
            "too_slow",
            *SERVED_BY[function],
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    summary = re.search(r"(\d+) generated, .*", result.stdout)
    assert result.returncode == 0, result.stdout[-4000:]
    assert summary, result.stdout[-2000:]
    assert int(summary.group(1)) >= least, result.stdout[-2000:]


# --- the HTTP server: request lines, headers, stalled clients (lib/platform/server.py) ----------------------


def exchange(url: str, data: bytes, timeout: float = 60) -> tuple[int, dict]:
    """Send raw bytes, read the whole answer; (status, JSON body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        with contextlib.suppress(
            BrokenPipeError, ConnectionResetError
        ):  # refused before it was all sent: the answer is still there to read
            sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert body.endswith(b"}\n"), body[-100:]  # the server's refusals end as the function's answers do
    return int(head.split(b" ", 2)[1]), json.loads(body)


def function_log(log_dir) -> str:
    return (log_dir / "function-hostile.log").read_text(errors="replace")


@pytest.mark.parametrize(
    ("length", "limit"),
    [
        pytest.param(3000, 2048, id="long-path-refused-by-the-function"),
        pytest.param(10 * 1024 * 1024, 8190, id="10-mb-path-refused-by-the-server"),
    ],
)
def test_a_long_path_is_414_in_the_envelope_and_logged_only_in_part(target, log_dir, length, limit):
    url, _ = target
    marker = secrets.token_hex(8)
    path = f"/v1/uploads/{marker}" + "a" * (length - 12 - len(marker))
    status, body = exchange(url, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert status == 414
    assert body["error"]["code"] == "uri_too_long"
    assert body["error"]["details"] == {"max_bytes": limit}
    # No log line holds more than a bounded prefix of what the client sent.
    assert max(len(line) for line in function_log(log_dir).splitlines()) < 4096
    assert "a" * 1024 not in function_log(log_dir)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(b"X-Pad: " + b"v" * 9000 + b"\r\n", id="one-header-over-8190-bytes"),
        pytest.param(b"".join(b"X-Pad-%d: v\r\n" % i for i in range(120)), id="over-100-headers"),
    ],
)
def test_too_many_or_too_large_headers_are_431_in_the_envelope(target, headers):
    url, _ = target
    status, body = exchange(url, b"GET /v1/uploads HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert status == 431
    assert body["error"]["code"] == "request_headers_too_large"


def test_malformed_http_is_400_in_the_envelope(target):
    url, _ = target
    status, body = exchange(url, b"GET /v1/uploads HTTP/9.9\r\nHost: x\r\n\r\n")
    assert status == 400
    assert body["error"]["code"] == "bad_request"


def test_half_sent_requests_cannot_hold_every_thread(target, ws_key, log_dir):
    """Once 8 clients that sent part of a request and stopped held all 8 threads,
    and a real request timed out. Each read now waits at most 10 s."""
    url, _ = target
    key, _ = ws_key
    host, port = url.removeprefix("http://").split(":")
    stalled = []
    try:
        for i in range(16):  # twice the served function's threads (4 per core on 2 cores)
            sock = socket.create_connection((host, int(port)), timeout=60)
            part = (
                b"POST /v1/uploads HTTP/1.1\r\nHost: x\r\n"
                if i % 2
                else b"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
            )
            sock.sendall(part)
            stalled.append(sock)
        resp = post(url, key)  # requests' own 30 s timeout: far above one 10 s read
        assert resp.status_code == 201, resp.text
        # The stalled body got its answer: 408 in the envelope.
        answers = []
        for sock in stalled[0::2]:
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            answers.append(b"".join(chunks))
        assert answers
        assert all(a.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in a for a in answers)
        # A stalled header is one JSON log line each, not a traceback.
        log = function_log(log_dir)
        assert "request read timed out" in log
        assert "BlockingIOError" not in log
    finally:
        for sock in stalled:
            sock.close()


# --- a request's whole time, and answers that close ---------------------------------------------

DEADLINE = 3  # REQUEST_DEADLINE_SECONDS for these functions (30 s deployed)


@pytest.fixture(scope="module")
def quick(backends, log_dir, shipped):
    """A served function whose requests get DEADLINE seconds for their line, headers and body."""
    function = start_shipped(
        shipped, dict(backends["env"], REQUEST_DEADLINE_SECONDS=str(DEADLINE)), log_dir, name="function-deadline"
    )
    try:
        yield function
    finally:
        function.stop()


def dribble(url: str, first: bytes, then: bytes, stop: threading.Event) -> bytes:
    """Send `first`, then `then` a byte at a time every 0.5 s (each read is quick, the whole is not)
    until the server closes; everything it answered."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(first)
        for byte in then:
            if stop.wait(0.5):
                break
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break  # the server shut the connection
            sock.settimeout(0.01)
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break  # an answer is waiting
            except (TimeoutError, BlockingIOError):
                pass
            except OSError:
                break
            sock.settimeout(60)
        sock.settimeout(60)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("first", "then"),
    [
        pytest.param(b"POST /v1/uploads HTTP/1.1\r\nHost: x\r\n", b"X-Slow: " + b"v" * 200, id="headers"),
        pytest.param(
            b"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n", b"{" + b" " * 200, id="body"
        ),
    ],
)
def test_a_dribbled_request_gets_408_at_its_deadline_and_the_connection_closes(quick, first, then):
    """Every read is quick (a byte each 0.5 s, far under the 10 s per read), so only the whole
    request's deadline ends it: 400 bytes would take 200 s; the server answers at its deadline."""
    stop = threading.Event()
    try:
        answer = dribble(quick.url, first, then, stop)
    finally:
        stop.set()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"connection: close" in head.lower()
    assert b'"code":"request_timeout"' in body  # the envelope (chunked when the function answers it)


def test_an_early_answer_says_it_closes_and_the_clients_next_call_works(quick, ws_key):
    """A 1 MiB body is refused with 413 before it is read: the answer says `Connection: close`,
    so a client that pools connections (requests) opens a new one for its next call instead of
    failing it with RemoteDisconnected."""
    key, _ = ws_key
    session = requests.Session()
    refused = session.post(
        quick.url + "/v1/uploads",
        data=b"x" * (1024 * 1024),
        timeout=30,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert refused.status_code == 413
    assert refused.headers["Connection"].lower() == "close"
    created = session.post(
        quick.url + "/v1/uploads",
        json={"content_type": "video/mp4"},
        timeout=30,
        headers={"Authorization": f"Bearer {key}"},
    )
    assert created.status_code == 201
