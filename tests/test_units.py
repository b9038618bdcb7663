"""Pure functions, tested without emulators: naming, types, parsing, hashing, config."""

from __future__ import annotations

import hashlib
import io
import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from lib.api import auth, idempotency, models
from lib.platform import clock, http, logs
from lib.platform.config import ConfigError, Settings
from lib.platform.errors import (
    InvalidApiKey,
    InvalidIdempotencyKey,
    InvalidJson,
    PayloadTooLarge,
    UnsupportedContentType,
    ValidationFailed,
)
from lib.uploads import naming, sweep
from tests.helpers import content_type_pattern


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param("video/mp4", "video/mp4", id="plain"),
        pytest.param("Video/MP4", "video/mp4", id="upper-case"),
        pytest.param('video/mp4; codecs="avc1.42E01E"', "video/mp4", id="parameters"),
        pytest.param("  audio/mpeg ", "audio/mpeg", id="whitespace"),
        pytest.param("audio/x-wav", "audio/wav", id="alias-x-wav"),
        pytest.param("image/jpg", "image/jpeg", id="alias-jpg"),
        pytest.param("font/woff2", "font/woff2", id="font"),
        pytest.param("text/vtt", "text/vtt", id="subtitles"),
    ],
)
def test_if_content_type_supported_then_normalised(given, expected):
    assert naming.normalize_content_type(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        pytest.param("text/html", id="html"),
        pytest.param("image/svg+xml", id="svg"),
        pytest.param("application/octet-stream", id="octet-stream"),
        pytest.param("", id="empty"),
        pytest.param("video", id="no-subtype"),
        pytest.param("video/mp4/x", id="extra-slash"),
    ],
)
def test_if_content_type_not_on_allow_list_then_unsupported(given):
    with pytest.raises(UnsupportedContentType) as info:
        naming.normalize_content_type(given)
    assert info.value.details["supported_content_types"] == sorted(naming.CONTENT_TYPES)
    assert "video/mp4" in info.value.details["supported_content_types"]


@pytest.mark.parametrize("given", ["video/mp4\r\nX-Evil: 1", "video/mp4\x00", "video/\tmp4", "video/mp4;\x7f"])
def test_if_content_type_has_control_characters_then_validation_error(given):
    with pytest.raises(ValidationFailed) as info:
        naming.normalize_content_type(given)
    assert info.value.details["fields"][0]["field"] == "content_type"
    assert given not in json.dumps(info.value.envelope())


@pytest.mark.parametrize(
    ("filename", "content_type", "expected"),
    [
        pytest.param("clip.MP4", "video/mp4", "mp4", id="lower-cased"),
        pytest.param("clip.m4v", "video/mp4", "m4v", id="another-usual-extension"),
        pytest.param("photo.JPEG", "image/jpeg", "jpeg", id="jpeg-spelled-out"),
        pytest.param("my.clip.mov", "video/mp4", "mp4", id="last-suffix-of-another-type"),
        pytest.param("my.clip.mov", "video/quicktime", "mov", id="last-suffix"),
        pytest.param("noext", "video/quicktime", "mov", id="no-suffix"),
        pytest.param(None, "image/jpeg", "jpg", id="no-filename"),
        pytest.param("", "audio/mpeg", "mp3", id="empty-filename"),
        pytest.param("clip.", "video/webm", "webm", id="trailing-dot"),
        pytest.param("x.abcdefghij", "video/mp4", "mp4", id="any-other-suffix"),
        pytest.param("x.html", "video/mp4", "mp4", id="html"),
        pytest.param("x.svg", "image/png", "png", id="svg"),
        pytest.param("x.exe", "font/woff2", "woff2", id="exe"),
        pytest.param("x.\u212a", "video/mp4", "mp4", id="kelvin-sign-folds-to-k"),
        pytest.param("x.m\u0130v", "video/mp4", "mp4", id="dotted-capital-i"),
        pytest.param("x.m-p4", "video/mp4", "mp4", id="suffix-punctuation"),
        pytest.param("../../etc/passwd", "video/mp4", "mp4", id="traversal"),
        pytest.param("a.mp4/../../b", "video/mp4", "mp4", id="traversal-after-dot"),
        pytest.param("x.mp4\x00", "video/mp4", "mp4", id="nul"),
        pytest.param("x.ñ", "video/mp4", "mp4", id="non-ascii"),
        pytest.param("x.mp3.gz", "audio/mpeg", "mp3", id="double-suffix"),
    ],
)
def test_extension_comes_from_filename_only_when_usual_for_the_type(filename, content_type, expected):
    assert naming.choose_extension(filename, content_type) == expected


