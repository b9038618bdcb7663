"""POST /v1/uploads through functions-framework's Flask app, on the emulators."""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime, timedelta

import pytest

from lib.api import auth
from lib.platform.errors import NotFound
from lib.uploads import naming, sweep
from tests.conftest import BUCKET, STAGING_BUCKET
from tests.helpers import content_type_pattern, media, parse_rfc3339_utc, response_schema_errors, schema_errors

VIDEO = {"content_type": "video/mp4", "filename": "clip.mp4"}


def post(client, body=VIDEO, headers=None, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body)
    return client.post("/v1/uploads", data=data, headers={"Content-Type": "application/json", **(headers or {})})


def assert_error(resp, status: int, code: str, openapi_doc: dict) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert response_schema_errors(openapi_doc, status, body) == []
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Request-Id"]
    return body["error"]


# --- 201 ---------------------------------------------------------------------


def test_if_key_valid_then_201_with_the_seed_shape(client, make_key, seed_doc, openapi_doc):
    key, workspace = make_key()
    before = datetime.now(UTC).replace(microsecond=0)
    resp = post(client, headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    body = resp.get_json()
    assert schema_errors(seed_doc, "#/components/schemas/UploadOut", body) == []
    assert response_schema_errors(openapi_doc, 201, body) == []
    # The seed's three fields, and the id this service adds (issue 6), first.
    assert list(body) == ["id", "upload_url", "source_url", "expires_at"]

    match = re.fullmatch(
        rf"http://127\.0\.0\.1:\d+/{BUCKET}/uploads/{workspace}/([0-9a-f]{{32}})\.mp4", body["source_url"]
    )
    assert match, body["source_url"]
    assert body["id"] == f"upl_{match.group(1)}"
    assert "upload_id=" in body["upload_url"]
    expires = parse_rfc3339_utc(body["expires_at"])
    assert before + timedelta(seconds=3600) <= expires <= datetime.now(UTC) + timedelta(seconds=3600)
    assert resp.headers["Cache-Control"] == "no-store"
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-Id"])
    assert "Idempotent-Replayed" not in resp.headers


def test_every_upload_gets_a_distinct_object_and_session(client, auth_headers):
    bodies = [post(client, headers=auth_headers).get_json() for _ in range(5)]
    assert len({b["upload_url"] for b in bodies}) == 5
    assert len({b["source_url"] for b in bodies}) == 5


@pytest.mark.parametrize(
    ("body", "suffix"),
    [
        pytest.param({"content_type": "video/quicktime", "filename": "Holiday.MOV"}, ".mov", id="filename-suffix"),
        pytest.param({"content_type": "image/png"}, ".png", id="canonical"),
        pytest.param({"content_type": "image/png", "filename": None}, ".png", id="null-filename"),
        pytest.param({"content_type": "audio/mpeg", "filename": "../../../etc/passwd"}, ".mp3", id="traversal"),
        pytest.param({"content_type": "audio/x-wav", "filename": "take 2"}, ".wav", id="alias"),
    ],
)
def test_object_name_takes_only_a_safe_extension_from_the_filename(client, make_key, body, suffix):
    key, workspace = make_key()
    resp = post(client, body=body, headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 201
    name = resp.get_json()["source_url"].split(f"/{BUCKET}/", 1)[1]
    assert re.fullmatch(rf"uploads/{workspace}/[0-9a-f]{{32}}" + re.escape(suffix), name)


def test_blob_is_created_with_the_normalised_content_type(client, auth_headers, gcs):
    resp = post(client, body={"content_type": "Video/MP4; codecs=avc1"}, headers=auth_headers)
    assert resp.status_code == 201
    body = resp.get_json()
    import requests

    clip = media("clip.mp4")
    put = requests.put(body["upload_url"], data=clip, timeout=10)  # no Content-Type of its own
    assert put.status_code in (200, 201)
    name = body["source_url"].split(f"/{BUCKET}/", 1)[1]
    staged = gcs.bucket(STAGING_BUCKET).get_blob(name)
    assert staged.content_type == "video/mp4"
    assert staged.size == len(clip)
    assert client.get(f"/v1/uploads/{body['id']}", headers=auth_headers).get_json()["status"] == "completed"
    placed = gcs.bucket(BUCKET).get_blob(name)  # the served copy keeps it
    assert placed.content_type == "video/mp4"
    assert placed.size == len(clip)


def test_test_mode_key_also_works(client, make_key):
    key, _ = make_key(mode="test")
    assert key.startswith("fl_test_")
    assert post(client, headers={"Authorization": f"Bearer {key}"}).status_code == 201


def test_request_content_type_header_is_not_required(client, auth_headers):
    resp = client.post("/v1/uploads", data=json.dumps(VIDEO), headers={**auth_headers, "Content-Type": "text/plain"})
    assert resp.status_code == 201


# --- 401 ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="missing"),
        pytest.param("Basic Zm9vOmJhcg==", id="other-scheme"),
        pytest.param("Bearer ", id="empty"),
        pytest.param("Bearer not-a-key", id="malformed"),
        pytest.param("Bearer fl_live_" + "A" * 43, id="unknown"),
    ],
)
def test_if_key_missing_or_bad_then_401(client, header, openapi_doc):
    headers = {"Authorization": header} if header is not None else {}
    resp = post(client, headers=headers)
    assert_error(resp, 401, "invalid_api_key", openapi_doc)
    assert resp.headers["WWW-Authenticate"] == "Bearer"


