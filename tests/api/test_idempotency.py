"""Idempotency-Key: each state of the record, over the Flask app on the emulators."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from google.cloud.firestore_v1.base_query import FieldFilter

from lib.api import idempotency, models
from lib.uploads import naming
from tests.helpers import response_schema_errors

VIDEO = {"content_type": "video/mp4", "filename": "clip.mp4"}


def post(client, key, idem, body=VIDEO, raw=None):
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": idem}
    return client.post("/v1/uploads", data=raw if raw is not None else json.dumps(body), headers=headers)


def record(db, workspace, idem, mode="live"):
    return db.collection(idempotency.COLLECTION).document(idempotency.record_id(workspace, mode, idem))


def fingerprint(body):
    """The fingerprint of the request a body stands for, as main.py takes it."""
    return models.validate_upload_request(body).fingerprint(naming.normalize_content_type(body["content_type"]))


@pytest.fixture
def ws_key(make_key):
    return make_key()


@pytest.fixture
def idem():
    return f"order-{uuid.uuid4()}"


def test_first_call_creates_and_stores_a_completed_record(client, db, ws_key, idem):
    key, workspace = ws_key
    resp = post(client, key, idem)
    assert resp.status_code == 201
    snap = record(db, workspace, idem).get()
    doc = snap.to_dict()
    assert doc["state"] == "completed"
    assert doc["response"] == resp.get_json()
    assert doc["fingerprint"] == fingerprint(VIDEO)
    assert doc["mode"] == "live"
    assert doc["workspace_id"] == workspace
    assert timedelta(hours=23, minutes=59) < doc["expires_at"] - doc["created_at"] <= timedelta(hours=24)
    assert idem not in json.dumps(doc, default=str)  # the key itself is not stored


def test_replay_with_same_body_returns_200_and_the_same_response(client, ws_key, idem, openapi_doc):
    key, _ = ws_key
    first = post(client, key, idem)
    again = post(client, key, idem, raw=b'{ "filename" : "clip.mp4",\n "content_type":"video/mp4" }')
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_data() == first.get_data()  # same bytes, same field order
    assert response_schema_errors(openapi_doc, 200, again.get_json()) == []
    assert again.headers["X-Request-Id"] != first.headers["X-Request-Id"]


def test_if_same_key_different_body_then_409_reused(client, ws_key, idem, openapi_doc):
    key, _ = ws_key
    assert post(client, key, idem).status_code == 201
    resp = post(client, key, idem, body={"content_type": "video/mp4", "filename": "other.mp4"})
    assert resp.status_code == 409
    assert resp.get_json()["error"]["code"] == "idempotency_key_reused"
    assert response_schema_errors(openapi_doc, 409, resp.get_json()) == []


def _leave_claim(db, workspace, idem, body=VIDEO, lease_left=timedelta(seconds=30), age=timedelta(0)):
    """The record a request leaves while it runs (or when it crashes mid-way)."""
    now = datetime.now(UTC) - age
    record(db, workspace, idem).create(
        {
            "workspace_id": workspace,
            "fingerprint": fingerprint(body),
            "state": "in_progress",
            "claim_token": "someone-else",
            "response": None,
            "created_at": now,
            "lease_expires_at": datetime.now(UTC) + lease_left,
            "expires_at": now + timedelta(hours=24),
        }
    )


def test_if_first_request_still_in_flight_then_409_in_use_with_retry_after(client, db, ws_key, idem, openapi_doc):
    key, workspace = ws_key
    _leave_claim(db, workspace, idem)
    resp = post(client, key, idem)
    assert resp.status_code == 409
    assert resp.get_json()["error"]["code"] == "idempotency_key_in_use"
    assert 1 <= int(resp.headers["Retry-After"]) <= 5
    assert response_schema_errors(openapi_doc, 409, resp.get_json()) == []


def test_in_flight_with_another_body_is_reused_not_in_use(client, db, ws_key, idem):
    key, workspace = ws_key
    _leave_claim(db, workspace, idem, body={"content_type": "image/png"})
    assert post(client, key, idem).get_json()["error"]["code"] == "idempotency_key_reused"


def test_if_crashed_claims_lease_ran_out_then_key_works_again(client, db, ws_key, idem):
    key, workspace = ws_key
    _leave_claim(db, workspace, idem, lease_left=timedelta(seconds=-1))
    resp = post(client, key, idem)
    assert resp.status_code == 201
    doc = record(db, workspace, idem).get().to_dict()
    assert doc["state"] == "completed"
    assert doc["response"] == resp.get_json()
    assert post(client, key, idem).status_code == 200


def test_if_record_past_expires_at_then_treated_as_absent(client, db, ws_key, idem):
    key, workspace = ws_key
    old = datetime.now(UTC) - timedelta(hours=25)
    record(db, workspace, idem).create(
        {
            "workspace_id": workspace,
            "fingerprint": "different-body",
            "state": "completed",
            "claim_token": "old",
            "response": {"upload_url": "http://old", "source_url": "http://old", "expires_at": "2000-01-01T00:00:00Z"},
            "created_at": old,
            "lease_expires_at": old,
            "expires_at": old + timedelta(hours=24),
        }
    )
    resp = post(client, key, idem)
    assert resp.status_code == 201
    assert resp.get_json()["upload_url"] != "http://old"


def test_keys_are_scoped_per_workspace(client, make_key, idem):
    (key_a, _), (key_b, _) = make_key(), make_key()
    a, b = post(client, key_a, idem), post(client, key_b, idem)
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.get_json()["upload_url"] != b.get_json()["upload_url"]
    assert "ws_" in a.get_json()["source_url"]
    assert a.get_json()["source_url"] != b.get_json()["source_url"]


def test_two_keys_of_one_workspace_share_its_idempotency_records(client, make_key, idem):
    key_1, workspace = make_key()
    key_2, _ = make_key(workspace)
    first = post(client, key_1, idem)
    again = post(client, key_2, idem)
    assert again.status_code == 200
    assert again.get_json() == first.get_json()


def test_a_test_key_and_a_live_key_of_one_workspace_never_share_a_record(client, db, make_key, idem):
    live_key, workspace = make_key()
    test_key, _ = make_key(workspace, mode="test")
    live = post(client, live_key, idem)
    test = post(client, test_key, idem)
    live_again = post(client, live_key, idem)
    assert (live.status_code, test.status_code, live_again.status_code) == (201, 201, 200)
    assert live_again.get_json() == live.get_json()
    assert test.get_json()["upload_url"] != live.get_json()["upload_url"]
    assert "/test-uploads/" in test.get_json()["source_url"]
    assert "/uploads/" in live.get_json()["source_url"]
    # Each key can see its own upload.
    for key, body in ((live_key, live), (test_key, test)):
        got = client.get(f"/v1/uploads/{body.get_json()['id']}", headers={"Authorization": f"Bearer {key}"})
        assert got.status_code == 200
    assert record(db, workspace, idem, "test").get().to_dict()["mode"] == "test"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(
            {"content_type": "video/mp4", "size_bytes": 2048},
            {"content_type": "video/mp4", "size_bytes": 2048.0},
            id="integer-as-float",
        ),
        pytest.param(
            {"content_type": "video/mp4", "filename": None}, {"content_type": "video/mp4"}, id="null-filename"
        ),
        pytest.param({"content_type": "video/mp4", "size_bytes": None}, {"content_type": "video/mp4"}, id="null-size"),
        pytest.param(
            {"content_type": "video/mp4"}, {"content_type": " Video/MP4; codecs=avc1 "}, id="content-type-spelling"
        ),
        pytest.param({"content_type": "audio/wav"}, {"content_type": "audio/x-wav"}, id="content-type-alias"),
    ],
)
def test_equivalent_bodies_replay_rather_than_conflict(client, ws_key, idem, first, second):
    key, _ = ws_key
    original = post(client, key, idem, body=first)
    replay = post(client, key, idem, body=second)
    assert (original.status_code, replay.status_code) == (201, 200), replay.get_data(as_text=True)
    assert replay.get_json() == original.get_json()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param({"content_type": "text/html"}, 422, id="unsupported"),
        pytest.param({"content_type": 1}, 422, id="invalid"),
        pytest.param(None, 400, id="not-json"),
    ],
)
def test_if_request_fails_validation_then_nothing_is_stored(client, db, ws_key, idem, body, status):
    key, workspace = ws_key
    resp = post(client, key, idem, body=body, raw=b"{" if body is None else None)
    assert resp.status_code == status
    assert not record(db, workspace, idem).get().exists
    assert post(client, key, idem).status_code == 201  # the retry is not blocked


def test_without_a_key_nothing_is_stored(client, db, ws_key):
    key, workspace = ws_key
    query = db.collection(idempotency.COLLECTION).where(filter=FieldFilter("workspace_id", "==", workspace))
    before = len(list(query.stream()))
    assert client.post("/v1/uploads", json=VIDEO, headers={"Authorization": f"Bearer {key}"}).status_code == 201
    after = len(list(query.stream()))
    assert before == after == 0


def test_a_request_whose_claim_was_taken_over_can_neither_complete_nor_release_it(db, ws_key, idem):
    """A slow request outlives its lease; a retry takes the key over. The slow one
    must not store (or later return) its URL, nor delete the new owner's claim."""
    _, workspace = ws_key
    fp = fingerprint(VIDEO)
    slow = idempotency.begin(db, workspace, "live", idem, fp, ttl_seconds=86400, lease_seconds=1)
    assert isinstance(slow, idempotency.Claim)
    # Let the lease run out without waiting: move it into the past.
    record(db, workspace, idem).update({"lease_expires_at": datetime.now(UTC) - timedelta(seconds=1)})
    retry = idempotency.begin(db, workspace, "live", idem, fp, ttl_seconds=86400, lease_seconds=30)
    assert isinstance(retry, idempotency.Claim)
    assert retry.token != slow.token

    # The slow request's upload record rides in the same commit: it is not written either.
    slow_upload = db.collection("uploads").document(f"upl_{uuid.uuid4().hex}")
    with pytest.raises(idempotency.IdempotencyKeyInUse):
        idempotency.complete(
            db,
            slow,
            {"upload_url": "slow", "source_url": "slow", "expires_at": "x"},
            also_create=(slow_upload, {"state": "pending"}),
        )
    assert not slow_upload.get().exists
    assert idempotency.release(db, slow) is False
    assert record(db, workspace, idem).get().to_dict()["claim_token"] == retry.token

    winner = {"upload_url": "retry", "source_url": "retry", "expires_at": "x"}
    winner_upload = db.collection("uploads").document(f"upl_{uuid.uuid4().hex}")
    idempotency.complete(db, retry, winner, also_create=(winner_upload, {"state": "pending"}))
    assert winner_upload.get().exists
    winner_upload.delete()  # not a real upload: keep it out of the sweeps
    replay = idempotency.begin(db, workspace, "live", idem, fp, ttl_seconds=86400, lease_seconds=30)
    assert replay == idempotency.Replay(winner)