def test_object_name_is_workspace_scoped_and_unguessable_and_the_id_names_it():
    made = [naming.new_upload("ws_1", "mp4", "live") for _ in range(1000)]
    assert len({name for _, name in made}) == 1000
    for upload_id, name in made:
        token = re.fullmatch(r"uploads/ws_1/([0-9a-f]{32})\.mp4", name).group(1)
        assert upload_id == f"upl_{token}"
        assert naming.UPLOAD_ID.fullmatch(upload_id)


def test_test_mode_objects_go_under_the_test_prefix():
    _, name = naming.new_upload("ws_1", "png", "test")
    assert re.fullmatch(r"test-uploads/ws_1/[0-9a-f]{32}\.png", name)
    # The prefixes must not nest, or one lifecycle rule would match the other's objects.
    live, test = naming.PREFIXES["live"], naming.PREFIXES["test"]
    assert not live.startswith(test)
    assert not test.startswith(live)


def test_source_url_joins_cdn_base_and_object_name():
    assert (
        naming.source_url("https://cdn-user.framelane.io", "uploads/ws_1/ab.mp4")
        == "https://cdn-user.framelane.io/uploads/ws_1/ab.mp4"
    )


def test_lifetime_is_whole_utc_seconds_and_rfc3339_prints_it():
    now = datetime(2026, 11, 28, 15, 59, 59, 987654, tzinfo=UTC)
    created, expires = clock.lifetime(now, 3600)
    assert clock.rfc3339(created) == "2026-11-28T15:59:59Z"
    assert clock.rfc3339(expires) == "2026-11-28T16:59:59Z"
    east = timezone(timedelta(hours=2))
    assert clock.rfc3339(datetime(2026, 11, 28, 17, 0, 0, tzinfo=east)) == "2026-11-28T15:00:00Z"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("https://app.example.com", "https://app.example.com"),
        ("http://localhost:3000", "http://localhost:3000"),
        ("null", None),
        ("https://a.example\r\nX: y", None),
        ("javascript:alert(1)", None),
        (None, None),
        ("https://app.example.com:443", None),  # a browser never sends the default port
        ("http://[0:0:0:0:0:0:0:1]:3000", "http://[::1]:3000"),  # bound as a browser serializes it
    ],
)
def test_only_a_well_formed_origin_is_forwarded(header, expected):
    assert models.browser_origin(header) == expected


def test_keys_have_the_documented_shape_and_entropy():
    live, test = auth.generate_key("live"), auth.generate_key("test")
    assert re.fullmatch(r"fl_live_[A-Za-z0-9_-]{43}", live)
    assert re.fullmatch(r"fl_test_[A-Za-z0-9_-]{43}", test)
    assert auth.is_well_formed(live)
    assert auth.is_well_formed(test)
    assert auth.key_id(live) != auth.key_id(auth.generate_key("live"))
    assert re.fullmatch(r"[0-9a-f]{64}", auth.key_id(live))
    assert auth.display_prefix(live) == live[:12]


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Basic dXNlcjpwYXNz", "scheme"),
        ("Bearer", "malformed"),
        ("Bearer fl_live_short", "malformed"),
        ("Bearer fl_prod_" + "a" * 43, "malformed"),
        ("Bearer FL_LIVE_" + "a" * 43, "malformed"),
        ("Bearer fl_live_" + "a" * 42 + "!", "malformed"),
        ("Bearer fl_live_" + "a" * 43 + ",Bearer fl_live_" + "b" * 43, "malformed"),
    ],
)
def test_if_bearer_header_bad_then_invalid_api_key(header, reason):
    with pytest.raises(InvalidApiKey) as info:
        auth.bearer_key(header)
    assert reason in info.value.reason
    assert info.value.headers == {"WWW-Authenticate": "Bearer"}


