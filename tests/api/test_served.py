"""The function served as deployed (functions-framework, gunicorn threads),
over real HTTP: a real upload, upstream failures, logs, and what reaches Storage."""

from __future__ import annotations

import concurrent.futures
import json
import time
import uuid
from datetime import UTC

import pytest
import requests

from dev import emulators
from lib.api import idempotency
from tests.conftest import BUCKET
from tests.helpers import RecordingProxy, media, response_schema_errors

VIDEO = {"content_type": "video/mp4", "filename": "clip.mp4"}
# The documented worst case for one upstream (lib/platform/clients.py) is about 11 s;
# anything near the 60 s function timeout would mean a hang.
UPSTREAM_BOUND_SECONDS = 15


def test_a_real_put_to_the_upload_url_lands_under_the_source_url(served_default, key, gcs):
    resp = served_default.post(
        json={"content_type": "image/png", "filename": "frame.PNG"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    payload = media("image.png")
    put = requests.put(body["upload_url"], data=payload, headers={"Content-Type": "image/png"}, timeout=30)
    assert put.status_code in (200, 201), put.text

    name = body["source_url"].split(f"/{BUCKET}/", 1)[1]
    assert name.endswith(".png")
    # Locally CDN_BASE_URL is the emulator's public path, so source_url itself serves the bytes: not
    # before the service has checked them, which the GET makes it do.
    assert requests.get(body["source_url"], timeout=10).status_code == 404
    shown = served_default.session.get(
        f"{served_default.url}/v1/uploads/{body['id']}", headers={"Authorization": f"Bearer {key}"}, timeout=30
    ).json()
    assert shown["status"] == "completed"
    assert shown["media"] == {
        "duration_seconds": None,
        "width": 64,
        "height": 48,
        "codecs": ["png"],
    }
    blob = gcs.bucket(BUCKET).get_blob(name)
    assert blob is not None
    assert blob.content_type == "image/png"
    assert blob.size == len(payload)
    assert blob.download_as_bytes() == payload
    fetched = requests.get(body["source_url"], timeout=10)
    assert fetched.status_code == 200
    assert fetched.content == payload


def test_session_initiation_carries_type_origin_and_create_only_precondition(backends, serve, key):
    with RecordingProxy(backends["storage"].url) as proxy:
        served = serve(STORAGE_EMULATOR_HOST=proxy.url)
        resp = served.post(json=VIDEO, headers={"Authorization": f"Bearer {key}", "Origin": "https://app.example.com"})
        assert resp.status_code == 201, resp.text
        no_origin = served.post(json=VIDEO, headers={"Authorization": f"Bearer {key}", "Origin": "null"})
        assert no_origin.status_code == 201
    initiations = [r for r in proxy.requests if "uploadType=resumable" in r["path"]]
    assert len(initiations) == 2
    first, second = ({k.lower(): v for k, v in r["headers"].items()} for r in initiations)
    assert first["origin"] == "https://app.example.com"
    assert "origin" not in second
    assert first["x-upload-content-type"] == "video/mp4"
    assert "ifGenerationMatch=0" in initiations[0]["path"]


def test_if_storage_is_down_then_bounded_503_and_the_key_is_not_blocked(backends, serve, make_key, db, openapi_doc):
    key, workspace = make_key()
    served = serve(STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{emulators.free_port()}")
    idem = f"k-{uuid.uuid4()}"
    started = time.monotonic()
    resp = served.post(json=VIDEO, headers={"Authorization": f"Bearer {key}", "Idempotency-Key": idem})
    elapsed = time.monotonic() - started
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "service_unavailable"
    assert int(resp.headers["Retry-After"]) >= 1
    assert response_schema_errors(openapi_doc, 503, resp.json()) == []
    assert elapsed < UPSTREAM_BOUND_SECONDS
    # The failed request released its claim: nothing blocks the retry.
    doc = db.collection(idempotency.COLLECTION).document(idempotency.record_id(workspace, "live", idem)).get()
    assert not doc.exists


def test_if_firestore_is_down_then_bounded_503_but_malformed_keys_still_401(serve, openapi_doc):
    served = serve(FIRESTORE_EMULATOR_HOST=f"127.0.0.1:{emulators.free_port()}")
    started = time.monotonic()
    resp = served.post(json=VIDEO, headers={"Authorization": "Bearer fl_live_" + "C" * 43})
    assert resp.status_code == 503, resp.text
    assert time.monotonic() - started < UPSTREAM_BOUND_SECONDS
    assert response_schema_errors(openapi_doc, 503, resp.json()) == []
    # A malformed key is refused before any Firestore call, so at once.
    started = time.monotonic()
    resp = served.post(json=VIDEO, headers={"Authorization": "Bearer fl_live_short"})
    assert resp.status_code == 401
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("drop", "overrides", "named"),
    [
        pytest.param(("UPLOAD_BUCKET",), {}, "missing required environment variable UPLOAD_BUCKET", id="missing"),
        pytest.param(
            (), {"WEBHOOKS_TOPIC": "projects/p/topics/t"}, "WEBHOOKS_TOPIC must be a Pub/Sub topic id", id="topic-path"
        ),
        pytest.param(
            (),
            {"UPLOAD_URL_TTL_SECONDS": "an hour"},
            "UPLOAD_URL_TTL_SECONDS must be a whole number",
            id="not-a-number",
        ),
    ],
)
def test_if_a_setting_is_missing_or_wrong_then_the_function_fails_to_start_naming_it(serve, drop, overrides, named):
    """Settings are read when the function starts: a bad one never serves a request (Cloud Run
    keeps the revision that started last) and its log says which setting and why."""
    with pytest.raises(emulators.SetupError, match="exited with status") as failed:
        serve(drop=drop, **overrides)
    lines = [json.loads(raw) for raw in failed.value.log_path.read_text().splitlines() if raw.startswith("{")]
    line = next(line for line in lines if line.get("severity") == "CRITICAL")
    assert line["message"].startswith("the function cannot start: ")
    assert named in line["message"]


def test_if_bucket_does_not_exist_then_500_not_503(serve, key):
    """Sessions are minted in the staging bucket: a misconfigured one is a bug to see, not an outage to retry."""
    served = serve(STAGING_BUCKET="no-such-bucket-" + uuid.uuid4().hex[:8])
    resp = served.post(json=VIDEO, headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 500
    assert resp.json()["error"]["code"] == "internal_error"


def test_concurrent_requests_on_one_key_never_get_two_urls(served_default, key):
    idem = f"race-{uuid.uuid4()}"
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": idem}

    def one(_):
        return requests.post(served_default.url + "/v1/uploads", json=VIDEO, headers=headers, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(one, range(16)))
    urls = {r.json()["upload_url"] for r in responses if r.status_code in (200, 201)}
    codes = {r.json()["error"]["code"] for r in responses if r.status_code == 409}
    # A set's subset test: sorted lists compared lexicographically failed whenever no replay (200) came back.
    assert {r.status_code for r in responses} <= {200, 201, 409}
    assert sum(r.status_code == 201 for r in responses) == 1
    assert len(urls) == 1
    assert codes <= {"idempotency_key_in_use"}


def test_one_structured_log_line_per_request_without_secrets(served_default, make_key):
    key, workspace = make_key()
    idem = f"log-{uuid.uuid4()}"
    trace = uuid.uuid4().hex
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": idem, "X-Cloud-Trace-Context": f"{trace}/1;o=1"}
    first = served_default.post(json=VIDEO, headers={**headers, "X-Request-Id": "log-test-1"})
    again = served_default.post(json=VIDEO, headers={**headers, "X-Request-Id": "log-test-2"})
    bad = served_default.post(
        json=VIDEO, headers={"Authorization": "Bearer " + key[:-1] + "Z", "X-Request-Id": "log-test-3"}
    )
    assert (first.status_code, again.status_code, bad.status_code) == (201, 200, 401)

    lines = {line["request_id"]: line for line in served_default.log_lines() if "request_id" in line}
    created, replayed, refused = lines["log-test-1"], lines["log-test-2"], lines["log-test-3"]
    assert created["severity"] == "INFO"
    assert refused["severity"] == "WARNING"
    assert created["httpRequest"]["requestMethod"] == "POST"
    assert created["httpRequest"]["requestUrl"] == "/v1/uploads"
    assert created["httpRequest"]["status"] == 201
    assert created["httpRequest"]["latency"].endswith("s")
    assert created["logging.googleapis.com/trace"] == f"projects/framelane-test/traces/{trace}"
    assert created["workspace_id"] == workspace
    assert created["key_prefix"] == key[:12]
    assert replayed["idempotent_replayed"] is True
    assert "idempotent_replayed" not in created
    assert refused["error_code"] == "invalid_api_key"
    assert "unknown" in refused["reason"]
    assert created["route"] == refused["route"] == "/v1/uploads"
    status = served_default.session.get(
        f"{served_default.url}/v1/uploads/{first.json()['id']}",
        timeout=30,
        headers={"Authorization": f"Bearer {key}", "X-Request-Id": "log-test-4"},
    )
    lost = served_default.session.get(
        f"{served_default.url}/nowhere", headers={"X-Request-Id": "log-test-5"}, timeout=30
    )
    assert (status.status_code, lost.status_code) == (200, 404)
    lines = {line["request_id"]: line for line in served_default.log_lines() if "request_id" in line}
    assert lines["log-test-4"]["route"] == "/v1/uploads/{upload_id}"  # the template, never the id
    assert lines["log-test-5"]["route"] == "(none)"

    text = served_default.log_text()
    upload_id = first.json()["upload_url"].split("upload_id=", 1)[1]
    for secret in (key, key[:-1] + "Z", f"Bearer {key}", first.json()["upload_url"], upload_id):
        assert secret not in text


def test_a_revoked_key_keeps_working_at_most_the_cache_ttl(serve, make_key, db):
    from datetime import datetime

    from lib.api import auth

    served = serve(API_KEY_CACHE_TTL_SECONDS="2")
    key, _ = make_key()
    headers = {"Authorization": f"Bearer {key}"}
    assert served.post(json=VIDEO, headers=headers).status_code == 201
    db.collection(auth.COLLECTION).document(auth.key_id(key)).update({"revoked_at": datetime.now(UTC)})
    revoked_at = time.monotonic()
    assert served.post(json=VIDEO, headers=headers).status_code == 201  # the instance still trusts it
    time.sleep(max(0.0, 2.1 - (time.monotonic() - revoked_at)))  # the TTL is the clock under test
    assert served.post(json=VIDEO, headers=headers).status_code == 401


def test_an_unknown_key_is_refused_from_the_cache_briefly(serve, db):
    from datetime import datetime

    from lib.api import auth

    served = serve(API_KEY_CACHE_TTL_SECONDS="2")
    key = auth.generate_key("live")
    headers = {"Authorization": f"Bearer {key}"}
    assert served.post(json=VIDEO, headers=headers).status_code == 401
    db.collection(auth.COLLECTION).document(auth.key_id(key)).create(
        {
            "workspace_id": "ws_late",
            "name": None,
            "prefix": auth.display_prefix(key),
            "mode": "live",
            "created_at": datetime.now(UTC),
            "revoked_at": None,
        }
    )
    created_at = time.monotonic()
    refused = served.post(json=VIDEO, headers=headers)
    assert refused.status_code == 401
    time.sleep(max(0.0, 2.1 - (time.monotonic() - created_at)))
    assert served.post(json=VIDEO, headers=headers).status_code == 201
    line = next(line for line in served.log_lines() if line.get("request_id") == refused.headers["X-Request-Id"])
    assert line["reason"].endswith("(cached)")


def test_paths_the_framework_answers_itself_still_get_the_envelope(served_default):
    """functions-framework answers /robots.txt and /favicon.ico before our function runs."""
    for path in ("/robots.txt", "/favicon.ico"):
        resp = requests.get(served_default.url + path, headers={"X-Request-Id": "framework-404"}, timeout=10)
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "not_found"
        assert resp.headers["X-Request-Id"] == "framework-404"
        assert resp.headers["Cache-Control"] == "no-store"


def test_cors_origin_is_bound_in_place_of_the_origin_header(backends, serve, key):
    """A backend minting for a browser names the browser's origin; the backend's own Origin (if any) is not used."""
    with RecordingProxy(backends["storage"].url) as proxy:
        served = serve(STORAGE_EMULATOR_HOST=proxy.url)
        named = served.post(
            json={**VIDEO, "cors_origin": "https://app.example.com:8443"},
            headers={"Authorization": f"Bearer {key}", "Origin": "https://backend.example.net"},
        )
        assert named.status_code == 201, named.text
        fallback = served.post(
            json={**VIDEO, "cors_origin": None},
            headers={"Authorization": f"Bearer {key}", "Origin": "https://page.example.org"},
        )
        assert fallback.status_code == 201, fallback.text
    first, second = (
        {k.lower(): v for k, v in r["headers"].items()} for r in proxy.requests if "uploadType=resumable" in r["path"]
    )
    assert first["origin"] == "https://app.example.com:8443"
    assert second["origin"] == "https://page.example.org"


@pytest.mark.parametrize("path", ["/health", "/healthz"])
def test_health_answers_without_a_key_or_any_backend(serve, path):
    """The uptime check's route: 200 with nothing about the deployment, no key,
    and no upstream call (Firestore and Storage both unreachable here)."""
    served = serve(FIRESTORE_EMULATOR_HOST="127.0.0.1:9", STORAGE_EMULATOR_HOST="http://127.0.0.1:9")
    answer = served.session.get(served.url + path, timeout=30)
    # Any call to the dead backends would have made this a 503.
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}
    assert answer.headers["Cache-Control"] == "no-store"
    refused = served.session.post(served.url + path, timeout=30)
    assert refused.status_code == 405
    assert refused.headers["Allow"] == "GET"
    [line] = [
        line
        for line in served.log_lines()
        if line.get("httpRequest", {}).get("requestUrl") == path and line["httpRequest"]["status"] == 200
    ]
    assert line["route"] == path
    assert line["severity"] == "INFO"