def test_if_key_revoked_then_401(client, make_key, db, openapi_doc):
    key, _ = make_key()
    assert post(client, headers={"Authorization": f"Bearer {key}"}).status_code == 201
    db.collection(auth.COLLECTION).document(auth.key_id(key)).update({"revoked_at": datetime.now(UTC)})
    resp = post(client, headers={"Authorization": f"Bearer {key}"})
    assert_error(resp, 401, "invalid_api_key", openapi_doc)


def test_every_401_is_identical_to_the_client(client, make_key, db):
    revoked, _ = make_key()
    db.collection(auth.COLLECTION).document(auth.key_id(revoked)).update({"revoked_at": datetime.now(UTC)})
    bodies = {
        post(client, headers=h).get_data()
        for h in (
            {},
            {"Authorization": "Bearer x"},
            {"Authorization": "Bearer fl_live_" + "B" * 43},
            {"Authorization": f"Bearer {revoked}"},
        )
    }
    assert len(bodies) == 1


def test_auth_comes_before_body_validation(client):
    resp = post(client, raw=b"not json", headers={"Authorization": "Bearer nope"})
    assert resp.status_code == 401


def test_stored_key_document_holds_a_hash_not_the_key(make_key, db):
    key, workspace = make_key()
    snap = db.collection(auth.COLLECTION).document(auth.key_id(key)).get()
    doc = snap.to_dict()
    assert set(doc) == {"workspace_id", "name", "prefix", "mode", "created_at", "revoked_at"}
    assert doc["workspace_id"] == workspace
    assert doc["mode"] == "live"
    assert doc["revoked_at"] is None
    assert doc["prefix"] == key[:12]
    assert key[12:] not in json.dumps(doc, default=str)
    assert snap.id != key


# --- 400 / 413 / 422 -----------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{content_type: video/mp4}", id="not-json"),
        pytest.param(b'["video/mp4"]', id="array"),
        pytest.param(b'{"content_type": "video/mp4", "content_type": "image/png"}', id="duplicate-keys"),
        pytest.param(b"[" * 20000 + b"]" * 20000, id="deeply-nested"),
    ],
)
def test_if_body_not_a_json_object_then_400_invalid_json(client, auth_headers, raw, openapi_doc):
    assert_error(post(client, headers=auth_headers, raw=raw), 400, "invalid_json", openapi_doc)


