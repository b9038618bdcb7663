"""Upload lifecycle (issue 6): the record, declared size, GET, cancel, the sweep
and its token checks, isolation; on the emulators, in-process and served.

fake-gcs-server (1.54) ignores the declared size and does not cancel a
session on DELETE (it answers 499 and keeps accepting bytes), so these tests
assert what the function *sends* (a recording proxy or transport adapter
shows the wire) and what it records, never that the emulator refused bytes.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests
from requests.adapters import HTTPAdapter

from dev.oidc_issuer import AUDIENCE
from lib.platform.config import GIB
from lib.uploads import lifecycle, settling, sweep
from tests.conftest import BUCKET, STAGING_BUCKET
from tests.helpers import RecordingProxy, media, parse_rfc3339_utc, schema_errors

VIDEO = {"content_type": "video/mp4", "filename": "clip.mp4"}
CLIP = media("clip.mp4")


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def create(client, key, body=None, headers=None):
    resp = client.post("/v1/uploads", json=body or VIDEO, headers={**bearer(key), **(headers or {})})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.get_json()


def put_bytes(upload_url: str, data: bytes, content_type: str = "video/mp4") -> None:
    resp = requests.put(upload_url, data=data, headers={"Content-Type": content_type}, timeout=30)
    assert resp.status_code in (200, 201), resp.status_code


def record(db, upload_id: str) -> dict:
    return db.collection(lifecycle.COLLECTION).document(upload_id).get().to_dict()


def backdate(db, upload_id: str) -> None:
    """Make an upload's hour be over (its expires_at a minute ago)."""
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    db.collection(lifecycle.COLLECTION).document(upload_id).update({"expires_at": past})


def end_hour_now(db, upload_id: str) -> None:
    """Make an upload's hour end now: after bytes already landed, before anyone looks."""
    db.collection(lifecycle.COLLECTION).document(upload_id).update({"expires_at": datetime.now(UTC)})


class RecordingAdapter(HTTPAdapter):
    """Sends for real, and remembers what was sent (method, URL)."""

    def __init__(self):
        super().__init__()
        self.sent: list[tuple[str, str]] = []

    def send(self, request, **kwargs):
        self.sent.append((request.method, request.url))
        return super().send(request, **kwargs)


@pytest.fixture
def session_wire(app):
    """What the in-process function sends to upload session URLs."""
    from lib.platform.clients import session_http

    http = session_http()
    original = http.get_adapter("http://")
    adapter = RecordingAdapter()
    http.mount("http://", adapter)
    yield adapter
    http.mount("http://", original)


def assert_upload_schema(openapi_doc, body):
    assert schema_errors(openapi_doc, "#/components/schemas/Upload", body) == []


# --- the record -----------------------------------------------------------------------------------------------


def test_a_new_upload_is_recorded_pending_with_its_session_and_the_201_names_it(client, make_key, db):
    key, workspace = make_key()
    out = create(client, key, {"content_type": "video/mp4", "size_bytes": 1234})
    doc = record(db, out["id"])
    assert doc["workspace_id"] == workspace
    assert doc["mode"] == "live"
    assert doc["object_name"] == out["source_url"].split(f"/{BUCKET}/", 1)[1]
    assert doc["content_type"] == "video/mp4"
    assert doc["size_bytes"] == 1234
    assert doc["state"] == "pending"
    assert doc["session_url"] == out["upload_url"]
    assert doc["expires_at"] == parse_rfc3339_utc(out["expires_at"])
    assert doc["expires_at"] - doc["created_at"] == timedelta(hours=1)


def test_get_of_a_pending_upload_shows_it_without_its_url(client, make_key, openapi_doc):
    key, _ = make_key()
    out = create(client, key, {"content_type": "image/png", "size_bytes": 77})
    resp = client.get(f"/v1/uploads/{out['id']}", headers=bearer(key))
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = resp.get_json()
    assert_upload_schema(openapi_doc, body)
    assert list(body) == [
        "id",
        "status",
        "source_url",
        "content_type",
        "size_bytes",
        "created_at",
        "expires_at",
        "completed_at",
        "crc32c",
        "md5",
        "rejection",
        "media",
    ]
    assert body["status"] == "pending"
    assert body["size_bytes"] == 77
    assert body["content_type"] == "image/png"
    assert body["completed_at"] is None
    assert body["crc32c"] is None
    assert body["md5"] is None
    assert body["media"] is None
    assert body["rejection"] is None
    assert body["source_url"] == out["source_url"]
    assert body["expires_at"] == out["expires_at"]
    assert "upload_id=" not in resp.get_data(as_text=True)