def test_bearer_scheme_is_case_insensitive():
    key = auth.generate_key("live")
    assert auth.bearer_key(f"bearer {key}") == key


def test_fingerprint_ignores_key_order_whitespace_and_equivalent_values_but_not_meaning():
    from lib.api import models

    def fingerprint(raw: str) -> str:
        return models.validate_upload_request(json.loads(raw)).fingerprint("video/mp4")

    a = fingerprint('{"content_type": "video/mp4", "filename": "a.mp4", "size_bytes": 2048}')
    assert a == fingerprint('{ "size_bytes":2048.0,\n"filename":"a.mp4", "content_type":"video/mp4" }')
    assert a == fingerprint('{"content_type": "video/mp4", "filename": "a.mp4", "size_bytes": 2048, "md5": null}')
    for other in (
        '{"content_type": "video/mp4", "filename": "b.mp4", "size_bytes": 2048}',
        '{"content_type": "video/mp4", "filename": "a.mp4", "size_bytes": 2049}',
        '{"content_type": "video/mp4", "filename": "a.mp4", "size_bytes": 2048, "crc32c": "AAAAAA=="}',
        '{"content_type": "video/mp4", "filename": "a.mp4", "size_bytes": 2048,'
        ' "cors_origin": "https://app.example.com"}',
    ):
        assert fingerprint(other) != a, other


def test_idempotency_record_ids_are_scoped_by_workspace_and_mode():
    ids = {idempotency.record_id(ws, mode, "k") for ws in ("ws_a", "ws_b") for mode in ("live", "test")}
    assert len(ids) == 4
    assert idempotency.record_id("ws_a", "live", "k") == idempotency.record_id("ws_a", "live", "k")
    assert idempotency.record_id("ws_a", "live", "k") == hashlib.sha256(b"ws_a\x00live\x00k").hexdigest()


@pytest.mark.parametrize("header", ["", "x" * 256, "é", "a\tb", "a\nb", "\x7f"])
def test_if_idempotency_key_malformed_then_rejected(header):
    with pytest.raises(InvalidIdempotencyKey):
        idempotency.parse_key(header)


@pytest.mark.parametrize("header", ["a", "x" * 255, "order-42 / retry #1", "~!@#$%^&*()"])
def test_if_idempotency_key_printable_ascii_then_accepted(header):
    assert idempotency.parse_key(header) == header


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(b"", "not valid JSON", id="empty"),
        pytest.param(b"{", "not valid JSON", id="truncated"),
        pytest.param(b"[]", "must be a JSON object", id="array"),
        pytest.param(b'"video/mp4"', "must be a JSON object", id="string"),
        pytest.param(b"null", "must be a JSON object", id="null"),
        pytest.param(b"\xff\xfe", "UTF-8", id="not-utf8"),
        pytest.param(b'{"a": NaN}', "NaN", id="nan"),
        pytest.param(b'{"content_type": "video/mp4", "content_type": "text/html"}', "duplicate", id="duplicate-keys"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested", id="deep-nesting"),
    ],
)
def test_if_body_not_a_json_object_then_invalid_json(raw, message):
    with pytest.raises(InvalidJson) as info:
        models.parse_json_object(raw)
    assert message in info.value.message


def test_body_over_limit_is_refused_without_reading_it_whole():
    stream = io.BytesIO(b"x" * (http.MAX_BODY_BYTES + 10))
    with pytest.raises(PayloadTooLarge):
        http.read_body(stream, None)
    assert stream.tell() == http.MAX_BODY_BYTES + 1
    with pytest.raises(PayloadTooLarge):
        http.read_body(io.BytesIO(b""), http.MAX_BODY_BYTES + 1)
    assert http.read_body(io.BytesIO(b"x" * http.MAX_BODY_BYTES), None) == b"x" * http.MAX_BODY_BYTES