def test_if_body_over_64_kib_then_413(client, auth_headers, openapi_doc):
    raw = json.dumps({"content_type": "video/mp4", "filename": "x" * (64 * 1024)}).encode()
    err = assert_error(post(client, headers=auth_headers, raw=raw), 413, "payload_too_large", openapi_doc)
    assert err["details"] == {"max_bytes": 65536}


def test_body_of_exactly_64_kib_is_accepted(client, auth_headers):
    body = {"content_type": "video/mp4", "filename": ""}
    pad = 64 * 1024 - len(json.dumps(body).encode())
    raw = json.dumps(body).encode()[:-1] + b" " * pad + b"}"
    assert len(raw) == 64 * 1024
    assert post(client, headers=auth_headers, raw=raw).status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({}, "content_type", id="missing"),
        pytest.param({"content_type": 42}, "content_type", id="wrong-type"),
        pytest.param({"content_type": "video/mp4", "filename": ["a.mp4"]}, "filename", id="filename-wrong-type"),
        pytest.param({"content_type": "video/mp4", "colour": "red"}, "colour", id="unknown-field"),
        pytest.param({"content_type": "video/mp4\r\nX-Injected: 1"}, "content_type", id="control-characters"),
    ],
)
def test_if_field_invalid_then_422_validation_error(client, auth_headers, body, field, openapi_doc):
    err = assert_error(post(client, body=body, headers=auth_headers), 422, "validation_error", openapi_doc)
    assert [f["field"] for f in err["details"]["fields"]] == [field]
    assert "X-Injected" not in json.dumps(err)


def test_a_body_of_thousands_of_unknown_keys_gets_a_short_422(client, auth_headers, openapi_doc):
    """A 64 KiB body can hold ~7,600 unknown keys: the answer lists 20 and counts the rest."""
    body = {"content_type": "video/mp4", **{f"{n:x}": 0 for n in range(7600)}}
    raw = json.dumps(body, separators=(",", ":")).encode()
    assert len(raw) <= 64 * 1024
    resp = post(client, headers=auth_headers, raw=raw)
    err = assert_error(resp, 422, "validation_error", openapi_doc)
    assert len(err["details"]["fields"]) == 20
    assert err["details"]["more_fields"] == 7600 - 20
    assert len(resp.data) < 4096


@pytest.mark.parametrize("content_type", ["text/html", "application/pdf", "image/svg+xml", "video/x-msvideo"])
def test_if_content_type_unsupported_then_422_with_the_list(client, auth_headers, content_type, openapi_doc):
    err = assert_error(
        post(client, body={"content_type": content_type}, headers=auth_headers),
        422,
        "unsupported_content_type",
        openapi_doc,
    )
    assert err["details"]["supported_content_types"] == naming.SUPPORTED


@pytest.mark.parametrize("value", ["", "x" * 256, "naïve", "a\tb"])
def test_if_idempotency_key_invalid_then_400(client, auth_headers, value, openapi_doc):
    resp = post(client, headers={**auth_headers, "Idempotency-Key": value})
    assert_error(resp, 400, "invalid_idempotency_key", openapi_doc)


# --- routing -----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/v1/uploads/",
        "/v1/upload",
        "/v2/uploads",
        "/v1/uploads//cancel",
        "/v1/uploads/upl_1/cancel/",
        "/v1/uploads/upl_1/x",
        "/internal",
        "/internal/sweep/",
    ],
)
def test_if_path_unknown_then_404(client, auth_headers, path, openapi_doc):
    assert_error(client.post(path, json=VIDEO, headers=auth_headers), 404, "not_found", openapi_doc)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/v1/uploads/upl_1", "GET"),
        ("DELETE", "/v1/uploads/upl_1", "GET"),
        ("GET", "/v1/uploads/upl_1/cancel", "POST"),
        ("GET", "/internal/sweep", "POST"),
    ],
)
def test_if_method_not_served_on_a_lifecycle_route_then_405_with_allow(client, auth_headers, method, path, allowed):
    resp = client.open(path, method=method, headers=auth_headers)
    assert resp.status_code == 405
    assert resp.get_json()["error"]["code"] == "method_not_allowed"
    assert resp.headers["Allow"] == allowed


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_if_method_not_post_then_405_with_allow(client, auth_headers, method, openapi_doc):
    resp = client.open("/v1/uploads", method=method, headers=auth_headers)
    assert_error(resp, 405, "method_not_allowed", openapi_doc)
    assert resp.headers["Allow"] == "POST"