def test_without_a_declared_size_the_pending_upload_shows_null(client, make_key):
    key, _ = make_key()
    out = create(client, key)
    assert client.get(f"/v1/uploads/{out['id']}", headers=bearer(key)).get_json()["size_bytes"] is None


def test_an_idempotent_replay_names_the_same_upload_and_records_it_once(client, make_key, db):
    key, workspace = make_key()
    headers = {"Idempotency-Key": "lifecycle-replay"}
    first = create(client, key, headers=headers)
    replay = client.post("/v1/uploads", json=VIDEO, headers={**bearer(key), **headers})
    assert replay.status_code == 200
    assert replay.get_json() == first
    assert list(replay.get_json()) == ["id", "upload_url", "source_url", "expires_at"]
    assert record(db, first["id"])["state"] == "pending"
    from google.cloud.firestore_v1.base_query import FieldFilter

    mine = db.collection(lifecycle.COLLECTION).where(filter=FieldFilter("workspace_id", "==", workspace)).get()
    assert [snap.id for snap in mine] == [first["id"]]


# --- declared size --------------------------------------------------------------------------------------------


def test_declared_size_is_bound_into_the_session_and_the_stored_size_reported(backends, serve, make_key):
    """GCS refuses a PUT of any other length once X-Upload-Content-Length is set;
    fake-gcs ignores it, so assert the header reaches Storage."""
    key, _ = make_key()
    with RecordingProxy(backends["storage"].url) as proxy:
        served = serve(STORAGE_EMULATOR_HOST=proxy.url)
        sized = served.post(json={"content_type": "video/mp4", "size_bytes": len(CLIP)}, headers=bearer(key))
        unsized = served.post(json=VIDEO, headers=bearer(key))
        assert sized.status_code == 201
        assert unsized.status_code == 201
        initiations = [r for r in proxy.requests if r["method"] == "POST" and "uploadType=resumable" in r["path"]]
        assert len(initiations) == 2
        sent = [{name.lower(): value for name, value in r["headers"].items()} for r in initiations]
        assert sent[0].get("x-upload-content-length") == str(len(CLIP))
        assert "x-upload-content-length" not in sent[1]

        put_bytes(sized.json()["upload_url"], CLIP)
        status = served.session.get(
            f"{served.url}/v1/uploads/{sized.json()['id']}", headers=bearer(key), timeout=30
        ).json()
        assert status["status"] == "completed"
        assert status["size_bytes"] == len(CLIP)


@pytest.mark.parametrize(
    ("size", "status"),
    [
        pytest.param(5 * GIB, 201, id="at-the-default-limit"),
        pytest.param(5 * GIB + 1, 422, id="one-over"),
        pytest.param(10**40, 422, id="absurd"),
    ],
)
def test_declared_size_over_the_default_limit_is_upload_too_large(client, key, size, status, openapi_doc):
    resp = client.post("/v1/uploads", json={"content_type": "video/mp4", "size_bytes": size}, headers=bearer(key))
    assert resp.status_code == status
    if status == 422:
        assert resp.get_json() == {
            "error": {
                "code": "upload_too_large",
                "message": resp.get_json()["error"]["message"],
                "details": {"max_size_bytes": 5 * GIB},
            }
        }
        assert schema_errors(openapi_doc, "#/components/schemas/Error", resp.get_json()) == []


@pytest.mark.parametrize(
    ("value", "error_type"),
    [
        pytest.param(0, "greater_than", id="zero"),
        pytest.param(-5, "greater_than", id="negative"),
        pytest.param(1.5, "int_type", id="float"),
        pytest.param(0.001, "int_type", id="tiny-float"),
        pytest.param("100", "int_type", id="string"),
        pytest.param(True, "int_type", id="bool"),
    ],
)
def test_declared_size_must_be_a_positive_integer(client, key, value, error_type):
    resp = client.post("/v1/uploads", json={"content_type": "video/mp4", "size_bytes": value}, headers=bearer(key))
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"]["fields"] == [
        {"field": "size_bytes", "type": error_type, "message": error["details"]["fields"][0]["message"]}
    ]


