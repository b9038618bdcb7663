"""The API's pure parts: origins, API keys and their per-instance cache, request fingerprints, Idempotency-Keys,
and a create's body read strictly."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from lib.api import auth, idempotency, models
from lib.platform.errors import (
    InvalidApiKey,
    InvalidIdempotencyKey,
    InvalidJson,
    ValidationFailed,
)


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