# --- headers -----------------------------------------------------------------


def test_sane_request_id_is_echoed_and_insane_one_replaced(client, auth_headers):
    echoed = post(client, headers={**auth_headers, "X-Request-Id": "req-123.abc:9"}).headers["X-Request-Id"]
    assert echoed == "req-123.abc:9"
    for bad in ("has space", "x" * 129, "<script>"):
        rid = post(client, headers={**auth_headers, "X-Request-Id": bad}).headers["X-Request-Id"]
        assert rid != bad
        assert re.fullmatch(r"[0-9a-f]{32}", rid)
    err = client.get("/nowhere", headers={"X-Request-Id": "trace-me"})
    assert err.headers["X-Request-Id"] == "trace-me"
    assert err.headers["Cache-Control"] == "no-store"


def test_every_answer_ends_with_a_newline_so_a_shell_prompt_after_curl_starts_on_its_own_line(client, auth_headers):
    answers = [
        client.post("/v1/uploads", json={"content_type": "video/mp4"}, headers=auth_headers),
        client.get("/v1/uploads/upl_" + "0" * 32, headers=auth_headers),
        client.get("/nope"),
        client.get("/health"),
        client.get("/robots.txt"),
    ]
    assert [a.status_code for a in answers] == [201, 404, 404, 200, 404]
    for answer in answers:
        assert answer.get_data().endswith(b"}\n")
        assert answer.get_data().count(b"\n") == 1


def test_openapi_content_type_pattern_is_the_codes_rule(openapi_doc):
    schema = openapi_doc["components"]["schemas"]["UploadRequest"]["properties"]["content_type"]
    assert schema["pattern"] == content_type_pattern()


def test_the_api_doc_names_every_route_and_the_sweeps_concurrency(main_module):
    """docs/api.md's route list and the sweep's figure, held to main.py."""
    main = main_module
    from tests.conftest import ROOT

    text = " ".join((ROOT / "docs" / "api.md").read_text().split())
    listed = text.split("Routes: ", 1)[1].split(". Checks run", 1)[0]
    documented = set(re.findall(r"`([A-Z]+ /[^`]*)`", listed))
    served = {f"{method} {template}" for template, methods in main.ROUTES for method in methods}
    assert documented == served
    assert f"at most {sweep.SWEEP_WORKERS} in flight" in text


def test_every_error_code_is_in_the_openapi_enum_and_the_readme_table(openapi_doc):
    import inspect

    from lib.platform import errors
    from tests.conftest import ROOT

    codes = {cls.code for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, errors.ApiError)}
    enum = openapi_doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    table = re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", (ROOT / "docs/api.md").read_text(), re.MULTILINE)
    statuses = {
        cls.code: cls.status
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.ApiError)
    }
    assert set(enum) == codes
    assert len(enum) == len(codes)
    assert {code for _, code in table} == codes
    assert all(statuses[code] == int(status) for status, code in table)