def test_a_whole_number_written_with_a_fraction_is_that_integer(client, key, db):
    """JSON has one number type: 2048.0 is 2048, as JSON Schema's `integer` says."""
    resp = client.post("/v1/uploads", json={"content_type": "video/mp4", "size_bytes": 2048.0}, headers=bearer(key))
    assert resp.status_code == 201
    assert record(db, resp.get_json()["id"])["size_bytes"] == 2048


def test_max_upload_bytes_is_a_setting_and_an_oversize_request_never_reaches_storage(backends, serve, make_key):
    key, _ = make_key()
    with RecordingProxy(backends["storage"].url) as proxy:
        served = serve(STORAGE_EMULATOR_HOST=proxy.url, MAX_UPLOAD_BYTES="1000")
        over = served.post(json={"content_type": "video/mp4", "size_bytes": 1001}, headers=bearer(key))
        assert over.status_code == 422
        assert over.json()["error"]["details"] == {"max_size_bytes": 1000}
        assert proxy.requests == []
        created = served.post(json={"content_type": "video/mp4", "size_bytes": 1000}, headers=bearer(key))
        assert created.status_code == 201


# --- pending -> completed -------------------------------------------------------------------------------------


def test_after_a_real_put_the_upload_is_completed_with_the_stored_size_and_cannot_be_cancelled(
    client, make_key, db, session_wire, openapi_doc
):
    key, _ = make_key()
    out = create(client, key)
    put_bytes(out["upload_url"], CLIP)
    body = client.get(f"/v1/uploads/{out['id']}", headers=bearer(key)).get_json()
    assert body["status"] == "completed"
    assert body["size_bytes"] == len(CLIP)
    assert body["media"] == {"duration_seconds": 1.0, "width": 64, "height": 48, "codecs": ["h264", "aac"]}
    doc = record(db, out["id"])
    assert doc["state"] == "completed"
    assert "session_url" not in doc
    assert doc["settled_at"]

    resp = client.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key))
    assert resp.status_code == 409
    assert resp.get_json()["error"]["code"] == "upload_completed"
    assert schema_errors(openapi_doc, "#/components/schemas/Error", resp.get_json()) == []
    assert client.get(f"/v1/uploads/{out['id']}", headers=bearer(key)).get_json()["status"] == "completed"
    assert session_wire.sent == []  # a finished session is never sent a DELETE


def test_cancel_finds_an_upload_that_completed_unobserved_and_answers_409(client, make_key, db, session_wire):
    key, _ = make_key()
    out = create(client, key)
    put_bytes(out["upload_url"], CLIP)
    assert record(db, out["id"])["state"] == "pending"  # nobody has looked yet
    resp = client.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key))
    assert resp.status_code == 409
    assert resp.get_json()["error"]["code"] == "upload_completed"
    assert record(db, out["id"])["state"] == "completed"


def test_a_test_mode_upload_goes_under_the_test_prefix_and_completes(client, make_key):
    key, workspace = make_key(mode="test")
    out = create(client, key)
    assert f"/{BUCKET}/test-uploads/{workspace}/" in out["source_url"]
    put_bytes(out["upload_url"], CLIP)
    assert requests.get(out["source_url"], timeout=10).status_code == 404  # not served before it is checked
    assert client.get(f"/v1/uploads/{out['id']}", headers=bearer(key)).get_json()["status"] == "completed"
    assert requests.get(out["source_url"], timeout=10).content == CLIP


# --- pending -> cancelled -------------------------------------------------------------------------------------


def test_cancel_deletes_the_session_marks_it_cancelled_and_is_idempotent(
    client, make_key, db, session_wire, openapi_doc
):
    key, _ = make_key()
    out = create(client, key)
    resp = client.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key))
    assert resp.status_code == 200
    body = resp.get_json()
    assert_upload_schema(openapi_doc, body)
    assert body["status"] == "cancelled"
    assert body["id"] == out["id"]
    assert session_wire.sent == [("DELETE", out["upload_url"])]
    doc = record(db, out["id"])
    assert doc["state"] == "cancelled"
    assert "session_url" not in doc

    again = client.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key))
    assert again.status_code == 200
    assert again.get_json() == body
    assert client.get(f"/v1/uploads/{out['id']}", headers=bearer(key)).get_json() == body
    assert len(session_wire.sent) == 1  # nothing left to cancel