@pytest.mark.parametrize(
    ("body", "field", "kind"),
    [
        ({}, "content_type", "missing"),
        ({"content_type": 5}, "content_type", "string_type"),
        ({"content_type": None}, "content_type", "string_type"),
        ({"content_type": "video/mp4", "filename": 7}, "filename", "string_type"),
        ({"content_type": "video/mp4", "size": 1}, "size", "extra_forbidden"),
    ],
)
def test_if_field_missing_wrong_type_or_unknown_then_validation_error(body, field, kind):
    with pytest.raises(ValidationFailed) as info:
        models.validate_upload_request(body)
    fields = info.value.details["fields"]
    assert {"field": field, "type": kind} == {k: fields[0][k] for k in ("field", "type")}


def test_validation_details_do_not_echo_the_input():
    secret_value = "SENSITIVE-VALUE-123"
    with pytest.raises(ValidationFailed) as info:
        models.validate_upload_request({"content_type": ["x", secret_value], "filename": {"v": secret_value}})
    assert secret_value not in json.dumps(info.value.envelope())
    assert sorted(f["field"] for f in info.value.details["fields"]) == ["content_type", "filename"]


def test_null_filename_is_allowed():
    assert models.validate_upload_request({"content_type": "video/mp4", "filename": None}).filename is None


def test_log_lines_are_scrubbed_of_keys_session_urls_and_bearer_values():
    key = auth.generate_key("live")
    text = (
        f"key {key} url http://x/upload?uploadType=resumable&upload_id=SECRETID&name=a "
        f"header Bearer abc.def prefix {auth.display_prefix(key)}"
    )
    scrubbed = logs.redact(text)
    assert key not in scrubbed
    assert "SECRETID" not in scrubbed
    assert "abc.def" not in scrubbed
    assert auth.display_prefix(key) in scrubbed


def test_a_jwt_is_scrubbed_from_log_lines():
    token = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL2FjY291bnRzLmdvb2dsZS5jb20ifQ.c2lnbmF0dXJl"
    assert token not in logs.redact(f"reason {token} end")
    assert "end" in logs.redact(f"reason {token} end")


@pytest.mark.parametrize("path", ["/v1/uploads/\u2028x", "/v1/uploads/\x85x", "/v1/uploads/\fx", "/\u00e9"])
def test_a_log_entry_is_one_line_whatever_the_path_holds(capsys, path):
    logs.emit({"severity": "INFO", "message": f"GET {path} 404"})
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1
    assert out.isascii()
    assert json.loads(out)["message"] == f"GET {path} 404"


def test_trace_header_becomes_cloud_logging_trace_field():
    field = logs.trace_field("proj", "105445aa7843bc8bf206b12000100000/1;o=1")
    assert field == {"logging.googleapis.com/trace": "projects/proj/traces/105445aa7843bc8bf206b12000100000"}
    assert logs.trace_field("proj", "garbage") == {}
    assert logs.trace_field(None, "105445aa7843bc8bf206b12000100000/1") == {}


BASE_ENV = {
    "GOOGLE_CLOUD_PROJECT": "p",
    "UPLOAD_BUCKET": "b",
    "STAGING_BUCKET": "b-staging",
    "CDN_BASE_URL": "https://cdn.example.com/",
}


def test_settings_defaults_and_overrides():
    s = Settings.from_env(BASE_ENV)
    assert (s.upload_url_ttl_seconds, s.idempotency_ttl_seconds, s.idempotency_lease_seconds) == (3600, 86400, 30)
    assert s.firestore.database == "(default)"
    assert s.cdn_base_url == "https://cdn.example.com"
    s = Settings.from_env(dict(BASE_ENV, UPLOAD_URL_TTL_SECONDS="60", FIRESTORE_DATABASE="uploads"))
    assert s.upload_url_ttl_seconds == 60
    assert s.firestore.database == "uploads"