def test_a_warm_request_imports_nothing_and_builds_no_client(client, auth_headers, db):
    """Clients are made once per instance, and nothing is imported on the request path."""
    import sys

    from lib.platform import clients, config

    idem = {"Idempotency-Key": "warm-" + __import__("secrets").token_hex(8)}
    assert post(client, headers=auth_headers).status_code == 201  # warm: every path once
    assert post(client, headers={**auth_headers, **idem}).status_code == 201
    settings = config.load()
    before_modules = set(sys.modules)
    before_clients = (clients.firestore_client(settings.firestore), clients.storage_client(settings.firestore.project))
    for headers in (auth_headers, {**auth_headers, **idem}, {"Authorization": "Bearer nope"}):
        post(client, headers=headers)
    assert set(sys.modules) - before_modules == set()
    assert clients.firestore_client(settings.firestore) is before_clients[0]
    assert clients.storage_client(settings.firestore.project) is before_clients[1]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("https://app.example.com/", id="trailing-slash"),
        pytest.param("https://app.example.com/upload", id="path"),
        pytest.param("null", id="null-origin"),
        pytest.param("ftp://files.example.com", id="other-scheme"),
        pytest.param("https://app.example.com\n", id="newline"),
        pytest.param("app.example.com", id="no-scheme"),
        pytest.param("", id="empty"),
        pytest.param(42, id="not-a-string"),
        pytest.param("https://app.example.com:99999", id="port-past-65535"),
        pytest.param("https://app.example.com:0", id="port-0"),
        pytest.param("https://app.example.com:0443", id="port-leading-zero"),
        pytest.param("https://app.example.com:443", id="https-default-port"),
        pytest.param("http://app.example.com:80", id="http-default-port"),
        pytest.param("https://a..com", id="empty-label"),
        pytest.param("https://-a.com", id="label-starts-with-hyphen"),
        pytest.param("https://app.example.com.", id="trailing-dot"),
        pytest.param("https://App.Example.com", id="upper-case"),
        pytest.param("https://1.2.3.04", id="ipv4-not-canonical"),
        pytest.param("https://[:::1]", id="ipv6-malformed"),
        pytest.param("https://8", id="a-number-a-browser-reads-as-ipv4"),
        pytest.param("https://a.example.123", id="numeric-last-label"),
    ],
)
def test_a_malformed_cors_origin_is_422_naming_the_field(client, key, value):
    resp = client.post(
        "/v1/uploads",
        json={"content_type": "video/mp4", "cors_origin": value},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert error["code"] == "validation_error"
    assert [f["field"] for f in error["details"]["fields"]] == ["cors_origin"]
    assert str(value) not in json.dumps(error["details"]) or value in ("", 42)  # never the value sent


def test_the_documents_cors_origin_pattern_is_the_codes_and_admits_all_it_accepts(openapi_doc):
    """The document's pattern is lib/api/models.py's ORIGIN, which is the whole rule (an IPv6 address
    it admits in any valid form is bound in its canonical one, as its description says)."""
    import re

    from lib.api.models import ORIGIN, is_origin

    pattern = openapi_doc["components"]["schemas"]["UploadRequest"]["properties"]["cors_origin"]["anyOf"][0]["pattern"]
    assert pattern == f"^(?:{ORIGIN.pattern})(?![\\s\\S])"
    for value in (
        "https://app.example.com",
        "http://localhost:5173",
        "https://[::1]:8443",
        "https://a.b.c:1",
        "https://app.example.com/",
        "https://app.example.com\n",
        "null",
        "ftp://x.example",
        "https://",
        "https://a.example:443",
        "https://1.2.3.04",
    ):
        assert bool(re.search(pattern, value)) == bool(ORIGIN.fullmatch(value)) == is_origin(value), value


# --- unauthenticated floods ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("forwarded_for", "remote", "balancer", "expected"),
    [
        ("198.51.100.7,34.120.0.1", "169.254.1.1", "34.120.0.1", "198.51.100.7"),  # through the load balancer
        (
            "6.6.6.6, 198.51.100.7,34.120.0.1",
            "169.254.1.1",
            "34.120.0.1",
            "198.51.100.7",
        ),  # the client's own, unverified
        ("6.6.6.6, 34.120.0.1, 198.51.100.7", "169.254.1.1", "34.120.0.1", "198.51.100.7"),  # straight to the function
        ("198.51.100.7", "169.254.1.1", None, "198.51.100.7"),  # the function's own URL: Cloud Run's entry
        (None, "127.0.0.1", None, "127.0.0.1"),  # a local run
    ],
)
def test_the_client_address_is_the_one_googles_front_end_states(forwarded_for, remote, balancer, expected):
    assert auth.client_address(forwarded_for, remote, balancer) == expected