def test_over_http_pending_then_cancelled_then_cancelled_again(served_default, make_key, openapi_doc):
    key, _ = make_key()
    out = served_default.post(json=VIDEO, headers=bearer(key)).json()
    url = f"{served_default.url}/v1/uploads/{out['id']}"
    assert served_default.session.get(url, headers=bearer(key), timeout=30).json()["status"] == "pending"
    first = served_default.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key))
    again = served_default.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key))
    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == "cancelled"
    assert again.json() == first.json()
    assert first.headers["Cache-Control"] == "no-store"
    assert first.headers["Content-Type"] == "application/json"
    assert_upload_schema(openapi_doc, first.json())
    assert served_default.session.get(url, headers=bearer(key), timeout=30).json() == first.json()


# --- pending -> expired ---------------------------------------------------------------------------------------


def test_get_after_expires_at_expires_the_upload_cancelling_its_session(client, make_key, db, session_wire):
    key, _ = make_key()
    out = create(client, key)
    backdate(db, out["id"])
    body = client.get(f"/v1/uploads/{out['id']}", headers=bearer(key)).get_json()
    assert body["status"] == "expired"
    assert session_wire.sent == [("DELETE", out["upload_url"])]
    assert record(db, out["id"])["state"] == "expired"
    # Cancelling an expired upload changes nothing and says so.
    again = client.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key))
    assert again.status_code == 200
    assert again.get_json()["status"] == "expired"


def test_an_upload_that_finished_late_but_before_anyone_looked_is_completed_not_expired(client, make_key, db):
    key, _ = make_key()
    out = create(client, key)
    put_bytes(out["upload_url"], CLIP)
    end_hour_now(db, out["id"])
    assert client.get(f"/v1/uploads/{out['id']}", headers=bearer(key)).get_json()["status"] == "completed"


def test_served_sweep_expires_pending_uploads_after_a_short_ttl(serve, make_key, db, oidc_issuer):
    """Over HTTP with UPLOAD_URL_TTL_SECONDS=1: pending -> expired by the sweep, while
    a finished upload past its hour is completed and one still in its hour is left alone."""
    key, _ = make_key()
    short = serve(UPLOAD_URL_TTL_SECONDS="1")
    expiring = short.post(json=VIDEO, headers=bearer(key)).json()
    finished = short.post(json=VIDEO, headers=bearer(key)).json()
    put_bytes(finished["upload_url"], CLIP)
    fresh = serve().post(json=VIDEO, headers=bearer(key)).json()
    # Both must be past their hour (they may have been made in different seconds).
    _wait_until_after(max(expiring["expires_at"], finished["expires_at"]))

    resp = short.post("/internal/sweep", headers=bearer(oidc_issuer.token()))
    assert resp.status_code == 200, resp.text
    counts = resp.json()
    assert counts["expired"] >= 1
    assert counts["completed"] >= 1
    assert counts["failed"] == 0
    assert counts["more"] is False
    assert record(db, expiring["id"])["state"] == "expired"
    assert "session_url" not in record(db, expiring["id"])
    assert record(db, finished["id"])["state"] == "completed"
    assert record(db, fresh["id"])["state"] == "pending"
    status = short.session.get(f"{short.url}/v1/uploads/{expiring['id']}", headers=bearer(key), timeout=30).json()
    assert status["status"] == "expired"

    # A second run finds nothing of ours left to do.
    assert short.post("/internal/sweep", headers=bearer(oidc_issuer.token())).status_code == 200
    assert record(db, expiring["id"])["state"] == "expired"


def test_sweep_sends_the_delete_to_each_expired_session(client, make_key, db, session_wire, oidc_issuer):
    key, _ = make_key()
    outs = [create(client, key) for _ in range(3)]
    for out in outs:
        backdate(db, out["id"])
    resp = client.post("/internal/sweep", headers=bearer(oidc_issuer.token()))
    assert resp.status_code == 200
    assert {("DELETE", out["upload_url"]) for out in outs} <= set(session_wire.sent)
    assert {record(db, out["id"])["state"] for out in outs} == {"expired"}