def test_lifecycle_settings_default_to_5_gib_and_a_shut_sweep():
    s = Settings.from_env(BASE_ENV)
    assert s.max_upload_bytes == 5 * 1024**3
    assert s.sweep_audience is None
    assert s.sweep_service_account is None
    assert s.oidc_certs_url == "https://www.googleapis.com/oauth2/v1/certs"
    s = Settings.from_env(
        dict(
            BASE_ENV,
            MAX_UPLOAD_BYTES="1000",
            SWEEP_AUDIENCE="aud",
            SWEEP_SERVICE_ACCOUNT="sweep@p.iam.gserviceaccount.com",
        )
    )
    assert (s.max_upload_bytes, s.sweep_audience, s.sweep_service_account) == (
        1000,
        "aud",
        "sweep@p.iam.gserviceaccount.com",
    )


@pytest.mark.parametrize("name", ["GOOGLE_CLOUD_PROJECT", "UPLOAD_BUCKET", "STAGING_BUCKET", "CDN_BASE_URL"])
def test_if_required_setting_missing_then_error_names_it(name):
    env = {k: v for k, v in BASE_ENV.items() if k != name}
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"UPLOAD_URL_TTL_SECONDS": "soon"}, "UPLOAD_URL_TTL_SECONDS"),
        ({"IDEMPOTENCY_TTL_SECONDS": "0"}, "IDEMPOTENCY_TTL_SECONDS"),
        ({"CDN_BASE_URL": "cdn.example.com"}, "CDN_BASE_URL"),
        ({"CDN_BASE_URL": "https://cdn.example.com/?a=1"}, "CDN_BASE_URL"),
        ({"MAX_UPLOAD_BYTES": "0"}, "MAX_UPLOAD_BYTES"),
        ({"MAX_UPLOAD_BYTES": str(6 * 1024**4)}, "MAX_UPLOAD_BYTES"),
        ({"MAX_UPLOAD_BYTES": "5GB"}, "MAX_UPLOAD_BYTES"),
        ({"SWEEP_SERVICE_ACCOUNT": "sweep@p.iam.gserviceaccount.com"}, "SWEEP_AUDIENCE"),
        ({"SWEEP_AUDIENCE": "https://x/internal/sweep"}, "SWEEP_SERVICE_ACCOUNT"),
        (
            {"SWEEP_AUDIENCE": "https://x/internal/sweep", "SWEEP_SERVICE_ACCOUNT": "not-an-email"},
            "SWEEP_SERVICE_ACCOUNT",
        ),
        ({"OIDC_CERTS_URL": "file:///etc/passwd"}, "OIDC_CERTS_URL"),
    ],
)
def test_if_setting_malformed_then_error_names_it(overrides, name):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(dict(BASE_ENV, **overrides))


@pytest.mark.parametrize(
    "given",
    [
        pytest.param("video/mp4\u00a0", id="no-break-space"),
        pytest.param("image/webp\u212a", id="kelvin-sign"),
        pytest.param("vİdeo/mp4", id="dotted-capital-i"),
    ],
)
def test_only_ascii_is_case_folded_or_trimmed(given):
    with pytest.raises(UnsupportedContentType):
        naming.normalize_content_type(given)


def test_content_type_pattern_accepts_exactly_what_normalisation_accepts():
    pattern = re.compile(content_type_pattern())
    cases = [
        "video/mp4",
        " VIDEO/MP4 ",
        "audio/x-wav;rate=44100",
        "image/jpg; q=1",
        "font/woff2",
        "video/mp4\n",
        "video/mp4\x00",
        "text/html",
        "",
        "video/mp4\u00a0",
        "vİdeo/mp4",
        "video/mp4;\x7f",
    ]
    for value in cases:
        try:
            naming.normalize_content_type(value)
            accepted = True
        except (UnsupportedContentType, ValidationFailed):
            accepted = False
        assert bool(pattern.search(value)) is accepted, repr(value)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _key(n: int = 0) -> auth.ApiKey:
    return auth.ApiKey(id=f"id{n}", workspace_id="ws", prefix="fl_live_abcd", mode="live")