def test_an_address_sending_unknown_keys_is_refused_unread_past_its_limit(serve, make_key, openapi_doc):
    """Each unknown key costs a Firestore read until the address has sent AUTH_FAILURES_PER_MINUTE of them;
    then even a real key it has not shown before is refused unread (429), while other addresses are not."""
    from lib.limits import counters

    served = serve()
    address = f"198.51.100.{secrets.randbelow(200) + 1}"
    other = f"203.0.113.{secrets.randbelow(200) + 1}"
    real, _ = make_key()

    def send(key: str, source: str):
        return served.post(
            json={"content_type": "video/mp4"}, headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": source}
        )

    for _ in range(counters.AUTH_FAILURES_PER_MINUTE):
        assert send(auth.generate_key("live"), address).status_code == 401
    refused = send(auth.generate_key("live"), address)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert response_schema_errors(openapi_doc, 429, refused.json()) == []
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.json()["error"]["details"]["limit"] == counters.AUTH_FAILURES_PER_MINUTE
    # Not looked up: a real key from that address is refused too, and served from another.
    assert send(real, address).status_code == 429
    assert send(real, other).status_code == 201
    lines = [line for line in served.log_lines() if line.get("limited") == "authentication"]
    assert len(lines) == 2
    assert all(line["httpRequest"]["status"] == 429 for line in lines)
    # Firestore was read for the first AUTH_FAILURES_PER_MINUTE keys and the real key's other address only.
    assert sum(1 for line in served.log_lines() if line.get("key_lookup")) == counters.AUTH_FAILURES_PER_MINUTE + 1


@pytest.mark.parametrize(
    ("path", "template", "params"),
    [
        ("/v1/uploads", "/v1/uploads", {}),
        ("/v1/uploads/upl_1", "/v1/uploads/{upload_id}", {"upload_id": "upl_1"}),
        ("/v1/uploads/a.b %2F/cancel", "/v1/uploads/{upload_id}/cancel", {"upload_id": "a.b %2F"}),
        ("/health", "/health", {}),
    ],
)
def test_the_router_finds_each_route_with_its_parameters(main_module, path, template, params):
    _, found, named = main_module.UPLOADS(path)
    assert (named, found) == (template, params)


@pytest.mark.parametrize(
    "path",
    [
        "//v1/uploads",
        "///v1/uploads",
        "/v1/uploads/",
        "/v1//uploads",
        "/v1/uploads//cancel",
        "/v1/uploads/x/",
        "/health/",
        "/HEALTH",
        "/internal/webhooks",
    ],
)
def test_the_router_matches_whole_paths_only(main_module, path):
    """werkzeug's routing (issue 34) with what the hand-written one did: no slash merged or stripped,
    no case folded, and the API's router never serves the deliveries function's routes."""
    with pytest.raises(NotFound):
        main_module.UPLOADS(path)


def test_a_wrong_method_is_405_with_the_routes_own_allow(client):
    """werkzeug adds HEAD to every GET rule; the route's own methods are what Allow says."""
    for method, path, allow in (
        ("HEAD", "/health", "GET"),
        ("DELETE", "/v1/uploads", "POST"),
        ("PUT", "/v1/uploads/upl_1", "GET"),
    ):
        resp = client.open(path, method=method)
        assert resp.status_code == 405, (method, path)
        assert resp.headers["Allow"] == allow