def test_sweep_with_storage_down_is_503_and_leaves_uploads_pending_for_the_next_run(
    backends, serve, make_key, db, oidc_issuer
):
    from dev.emulators import free_port

    key, _ = make_key()
    healthy = serve()
    out = healthy.post(json=VIDEO, headers=bearer(key)).json()
    backdate(db, out["id"])
    broken = serve(STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{free_port()}")
    resp = broken.post("/internal/sweep", headers=bearer(oidc_issuer.token()))
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "service_unavailable"
    assert resp.json()["error"]["details"]["sweep"]["failed"] >= 1
    assert record(db, out["id"])["state"] == "pending"
    assert healthy.post("/internal/sweep", headers=bearer(oidc_issuer.token())).status_code == 200
    assert record(db, out["id"])["state"] == "expired"


def test_a_sweep_with_storage_down_stops_after_the_first_wave_of_failures(serve, make_key, db, oidc_issuer):
    """Once 120 expired uploads with Storage unreachable took 72 s (past the
    function's 60 s timeout): every record spent its retry budget in turn."""
    from dev.emulators import free_port

    key, _ = make_key()
    healthy = serve()
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda _: healthy.post(json=VIDEO, headers=bearer(key)).json(), range(40)))
    for out in outs:
        backdate(db, out["id"])
    broken = serve(STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{free_port()}")
    resp = broken.post("/internal/sweep", headers=bearer(oidc_issuer.token()))
    assert resp.status_code == 503
    counts = resp.json()["error"]["details"]["sweep"]
    # At most one wave (the sweep's workers) was tried; the rest were not started.
    assert 1 <= counts["failed"] <= sweep.SWEEP_WORKERS
    assert counts["more"] is True
    assert counts["expired"] == 0
    assert {record(db, out["id"])["state"] for out in outs} == {"pending"}
    # The next run, with Storage back, takes them all.
    assert healthy.post("/internal/sweep", headers=bearer(oidc_issuer.token())).status_code == 200
    assert {record(db, out["id"])["state"] for out in outs} == {"expired"}


def test_a_sweep_starts_nothing_after_its_budget_and_no_step_after_its_grace(client, make_key, db):
    from lib.platform import config
    from lib.platform.clients import session_http, storage_client

    key, _ = make_key()
    out = create(client, key)
    backdate(db, out["id"])
    gcs = lifecycle.Storage(storage_client(config.load().firestore.project), BUCKET, STAGING_BUCKET, session_http())
    now = datetime.now(UTC)
    result = sweep.sweep(db, gcs, now, budget_seconds=0, grace_seconds=0)
    assert result.as_dict() == {"expired": 0, "completed": 0, "rejected": 0, "failed": 0, "more": True}
    snap = db.collection(lifecycle.COLLECTION).document(out["id"]).get()
    stale = lifecycle.Record(out["id"], snap.to_dict(), snap.update_time)
    with pytest.raises(settling.OutOfTime):
        settling.settle(db, gcs, stale, lifecycle.EXPIRED, deadline=0.0)
    assert record(db, out["id"])["state"] == "pending"
    # Within its budget the same sweep settles it.
    assert sweep.sweep(db, gcs, now, budget_seconds=20, grace_seconds=10).expired >= 1
    assert record(db, out["id"])["state"] == "expired"


def test_get_and_cancel_with_storage_down_are_bounded_503s_and_change_nothing(serve, make_key, db):
    import time

    from dev.emulators import free_port

    key, _ = make_key()
    out = serve().post(json=VIDEO, headers=bearer(key)).json()
    broken = serve(STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{free_port()}")
    url = f"{broken.url}/v1/uploads/{out['id']}"
    for call in (
        lambda: broken.session.get(url, headers=bearer(key), timeout=60),
        lambda: broken.session.post(url + "/cancel", headers=bearer(key), timeout=60),
    ):
        started = time.monotonic()
        resp = call()
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "service_unavailable"
        assert resp.headers["Retry-After"]
        assert time.monotonic() - started < 15
    assert record(db, out["id"])["state"] == "pending"
    assert record(db, out["id"])["session_url"]


def test_racing_cancels_gets_and_sweeps_agree_on_one_outcome(serve, make_key, db, oidc_issuer):
    key, _ = make_key()
    served = serve()
    out = served.post(json=VIDEO, headers=bearer(key)).json()
    backdate(db, out["id"])
    url = f"{served.url}/v1/uploads/{out['id']}"
    start = threading.Barrier(12)

    def call(i: int) -> tuple[int, str]:
        start.wait()
        if i % 3 == 0:
            resp = requests.post(url + "/cancel", headers=bearer(key), timeout=30)
        elif i % 3 == 1:
            resp = requests.get(url, headers=bearer(key), timeout=30)
        else:
            resp = requests.post(served.url + "/internal/sweep", headers=bearer(oidc_issuer.token()), timeout=30)
            return resp.status_code, "sweep"
        return resp.status_code, resp.json()["status"]

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(call, range(12)))
    assert {status for status, _ in results} == {200}
    outcomes = {outcome for _, outcome in results if outcome != "sweep"}
    assert len(outcomes) == 1
    assert outcomes <= {"cancelled", "expired"}
    assert record(db, out["id"])["state"] == outcomes.pop()


def _wait_until_after(rfc3339: str) -> None:
    """Wait out an upload's lifetime (a deadline, not a readiness check)."""
    import time

    remaining = (parse_rfc3339_utc(rfc3339) - datetime.now(UTC)).total_seconds()
    time.sleep(max(0.0, remaining) + 0.05)


# --- isolation and lookups ------------------------------------------------------------------------------------


def test_another_workspace_cannot_see_or_cancel_an_upload(client, make_key, db, session_wire, openapi_doc):
    owner, _ = make_key()
    stranger, _ = make_key()
    out = create(client, owner)
    for resp in (
        client.get(f"/v1/uploads/{out['id']}", headers=bearer(stranger)),
        client.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(stranger)),
    ):
        assert resp.status_code == 404
        assert resp.get_json()["error"]["code"] == "upload_not_found"
        assert schema_errors(openapi_doc, "#/components/schemas/Error", resp.get_json()) == []
    assert record(db, out["id"])["state"] == "pending"
    assert session_wire.sent == []
    assert client.get(f"/v1/uploads/{out['id']}", headers=bearer(owner)).status_code == 200