def test_key_cache_answers_until_its_ttl_then_forgets():
    clock = FakeClock()
    cache = auth.KeyLookupCache(30, clock=clock)
    cache.found("h", _key())
    clock.now += 29.9
    assert cache.get("h") == _key()
    clock.now += 0.2
    assert cache.get("h") is None


def test_key_cache_remembers_refusals_briefly_and_apart():
    clock = FakeClock()
    cache = auth.KeyLookupCache(30, clock=clock)
    cache.refused("bad", "unknown API key fl_live_xxxx")
    assert cache.get("bad") == "unknown API key fl_live_xxxx"
    clock.now += auth.KeyLookupCache.NEGATIVE_TTL + 0.1
    assert cache.get("bad") is None
    # A flood of made-up keys cannot evict a real one.
    cache.found("good", _key())
    for n in range(auth.KeyLookupCache.MAX_ENTRIES + 50):
        cache.refused(f"made-up-{n}", "unknown")
    assert cache.get("good") == _key()
    assert (len(cache._found), len(cache._refused)) == (1, auth.KeyLookupCache.MAX_ENTRIES)


def test_key_cache_is_bounded_least_recently_used_first():
    cache = auth.KeyLookupCache(30, clock=FakeClock())
    for n in range(auth.KeyLookupCache.MAX_ENTRIES):
        cache.found(f"k{n}", _key(n))
    assert cache.get("k0") == _key(0)  # now the most recently used
    cache.found("new", _key(-1))
    assert cache.get("k1") is None
    assert cache.get("k0") == _key(0)
    assert cache.get("new") == _key(-1)
    assert len(cache._found) == auth.KeyLookupCache.MAX_ENTRIES


def test_key_cache_with_ttl_zero_caches_nothing():
    cache = auth.KeyLookupCache(0, clock=FakeClock())
    cache.found("h", _key())
    cache.refused("x", "unknown")
    assert cache.get("h") is None
    assert cache.get("x") is None


def test_key_cache_is_safe_under_threads():
    import threading

    cache = auth.KeyLookupCache(30)
    errors = []

    def hammer(t):
        try:
            for n in range(2000):
                cache.found(f"{t}-{n % 300}", _key(n))
                cache.refused(f"bad-{t}-{n}", "unknown")
                cache.get(f"{(t + 1) % 8}-{n % 300}")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    found, refused = len(cache._found), len(cache._refused)
    assert found == 8 * 300
    assert refused == auth.KeyLookupCache.MAX_ENTRIES


def test_key_cache_ttl_setting():
    assert Settings.from_env(BASE_ENV).api_key_cache_ttl_seconds == 30
    assert Settings.from_env(dict(BASE_ENV, API_KEY_CACHE_TTL_SECONDS="0")).api_key_cache_ttl_seconds == 0
    with pytest.raises(ConfigError, match="API_KEY_CACHE_TTL_SECONDS"):
        Settings.from_env(dict(BASE_ENV, API_KEY_CACHE_TTL_SECONDS="3600"))


def test_storage_client_skips_the_per_call_proxy_environment_scan(monkeypatch):
    from lib.platform import clients

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # no credentials needed; nothing is sent
    client = clients._without_proxy_lookup(__import__("google.cloud.storage", fromlist=["Client"]).Client(project="p"))
    assert client._http.trust_env is False


def test_shared_http_sessions_keep_a_connection_per_sweep_worker(monkeypatch):
    """Past a pool's size urllib3 opens, then discards, a connection per call (and logs it)."""
    from lib.platform import clients

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # nothing is sent
    # Fresh ones: other tests mount recording adapters on the instance's shared session.
    monkeypatch.delitem(clients._clients, ("session_http",), raising=False)
    for session in (clients.session_http(), clients.storage_client("p-pool")._http):
        for scheme in ("https://", "http://"):
            assert session.get_adapter(scheme + "storage.googleapis.com")._pool_maxsize >= sweep.SWEEP_WORKERS + 16
