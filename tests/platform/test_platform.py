"""The platform's pure parts: time as the API states it, the body read within bounds, the log line, the settings,
the backends' clients."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from lib.api import auth
from lib.platform import clock, http, logs
from lib.platform.config import ConfigError, Settings
from lib.platform.errors import (
    PayloadTooLarge,
)
from lib.uploads import sweep


def test_lifetime_is_whole_utc_seconds_and_rfc3339_prints_it():
    now = datetime(2026, 11, 28, 15, 59, 59, 987654, tzinfo=UTC)
    created, expires = clock.lifetime(now, 3600)
    assert clock.rfc3339(created) == "2026-11-28T15:59:59Z"
    assert clock.rfc3339(expires) == "2026-11-28T16:59:59Z"
    east = timezone(timedelta(hours=2))
    assert clock.rfc3339(datetime(2026, 11, 28, 17, 0, 0, tzinfo=east)) == "2026-11-28T15:00:00Z"


def test_body_over_limit_is_refused_without_reading_it_whole():
    stream = io.BytesIO(b"x" * (http.MAX_BODY_BYTES + 10))
    with pytest.raises(PayloadTooLarge):
        http.read_body(stream, None)
    assert stream.tell() == http.MAX_BODY_BYTES + 1
    with pytest.raises(PayloadTooLarge):
        http.read_body(io.BytesIO(b""), http.MAX_BODY_BYTES + 1)
    assert http.read_body(io.BytesIO(b"x" * http.MAX_BODY_BYTES), None) == b"x" * http.MAX_BODY_BYTES


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


def test_urllib3_logs_no_session_url_of_a_storage_call(caplog):
    """Storage's calls go through requests and urllib3, which logs each request's path at DEBUG; an upload
    session's URL is a secret, so only its origin may show."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from lib.platform import clients

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self):
            self.send_response(308)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/upload/storage/v1/b/bk/o?uploadType=resumable&upload_id=Secret1"
    try:
        with caplog.at_level("DEBUG", logger="urllib3"):
            assert clients.session_http().put(url, data=b"x", timeout=5).status_code == 308
    finally:
        server.shutdown()
        server.server_close()
    assert any(record.name == "urllib3.connectionpool" and "PUT" in record.getMessage() for record in caplog.records)
    assert "Secret1" not in caplog.text
    assert "/upload/storage" not in caplog.text


def test_key_cache_ttl_setting():
    assert Settings.from_env(BASE_ENV).api_key_cache_ttl_seconds == 30
    assert Settings.from_env(dict(BASE_ENV, API_KEY_CACHE_TTL_SECONDS="0")).api_key_cache_ttl_seconds == 0
    with pytest.raises(ConfigError, match="API_KEY_CACHE_TTL_SECONDS"):
        Settings.from_env(dict(BASE_ENV, API_KEY_CACHE_TTL_SECONDS="3600"))


def test_a_note_lands_on_the_line_of_the_request_being_served_and_nowhere_else():
    """Issue 34: the request's log fields live in a context variable (lib/platform/logs.py), not a dict handed
    down; a note outside a request, or in another thread, goes nowhere, and a line ends with its request."""
    import threading

    logs.note(stray=True)  # no request: nothing to land on, and no error
    with logs.collecting(request_id="r1") as line:
        logs.note(upload_id="upl_1")
        seen: list = []
        worker = threading.Thread(target=lambda: (logs.note(from_thread=True), seen.append(True)))
        worker.start()
        worker.join()
        with logs.collecting(request_id="r2") as inner:
            logs.note(inner_only=True)
        logs.note(after_inner=True)
    logs.note(after=True)
    assert seen == [True]
    assert line == {"request_id": "r1", "upload_id": "upl_1", "after_inner": True}
    assert inner == {"request_id": "r2", "inner_only": True}