def test_a_test_key_cannot_see_its_workspaces_live_uploads_nor_the_reverse(client, make_key, db):
    live, workspace = make_key()
    test, _ = make_key(workspace=workspace, mode="test")
    live_upload, test_upload = create(client, live), create(client, test)
    assert client.get(f"/v1/uploads/{live_upload['id']}", headers=bearer(test)).status_code == 404
    assert client.post(f"/v1/uploads/{test_upload['id']}/cancel", headers=bearer(live)).status_code == 404
    assert record(db, test_upload["id"])["state"] == "pending"


@pytest.mark.parametrize(
    "upload_id",
    [
        pytest.param("upl_" + "0" * 32, id="unknown"),
        pytest.param("upl_123", id="short"),
        pytest.param("UPL_" + "a" * 32, id="case"),
        pytest.param("upl_" + "A" * 32, id="upper-hex"),
        pytest.param("api_keys", id="another-collection"),
        pytest.param("x" * 1000, id="long"),
    ],
)
def test_unknown_or_malformed_id_is_upload_not_found(client, key, upload_id):
    for resp in (
        client.get(f"/v1/uploads/{upload_id}", headers=bearer(key)),
        client.post(f"/v1/uploads/{upload_id}/cancel", headers=bearer(key)),
    ):
        assert resp.status_code == 404
        assert resp.get_json()["error"]["code"] == "upload_not_found"


def test_an_id_making_the_path_over_2048_bytes_is_414_before_anything_else(client, key):
    for resp in (
        client.get("/v1/uploads/" + "x" * 5000, headers=bearer(key)),
        client.post("/v1/uploads/" + "x" * 5000 + "/cancel"),
    ):
        assert resp.status_code == 414
        assert resp.get_json()["error"]["code"] == "uri_too_long"
        assert resp.get_json()["error"]["details"] == {"max_bytes": 2048}


def test_get_and_cancel_need_an_api_key(client, make_key):
    key, _ = make_key()
    out = create(client, key)
    for resp in (
        client.get(f"/v1/uploads/{out['id']}"),
        client.post(f"/v1/uploads/{out['id']}/cancel", headers={"Authorization": "Bearer nope"}),
    ):
        assert resp.status_code == 401
        assert resp.get_json()["error"]["code"] == "invalid_api_key"


# --- the sweep's token ----------------------------------------------------------------------------------------


def _sweep(client, authorization: str | None):
    headers = {"Authorization": authorization} if authorization is not None else {}
    return client.post("/internal/sweep", headers=headers)


@pytest.mark.parametrize("value", ["64-64", "5-3", "a-b", "1", "-1-2", "0-99999", "0-63 ", ""])
def test_a_sweep_slice_that_is_not_one_of_the_shards_is_422(client, oidc_issuer, openapi_doc, value):
    resp = client.post(
        "/internal/sweep", query_string={"shards": value}, headers={"Authorization": f"Bearer {oidc_issuer.token()}"}
    )
    assert resp.status_code == 422
    body = resp.get_json()
    assert body["error"]["code"] == "validation_error"
    assert body["error"]["details"]["fields"][0]["field"] == "shards"
    assert schema_errors(openapi_doc, "#/components/schemas/Error", body) == []