def test_once_runs_its_work_once_releases_a_failed_claim_and_says_when_it_could_not(db, ws_key, idem, monkeypatch):
    _, workspace = ws_key
    told: list[str] = []

    def run(work, key=idem):
        return idempotency.once(
            db, workspace, "live", key, "f" * 64, 86400, 30, work, on_claim_left=lambda: told.append(key)
        )

    def fail():
        raise RuntimeError("the work failed")

    with pytest.raises(RuntimeError):
        run(fail)
    assert not record(db, workspace, idem).get().exists
    assert told == []
    stored = {"id": "upl_" + "1" * 32}
    assert run(lambda: (stored, None)) == (stored, False)
    assert run(lambda: pytest.fail("the work ran twice")) == (stored, True)
    # When even the release fails, the caller is told; the claim waits for its lease.
    monkeypatch.setattr(idempotency, "release", lambda _db, _claim: False)
    with pytest.raises(RuntimeError):
        run(fail, key=idem + "-2")
    assert told == [idem + "-2"]
    assert record(db, workspace, idem + "-2").get().get("state") == "in_progress"


def test_the_same_key_with_another_cors_origin_is_reused(client, key):
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = client.post("/v1/uploads", json={**VIDEO, "cors_origin": "https://a.example.com"}, headers=headers)
    again = client.post("/v1/uploads", json={**VIDEO, "cors_origin": "https://a.example.com"}, headers=headers)
    other = client.post("/v1/uploads", json={**VIDEO, "cors_origin": "https://b.example.com"}, headers=headers)
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"