def test_a_sweep_slice_is_refused_only_after_the_token(client):
    assert client.post("/internal/sweep", query_string={"shards": "x"}).status_code == 401


def test_sweep_with_a_valid_scheduler_token_runs(client, oidc_issuer, openapi_doc):
    resp = _sweep(client, f"Bearer {oidc_issuer.token()}")
    assert resp.status_code == 200
    body = resp.get_json()
    assert set(body) == {"expired", "completed", "rejected", "failed", "more"}
    assert schema_errors(openapi_doc, "#/components/schemas/SweepResult", body) == []


@pytest.mark.parametrize(
    ("make_header", "status", "code"),
    [
        pytest.param(lambda i: None, 401, "invalid_token", id="missing"),
        pytest.param(lambda i: "Basic Zm9vOmJhcg==", 401, "invalid_token", id="basic-scheme"),
        pytest.param(lambda i: "Bearer not-a-jwt", 401, "invalid_token", id="not-a-jwt"),
        pytest.param(
            lambda i: "Bearer " + i.token(aud="https://elsewhere.example/"), 401, "invalid_token", id="wrong-audience"
        ),
        pytest.param(
            lambda i: (
                "Bearer "
                + i.token(iat=int(datetime.now().timestamp()) - 7200, exp=int(datetime.now().timestamp()) - 3600)
            ),
            401,
            "invalid_token",
            id="expired",
        ),
        pytest.param(lambda i: "Bearer " + i.token(exp=None), 401, "invalid_token", id="no-exp"),
        pytest.param(
            lambda i: "Bearer " + i.token(exp=str(int(datetime.now().timestamp()) + 3600)),
            401,
            "invalid_token",
            id="exp-a-string",
        ),
        pytest.param(
            lambda i: "Bearer " + i.token(iat=float(int(datetime.now().timestamp()))),
            401,
            "invalid_token",
            id="iat-not-whole",
        ),
        pytest.param(
            lambda i: "Bearer " + i.token(signer=i.other_key.signer, key_id=i.key.kid),
            401,
            "invalid_token",
            id="wrong-signer-same-kid",
        ),
        pytest.param(
            lambda i: "Bearer " + i.token(signer=i.other_key.signer),
            401,
            "invalid_token",
            id="wrong-signer-unknown-kid",
        ),
        pytest.param(
            lambda i: "Bearer " + i.token(iss="https://evil.example"), 401, "invalid_token", id="wrong-issuer"
        ),
        pytest.param(lambda i: "Bearer " + _unsigned(i), 401, "invalid_token", id="alg-none"),
        pytest.param(lambda i: "Bearer " + i.token()[:-4] + "AAAA", 401, "invalid_token", id="tampered-signature"),
        pytest.param(
            lambda i: "Bearer " + i.token(email="someone@framelane-test.iam.gserviceaccount.com"),
            403,
            "forbidden",
            id="another-service-account",
        ),
        pytest.param(lambda i: "Bearer " + i.token(email_verified=False), 403, "forbidden", id="email-unverified"),
    ],
)
def test_sweep_refuses_anything_but_the_schedulers_token(client, oidc_issuer, make_header, status, code, openapi_doc):
    resp = _sweep(client, make_header(oidc_issuer))
    assert resp.status_code == status
    assert resp.get_json()["error"]["code"] == code
    assert schema_errors(openapi_doc, "#/components/schemas/Error", resp.get_json()) == []
    if status == 401:
        assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_an_api_key_does_not_open_the_sweep(client, key):
    assert _sweep(client, f"Bearer {key}").status_code == 401


def _unsigned(issuer) -> str:
    import base64
    import json

    def part(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': issuer.key.kid})}.{part(issuer.claims())}.sig"


def test_tokens_naming_unknown_keys_cannot_make_the_function_hammer_the_cert_endpoint(client, oidc_issuer):
    _sweep(client, f"Bearer {oidc_issuer.token()}")  # certificates cached
    before = oidc_issuer.cert_fetches
    for _ in range(20):
        assert _sweep(client, f"Bearer {oidc_issuer.token(signer=oidc_issuer.other_key.signer)}").status_code == 401
    assert oidc_issuer.cert_fetches - before <= 1


def test_sweep_without_its_settings_refuses_every_call(serve, oidc_issuer):
    served = serve(drop=("SWEEP_AUDIENCE", "SWEEP_SERVICE_ACCOUNT"))
    resp = served.post("/internal/sweep", headers=bearer(oidc_issuer.token()))
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "forbidden"


def test_served_sweep_checks_tokens_over_http(serve, oidc_issuer):
    served = serve()
    assert served.post("/internal/sweep", headers=bearer(oidc_issuer.token())).status_code == 200
    assert served.post("/internal/sweep", headers=bearer(oidc_issuer.token(aud=AUDIENCE + "x"))).status_code == 401
    assert served.post("/internal/sweep").status_code == 401
    text = served.log_text()
    assert "eyJ" not in text
    assert '"reason":"token is for another audience"' in text


# --- cancelling a session: what each GCS answer means -----------------------------------------------------------


class ScriptedSessionServer:
    """A loopback stand-in for a GCS session URL answering DELETEs with scripted statuses
    (fake-gcs-server answers 499 to everything, so it cannot show the others)."""

    def __init__(self, statuses: list[int]):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.statuses, self.deletes = list(statuses), 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_DELETE(self):
                server.deletes += 1
                self.send_response(server.statuses.pop(0) if len(server.statuses) > 1 else server.statuses[0])
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/upload?upload_id=x"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize(
    ("statuses", "ended", "deletes"),
    [
        pytest.param([499], True, 1, id="cancelled"),
        pytest.param([404], True, 1, id="already-gone"),
        pytest.param([410], True, 1, id="expired-session"),
        pytest.param([200], False, 1, id="finished"),
        pytest.param([503, 429, 499], True, 3, id="transient-then-cancelled"),
    ],
)
def test_cancel_session_reads_each_gcs_answer(statuses, ended, deletes):
    from lib.uploads import gcs_sessions

    server = ScriptedSessionServer(statuses)
    try:
        status = gcs_sessions.cancel_session(requests.Session(), server.url)
        assert gcs_sessions.session_ended(status) is ended
        assert server.deletes == deletes
    finally:
        server.close()


def test_cancel_session_gives_up_on_a_failing_gcs_with_a_503():
    from lib.platform.errors import ServiceUnavailable
    from lib.uploads import gcs_sessions

    server = ScriptedSessionServer([503])
    try:
        with pytest.raises(ServiceUnavailable):
            gcs_sessions.cancel_session(requests.Session(), server.url)
        assert server.deletes >= 2  # retried within the budget, then gave up
    finally:
        server.close()


def test_a_session_neither_cancelled_nor_finished_stays_pending_and_the_sweep_says_so(
    client, make_key, db, oidc_issuer
):
    key, _ = make_key()
    out = create(client, key)
    server = ScriptedSessionServer([400])
    ref = db.collection(lifecycle.COLLECTION).document(out["id"])
    try:
        ref.update({"session_url": server.url})
        backdate(db, out["id"])
        resp = client.post("/internal/sweep", headers=bearer(oidc_issuer.token()))
        assert resp.status_code == 503
        assert resp.get_json()["error"]["details"]["sweep"]["failed"] == 1
        assert server.deletes == 1
        assert record(db, out["id"])["state"] == "pending"
    finally:
        ref.delete()  # a record no sweep can settle would fail every later sweep of the session
        server.close()


def test_an_expired_upload_whose_session_answers_oddly_is_got_as_known_and_cancel_is_a_503(client, make_key, db):
    """gcp-storage-emulator answers a session DELETE with 501: once a 500 for GET and cancel."""
    key, _ = make_key()
    out = create(client, key)
    server = ScriptedSessionServer([501, 501])
    ref = db.collection(lifecycle.COLLECTION).document(out["id"])
    try:
        ref.update({"session_url": server.url})
        backdate(db, out["id"])
        got = client.get(f"/v1/uploads/{out['id']}", headers=bearer(key))
        assert got.status_code == 200
        assert got.get_json()["status"] == "pending"
        cancelled = client.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key))
        assert cancelled.status_code == 503, cancelled.get_data(as_text=True)
        assert cancelled.get_json()["error"]["code"] == "service_unavailable"
        assert cancelled.headers["Retry-After"]
        assert server.deletes == 2
        assert record(db, out["id"])["state"] == "pending"
    finally:
        ref.delete()
        server.close()
