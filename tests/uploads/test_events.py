"""Storage events (POST /internal/storage-events) and the checksums GCS enforces.

Events are pushed here as Pub/Sub pushes them: the envelope, a Google-shaped
OIDC token from tests/oidc_issuer.py, and for the object resource whatever
fake-gcs-server says of the real object a real PUT made.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from datetime import UTC, datetime

import pytest
import requests

from dev.oidc_issuer import EVENTS_AUDIENCE
from lib.uploads import gcs_sessions, lifecycle, storage_events
from tests.conftest import BUCKET, STAGING_BUCKET, start_shipped
from tests.helpers import RecordingProxy, media, padded_mp4, schema_errors
from tests.uploads.test_lifecycle import VIDEO, backdate, bearer, create, end_hour_now, put_bytes, record

ROUTE = "/internal/storage-events"


def crc32c(data: bytes) -> str:
    """Base64 of the big-endian CRC32C (Castagnoli), as GCS reports `crc32c`."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return base64.b64encode((crc ^ 0xFFFFFFFF).to_bytes(4, "big")).decode()


def md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def resource_of(gcs, name: str, bucket: str = STAGING_BUCKET) -> dict:
    """The object resource GCS would put in the notification (payload JSON_API_V1)."""
    blob = gcs.bucket(bucket).get_blob(name)
    assert blob is not None, name
    return dict(blob._properties)


def envelope(resource: dict, event_type: str = "OBJECT_FINALIZE", bucket: str | None = None) -> dict:
    bucket = bucket or resource["bucket"]
    return {
        "message": {
            "attributes": {
                "eventType": event_type,
                "bucketId": bucket,
                "objectId": resource["name"],
                "objectGeneration": str(resource["generation"]),
                "payloadFormat": "JSON_API_V1",
                "notificationConfig": f"projects/_/buckets/{bucket}/notificationConfigs/1",
            },
            "data": base64.b64encode(json.dumps(resource).encode()).decode(),
            "messageId": str(secrets.randbelow(10**15)),
            "publishTime": datetime.now(UTC).isoformat(),
        },
        "subscription": "projects/framelane-test/subscriptions/uploads-storage-events",
    }


def push(client, body, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(ROUTE, data=data, headers=headers, content_type="application/json")


def object_name(out: dict) -> str:
    return out["source_url"].split(f"/{BUCKET}/", 1)[1]


@pytest.fixture
def landed(client, make_key, gcs):
    """An upload whose bytes landed (a real PUT), not yet looked at by anyone."""
    key, _ = make_key()
    data = padded_mp4(3000, secrets.randbits(64))  # a real MP4, its checksums its own
    out = create(
        client, key, {"content_type": "video/mp4", "size_bytes": len(data), "crc32c": crc32c(data), "md5": md5(data)}
    )
    put_bytes(out["upload_url"], data)
    return key, out, data, resource_of(gcs, object_name(out))


# --- completion ------------------------------------------------------------------------------------------


def test_an_event_completes_the_upload_with_what_gcs_says_of_the_object(
    client, db, gcs, landed, oidc_issuer, openapi_doc
):
    key, out, data, resource = landed
    assert record(db, out["id"])["state"] == "pending"  # nothing has looked yet
    resp = push(client, envelope(resource), oidc_issuer.events_token())
    assert resp.status_code == 200
    assert resp.get_json() == {"outcome": "completed"}
    stored = record(db, out["id"])
    assert stored["state"] == "completed"
    assert stored["size_bytes"] == len(data)
    assert stored["crc32c"] == resource["crc32c"] == crc32c(data)
    assert stored["md5"] == resource["md5Hash"] == md5(data)
    assert stored["media"] == {"duration_seconds": 1.0, "width": 64, "height": 48, "codecs": ["h264"]}
    assert 0 < stored["media_bytes_read"] <= len(data)
    # Placed at its served name, the staging object deleted: the record names the served generation.
    placed = gcs.bucket(BUCKET).get_blob(resource["name"])
    assert placed.generation == stored["generation"]
    assert placed.content_type == "video/mp4"
    assert gcs.bucket(STAGING_BUCKET).get_blob(resource["name"]) is None
    assert requests.get(out["source_url"], timeout=10).content == data
    assert "session_url" not in stored
    # GET and cancel report it, with the placement time, the checksums and the media.
    got = client.get(f"/v1/uploads/{out['id']}", headers=bearer(key)).get_json()
    assert got["status"] == "completed"
    assert got["crc32c"] == crc32c(data)
    assert got["md5"] == md5(data)
    assert got["completed_at"] == placed.time_created.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert got["media"] == stored["media"]
    assert schema_errors(openapi_doc, "#/components/schemas/Upload", got) == []
    assert client.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key)).status_code == 409


def test_a_repeated_event_changes_nothing(client, db, landed, oidc_issuer):
    _, out, _, resource = landed
    body = envelope(resource)
    assert push(client, body, oidc_issuer.events_token()).get_json() == {"outcome": "completed"}
    before = db.collection(lifecycle.COLLECTION).document(out["id"]).get().update_time
    for _ in range(3):
        resp = push(client, body, oidc_issuer.events_token())
        assert resp.status_code == 200
        assert resp.get_json() == {"outcome": "duplicate"}
    assert db.collection(lifecycle.COLLECTION).document(out["id"]).get().update_time == before


def test_an_event_after_a_get_completed_the_upload_is_a_duplicate(client, db, gcs, landed, oidc_issuer):
    key, out, data, resource = landed
    got = client.get(f"/v1/uploads/{out['id']}", headers=bearer(key)).get_json()
    assert got["status"] == "completed"
    assert got["crc32c"] == crc32c(data)
    assert got["completed_at"]
    assert push(client, envelope(resource), oidc_issuer.events_token()).get_json() == {"outcome": "duplicate"}
    assert record(db, out["id"])["generation"] == gcs.bucket(BUCKET).get_blob(resource["name"]).generation


def test_the_placements_own_event_is_ignored_and_deletes_nothing(client, db, gcs, landed, oidc_issuer):
    """GCS notifies for the staging bucket only (terraform/events.tf), but an emulator publishes
    the rewrite's OBJECT_FINALIZE in the served bucket too: it must never be taken for an upload."""
    key, out, _, resource = landed
    assert client.get(f"/v1/uploads/{out['id']}", headers=bearer(key)).get_json()["status"] == "completed"
    served = resource_of(gcs, resource["name"], BUCKET)
    for _ in range(2):
        resp = push(client, envelope(served), oidc_issuer.events_token())
        assert resp.status_code == 200
        assert resp.get_json() == {"outcome": "ignored_placement"}
    assert gcs.bucket(BUCKET).get_blob(resource["name"]) is not None
    assert record(db, out["id"])["state"] == "completed"


@pytest.mark.parametrize("end", ["cancelled", "expired"])
def test_bytes_that_land_after_a_cancel_or_expiry_are_deleted_and_the_state_stays(
    client, db, gcs, make_key, oidc_issuer, end
):
    key, _ = make_key()
    out = create(client, key)
    if end == "cancelled":
        assert client.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key)).get_json()["status"] == end
    else:
        backdate(db, out["id"])
        assert client.get(f"/v1/uploads/{out['id']}", headers=bearer(key)).get_json()["status"] == end
    # The bytes land after all (on GCS a finalize racing the cancel; here written directly).
    name = object_name(out)
    gcs.bucket(STAGING_BUCKET).blob(name).upload_from_string(media(), content_type="video/mp4")
    resp = push(client, envelope(resource_of(gcs, name)), oidc_issuer.events_token())
    assert resp.status_code == 200
    assert resp.get_json() == {"outcome": "deleted_late_object"}
    assert gcs.bucket(STAGING_BUCKET).get_blob(name) is None
    assert gcs.bucket(BUCKET).get_blob(name) is None
    assert record(db, out["id"])["state"] == end
    # Delivered again: the object is already gone; still acknowledged.
    assert push(
        client, envelope({**resource_of_deleted(name), "name": name}), oidc_issuer.events_token()
    ).get_json() == {"outcome": "deleted_late_object"}


def resource_of_deleted(name: str) -> dict:
    return {
        "bucket": STAGING_BUCKET,
        "name": name,
        "generation": "1",
        "size": "10",
        "timeCreated": "2026-01-01T00:00:00.000Z",
    }


def test_the_delete_is_conditioned_on_the_events_generation(backends, serve, client, gcs, make_key, oidc_issuer):
    """So an old event can never delete newer bytes. fake-gcs-server ignores
    ifGenerationMatch on DELETE (1.54), so what is asserted is what reaches Storage."""
    key, _ = make_key()
    out = create(client, key)
    client.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key))
    name = object_name(out)
    gcs.bucket(STAGING_BUCKET).blob(name).upload_from_string(b"late", content_type="video/mp4")
    resource = resource_of(gcs, name)
    with RecordingProxy(backends["storage"].url) as proxy:
        served = serve(STORAGE_EMULATOR_HOST=proxy.url)
        resp = served.post(
            ROUTE, json=envelope(resource), headers={"Authorization": f"Bearer {oidc_issuer.events_token()}"}
        )
        assert resp.status_code == 200
        assert resp.json() == {"outcome": "deleted_late_object"}
        deletes = [r["path"] for r in proxy.requests if r["method"] == "DELETE"]
    assert len(deletes) == 1
    assert f"ifGenerationMatch={resource['generation']}" in deletes[0]


# --- what is acknowledged and ignored ---------------------------------------------------------------------


def test_objects_the_service_does_not_know_are_acknowledged_and_ignored(client, db, gcs, landed, oidc_issuer):
    _, out, _, resource = landed
    name = resource["name"]
    cases = [
        envelope(resource, bucket="someone-elses-bucket"),
        envelope({**resource, "name": "elsewhere/" + name}),
        envelope({**resource, "name": name.replace(out["id"][4:], "0" * 32)}),  # our shape, no record
        envelope({**resource, "name": name.replace("uploads/", "test-uploads/", 1)}),  # the record's other name
    ]
    for body in cases:
        resp = push(client, body, oidc_issuer.events_token())
        assert resp.status_code == 200, body
        assert resp.get_json() == {"outcome": "ignored_unknown_object"}, body
    resp = push(client, envelope(resource, event_type="OBJECT_DELETE"), oidc_issuer.events_token())
    assert resp.get_json() == {"outcome": "ignored_event_type"}
    assert record(db, out["id"])["state"] == "pending"


def _without(body: dict, *path: str) -> dict:
    body = json.loads(json.dumps(body))
    target = body
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return body


def _resource_with(body: dict, **changes) -> dict:
    """The envelope with its object resource changed."""
    resource = {**json.loads(base64.b64decode(body["message"]["data"])), **changes}
    return {**body, "message": {**body["message"], "data": base64.b64encode(json.dumps(resource).encode()).decode()}}


@pytest.mark.parametrize(
    "make_body",
    [
        pytest.param(lambda e: b"not json", id="not-json"),
        pytest.param(lambda e: _resource_with(e, size=str(2**70)), id="size-beyond-int64"),
        pytest.param(lambda e: _resource_with(e, generation=str(2**70)), id="generation-beyond-int64"),
        pytest.param(lambda e: _resource_with(e, size="-1"), id="negative-size"),
        pytest.param(lambda e: [e], id="an-array"),
        pytest.param(lambda e: {"subscription": "x"}, id="no-message"),
        pytest.param(lambda e: _without(e, "message", "attributes"), id="no-attributes"),
        pytest.param(lambda e: _without(e, "message", "attributes", "objectId"), id="no-object-id"),
        pytest.param(lambda e: _without(e, "message", "data"), id="finalize-without-data"),
        pytest.param(lambda e: {**e, "message": {**e["message"], "data": "%%%"}}, id="data-not-base64"),
        pytest.param(
            lambda e: {**e, "message": {**e["message"], "data": base64.b64encode(b"[1]").decode()}},
            id="data-not-an-object",
        ),
        pytest.param(
            lambda e: {**e, "message": {**e["message"], "data": base64.b64encode(b'{"name": "x"}').decode()}},
            id="data-without-size",
        ),
        pytest.param(
            lambda e: {**e, "message": {**e["message"], "attributes": {**e["message"]["attributes"], "bucketId": 7}}},
            id="attribute-not-a-string",
        ),
    ],
)
def test_a_body_that_is_not_a_push_envelope_is_400(client, landed, oidc_issuer, make_body, openapi_doc):
    _, _out, _, resource = landed
    resp = push(client, make_body(envelope(resource)), oidc_issuer.events_token())
    assert resp.status_code == 400
    assert resp.get_json()["error"]["code"] == "invalid_event"
    assert schema_errors(openapi_doc, "#/components/schemas/Error", resp.get_json()) == []


# --- who may push -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_token", "status", "code"),
    [
        pytest.param(lambda i: None, 401, "invalid_token", id="missing"),
        pytest.param(lambda i: i.token(), 401, "invalid_token", id="the-sweeps-token"),
        pytest.param(
            lambda i: i.events_token(email="someone@framelane-test.iam.gserviceaccount.com"),
            403,
            "forbidden",
            id="another-identity",
        ),
        pytest.param(lambda i: i.events_token(email_verified=False), 403, "forbidden", id="unverified-email"),
        pytest.param(
            lambda i: i.events_token(
                exp=int(datetime.now().timestamp()) - 3600, iat=int(datetime.now().timestamp()) - 7200
            ),
            401,
            "invalid_token",
            id="expired",
        ),
        pytest.param(
            lambda i: i.events_token(signer=i.other_key.signer, key_id=i.key.kid),
            401,
            "invalid_token",
            id="wrong-signer",
        ),
    ],
)
def test_only_the_subscriptions_token_may_push(client, db, landed, oidc_issuer, make_token, status, code):
    _, out, _, resource = landed
    resp = push(client, envelope(resource), make_token(oidc_issuer))
    assert resp.status_code == status
    assert resp.get_json()["error"]["code"] == code
    assert record(db, out["id"])["state"] == "pending"


def test_unconfigured_the_route_refuses_every_push(serve, oidc_issuer):
    served = serve(drop=("EVENTS_AUDIENCE", "EVENTS_SERVICE_ACCOUNT"))
    resp = served.post(ROUTE, json={"message": {}}, headers={"Authorization": f"Bearer {oidc_issuer.events_token()}"})
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "forbidden"


def test_the_events_audience_is_not_the_sweeps(client, oidc_issuer):
    resp = client.post("/internal/sweep", headers={"Authorization": f"Bearer {oidc_issuer.events_token()}"})
    assert resp.status_code == 401
    assert EVENTS_AUDIENCE.endswith(ROUTE)


# --- upstream failures: 503, then the redelivery lands ---------------------------------------------------


def test_with_firestore_down_an_event_is_503_and_its_redelivery_completes_the_upload(serve, db, landed, oidc_issuer):
    from dev.emulators import free_port

    _, out, _, resource = landed
    body, token = envelope(resource), oidc_issuer.events_token()
    broken = serve(FIRESTORE_EMULATOR_HOST=f"127.0.0.1:{free_port()}")
    resp = broken.post(ROUTE, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "service_unavailable"
    assert record(db, out["id"])["state"] == "pending"
    healthy = serve()
    resp = healthy.post(ROUTE, json=body, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200
    assert resp.json() == {"outcome": "completed"}


def test_with_storage_down_a_late_objects_event_is_503_and_its_redelivery_deletes_it(
    serve, client, db, gcs, make_key, oidc_issuer
):
    from dev.emulators import free_port

    key, _ = make_key()
    out = create(client, key)
    client.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key))
    name = object_name(out)
    gcs.bucket(STAGING_BUCKET).blob(name).upload_from_string(b"late", content_type="video/mp4")
    body, token = envelope(resource_of(gcs, name)), oidc_issuer.events_token()
    broken = serve(STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{free_port()}")
    resp = broken.post(ROUTE, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert resp.status_code == 503
    assert gcs.bucket(STAGING_BUCKET).get_blob(name) is not None
    assert push(client, body, token).get_json() == {"outcome": "deleted_late_object"}
    assert gcs.bucket(STAGING_BUCKET).get_blob(name) is None


# --- checksums ---------------------------------------------------------------------------------------------


def test_checksums_are_bound_into_the_session_initiation(backends, serve, make_key):
    """GCS refuses to finalize other bytes once the initiation carries crc32c/md5Hash
    (https://cloud.google.com/storage/docs/data-validation). fake-gcs-server does not
    check them, so what is asserted is what reaches Storage."""
    key, _ = make_key()
    data = b"framelane" * 100
    with RecordingProxy(backends["storage"].url) as proxy:
        served = serve(STORAGE_EMULATOR_HOST=proxy.url)
        with_sums = served.post(
            json={"content_type": "video/mp4", "crc32c": crc32c(data), "md5": md5(data)}, headers=bearer(key)
        )
        without = served.post(json=VIDEO, headers=bearer(key))
        assert with_sums.status_code == 201
        assert without.status_code == 201
        initiations = [
            json.loads(r["body"])
            for r in proxy.requests
            if r["method"] == "POST" and "uploadType=resumable" in r["path"]
        ]
    assert initiations[0]["crc32c"] == crc32c(data)
    assert initiations[0]["md5Hash"] == md5(data)
    assert "crc32c" not in initiations[1]
    assert "md5Hash" not in initiations[1]


def test_our_crc32c_is_the_one_gcs_reports(gcs):
    """The test's own CRC32C must match Storage's, or the assertions above prove nothing."""
    name = f"crc-check/{secrets.token_hex(8)}"
    gcs.bucket(BUCKET).blob(name).upload_from_string(b"123456789")
    assert gcs.bucket(BUCKET).get_blob(name).crc32c == crc32c(b"123456789") == "4waSgw=="
    gcs.bucket(BUCKET).blob(name).delete()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("crc32c", "AAAA", id="crc32c-short"),
        pytest.param("crc32c", "AAAAAAAA", id="crc32c-unpadded-6-bytes"),
        pytest.param("crc32c", "AAAAAB==", id="crc32c-non-canonical"),
        pytest.param("crc32c", "4waSgw", id="crc32c-no-padding"),
        pytest.param("crc32c", 123, id="crc32c-number"),
        pytest.param("md5", "AAAAAA==", id="md5-4-bytes"),
        pytest.param("md5", "d41d8cd98f00b204e9800998ecf8427e", id="md5-hex"),
        pytest.param("md5", "1B2M2Y8AsgTpgAmY7PhCfg==\n", id="md5-newline"),
    ],
)
def test_a_malformed_checksum_is_422_naming_the_field(client, key, field, value):
    resp = client.post("/v1/uploads", json={"content_type": "video/mp4", field: value}, headers=bearer(key))
    assert resp.status_code == 422
    assert resp.get_json()["error"]["code"] == "validation_error"
    assert [f["field"] for f in resp.get_json()["error"]["details"]["fields"]] == [field]


def test_checksums_are_part_of_the_idempotent_request(client, key):
    idem = {"Idempotency-Key": f"sums-{secrets.token_hex(8)}"}
    first = {"content_type": "video/mp4", "crc32c": crc32c(b"a")}
    assert client.post("/v1/uploads", json=first, headers={**bearer(key), **idem}).status_code == 201
    assert client.post("/v1/uploads", json=first, headers={**bearer(key), **idem}).status_code == 200
    other = {"content_type": "video/mp4", "crc32c": crc32c(b"b")}
    resp = client.post("/v1/uploads", json=other, headers={**bearer(key), **idem})
    assert resp.status_code == 409
    assert resp.get_json()["error"]["code"] == "idempotency_key_reused"


def test_object_names_map_to_upload_ids_only_in_the_shape_the_service_makes():
    hex32 = "0123456789abcdef" * 2
    assert storage_events.upload_id_for(f"uploads/ws_1/{hex32}.mp4") == f"upl_{hex32}"
    assert storage_events.upload_id_for(f"test-uploads/ws_1/{hex32}.webm") == f"upl_{hex32}"
    for name in (
        f"uploads/{hex32}.mp4",
        f"other/ws_1/{hex32}.mp4",
        f"uploads/ws_1/{hex32}",
        f"uploads/ws_1/x{hex32}.mp4",
        f"uploads/ws/1/{hex32}.mp4",
        f"uploads/ws_1/{hex32.upper()}.mp4",
        "",
    ):
        assert storage_events.upload_id_for(name) is None, name


@pytest.mark.parametrize(("field", "size"), [("crc32c", 4), ("md5", 16)])
def test_the_documents_checksum_pattern_admits_exactly_what_the_code_accepts(openapi_doc, field, size):
    import re

    from lib.api import models
    from lib.platform.errors import ValidationFailed

    pattern = openapi_doc["components"]["schemas"]["UploadRequest"]["properties"][field]["anyOf"][0]["pattern"]
    canonical = base64.b64encode(secrets.token_bytes(size)).decode()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    # Every last significant character: canonical only if its unused low bits are zero.
    for last in alphabet:
        value = canonical[:-3] + last + "=="
        try:
            models.validate_upload_request({"content_type": "video/mp4", field: value})
            accepted = True
        except ValidationFailed:
            accepted = False
        assert bool(re.fullmatch(pattern, value)) == accepted, value
    for value in (canonical.rstrip("="), canonical + "=", " " + canonical, canonical[:-4] + "!" + canonical[-3:]):
        assert not re.fullmatch(pattern, value)


# --- the whole path: PUT -> fake-gcs event -> Pub/Sub emulator -> relay -> function -> record ----------------


def wait_for(condition, timeout: float = 30.0, what: str = "condition"):
    """Poll until `condition()` is truthy (its value) or fail after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)  # poll interval, not a stand-in for readiness
    raise AssertionError(f"timed out waiting for {what}")


def test_a_put_completes_its_upload_through_the_event_path_with_no_get(event_path, make_key, db):
    served = event_path["function"]
    key, _ = make_key()
    data = padded_mp4(5000, secrets.randbits(64))
    out = served.post(
        json={"content_type": "video/mp4", "crc32c": crc32c(data), "md5": md5(data)}, headers=bearer(key)
    ).json()
    put_bytes(out["upload_url"], data)
    stored = wait_for(lambda: (r := record(db, out["id"]))["state"] == "completed" and r, what="completion")
    assert stored["size_bytes"] == len(data)
    assert stored["crc32c"] == crc32c(data)
    assert stored["md5"] == md5(data)
    assert stored["completed_at"]
    assert stored["generation"]

    # Nothing but the event completed it: no GET, cancel or sweep of it reached the function.
    def lines_of_upload() -> list[dict]:  # the webhook pushes that follow the completion aside
        return [
            line
            for line in served.log_lines()
            if line.get("upload_id") == out["id"]
            and not line["httpRequest"]["requestUrl"].startswith("/internal/webhook")
        ]

    # The event's log line is written once it has answered (after the record and the webhook's publish);
    # the placement's own event (fake-gcs publishes every bucket's) is acknowledged and ignored.
    lines = wait_for(lambda: len(found := lines_of_upload()) >= 3 and found, what="the events' log lines")
    assert [line["httpRequest"]["requestUrl"] for line in lines] == ["/v1/uploads", *["/internal/storage-events"] * 2]
    assert sorted(line["outcome"] for line in lines[1:]) == ["completed", "ignored_placement"]
    completing = next(line for line in lines if line.get("outcome") == "completed")
    assert 0 < completing["media_bytes_read"] <= len(data)
    assert completing["media_reads"] == 1
    assert "Bearer" not in served.log_text()


def test_a_redelivered_event_changes_nothing(event_path, make_key, db):
    """Publish the same notification again (at-least-once delivery): acknowledged as a duplicate."""
    served, pubsub = event_path["function"], event_path["pubsub"]
    key, _ = make_key()
    out = served.post(json=VIDEO, headers=bearer(key)).json()
    put_bytes(out["upload_url"], media())
    # Completed, and its webhook event fanned out (which clears the owed mark: a write of its own).
    wait_for(
        lambda: (r := record(db, out["id"]))["state"] == "completed" and lifecycle.OWED_FIELD not in r,
        what="completion",
    )
    before = db.collection(lifecycle.COLLECTION).document(out["id"]).get().update_time
    from dev import emulators
    from tests.conftest import EVENTS_TOPIC, PROJECT

    name = object_name(out)
    # Its staging object is gone once placed: the redelivery carries what it said then, in its bucket.
    resource = {**resource_of_storage(event_path, name, BUCKET), "bucket": STAGING_BUCKET}
    emulators.pubsub_call(
        pubsub,
        "POST",
        f"projects/{PROJECT}/topics/{EVENTS_TOPIC}:publish",
        {
            "messages": [
                {
                    "data": envelope(resource)["message"]["data"],
                    "attributes": envelope(resource)["message"]["attributes"],
                }
            ]
        },
    )
    wait_for(
        lambda: [
            line
            for line in served.log_lines()
            if line.get("upload_id") == out["id"] and line.get("outcome") == "duplicate"
        ],
        what="the duplicate's delivery",
    )
    assert db.collection(lifecycle.COLLECTION).document(out["id"]).get().update_time == before


def resource_of_storage(event_path, name: str, bucket: str = STAGING_BUCKET) -> dict:
    """The object resource from the event path's own fake-gcs-server."""
    import urllib.parse

    url = f"{event_path['storage'].url}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}"
    return requests.get(url, timeout=10).json()


def test_through_the_whole_path_late_bytes_are_deleted_and_unknown_objects_acknowledged(event_path, make_key, db):
    """Objects written straight into the event path's bucket: one for a cancelled upload
    (its bytes landing after the cancel), one the service never made."""
    served, storage = event_path["function"], event_path["storage"]
    key, _ = make_key()
    out = served.post(json=VIDEO, headers=bearer(key)).json()
    assert served.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key)).json()["status"] == "cancelled"
    stranger = f"uploads/ws_nobody/{secrets.token_hex(16)}.mp4"
    for name in (object_name(out), stranger):
        resp = requests.post(
            f"{storage.url}/upload/storage/v1/b/{STAGING_BUCKET}/o",
            params={"uploadType": "media", "name": name},
            data=b"bytes",
            headers={"Content-Type": "video/mp4"},
            timeout=10,
        )
        assert resp.status_code == 200, resp.text

    def outcomes() -> set:
        ids = (out["id"], storage_events.upload_id_for(stranger))
        return {line.get("outcome") for line in served.log_lines() if line.get("upload_id") in ids}

    wait_for(lambda: {"deleted_late_object", "ignored_unknown_object"} <= outcomes(), what="both deliveries")
    gone = requests.get(
        f"{storage.url}/storage/v1/b/{STAGING_BUCKET}/o/{requests.utils.quote(object_name(out), safe='')}", timeout=10
    )
    assert gone.status_code == 404
    assert record(db, out["id"])["state"] == "cancelled"


def test_with_firestore_down_the_relay_redelivers_until_the_upload_completes(
    event_path, backends, make_key, db, log_dir, oidc_issuer, shipped
):
    """The function answers 503 while Firestore is unreachable; the relay keeps the
    message and redelivers it with backoff; once Firestore is back the redelivery
    completes the upload. A path of its own (topic, fake-gcs-server, functions,
    relay), so nothing else can complete the upload first."""
    from dev import emulators
    from tests.conftest import PROJECT
    from tests.tcpproxy import TcpProxy

    pubsub, topic, sub = event_path["pubsub"], "storage-events-gated", "storage-events-gated-relay"
    emulators.create_topic_and_subscription(pubsub, PROJECT, topic, sub)
    storage = emulators.start_fake_gcs(log_dir, events=(pubsub, PROJECT, topic), name="fake-gcs-gated")
    started = [storage]
    try:
        emulators.create_buckets(storage.url, BUCKET)
        env = emulators.function_env(
            backends["firestore"], storage, PROJECT, BUCKET, backends["redis"], **oidc_issuer.env()
        )
        creator = start_shipped(shipped, env, log_dir, name="function-gated-creator")
        started.append(creator)
        fs_host, fs_port = backends["firestore"].extra["host"].split(":")
        with TcpProxy(fs_host, int(fs_port), TcpProxy.STALL) as gate:
            gated = start_shipped(
                shipped, dict(env, FIRESTORE_EMULATOR_HOST=f"127.0.0.1:{gate.port}"), log_dir, name="function-gated"
            )
            started.append(gated)
            started.append(
                emulators.start_relay(
                    pubsub,
                    f"projects/{PROJECT}/subscriptions/{sub}",
                    gated.url + "/internal/storage-events",
                    oidc_issuer,
                    log_dir,
                    name="push-relay-gated",
                )
            )
            key, _ = make_key()
            out = requests.post(creator.url + "/v1/uploads", json=VIDEO, headers=bearer(key), timeout=30).json()
            put_bytes(out["upload_url"], media())
            relay_log = log_dir / "push-relay-gated.log"
            wait_for(lambda: '"status": 503' in relay_log.read_text(), timeout=60, what="a 503 while Firestore is down")
            assert record(db, out["id"])["state"] == "pending"
            gate.mode = TcpProxy.FORWARD
            wait_for(lambda: record(db, out["id"])["state"] == "completed", timeout=90, what="the redelivery")

            def deliveries() -> list[dict]:  # of the upload's own event (the placement's comes after it landed)
                lines = [json.loads(line) for line in relay_log.read_text().splitlines() if '"delivery"' in line]
                return [line for line in lines if line["message_id"] == lines[0]["message_id"]]

            # The record is written before the function answers, and the relay logs the answer after.
            wait_for(lambda: deliveries()[-1]["status"] == 200, timeout=30, what="the relay's 200")
        assert deliveries()[0]["status"] == 503  # one message, delivered until it landed
    finally:
        for service in reversed(started):
            service.stop()


# --- settlers racing: whoever writes first decides, and only a completion is ever served -----------------------

SETTLERS = ["event", "get", "cancel", "sweep"]


def _settle_by(settler: str, client, key: str, out: dict, resource: dict, token: str):
    """One settler's real request; its answer (status, the upload's status or the event's outcome)."""
    if settler == "event":
        resp = push(client, envelope(resource), token)
        return resp.status_code, resp.get_json()["outcome"]
    if settler == "get":
        resp = client.get(f"/v1/uploads/{out['id']}", headers=bearer(key))
        return resp.status_code, resp.get_json()["status"]
    if settler == "cancel":
        resp = client.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key))
        return resp.status_code, (resp.get_json().get("status") or resp.get_json()["error"]["code"])
    resp = client.post("/internal/sweep", headers=bearer(token))
    return resp.status_code, "swept"


@pytest.mark.parametrize("winner", SETTLERS)
@pytest.mark.parametrize("loser", SETTLERS)
def test_a_settler_whose_write_loses_undoes_its_placement_unless_the_winner_completed_it(
    client, db, gcs, make_key, oidc_issuer, monkeypatch, loser, winner
):
    """`loser` reads the upload pending, checks and places its bytes; before its conditional write,
    `winner` settles it first. A cancel or sweep that wins decided before the bytes landed; an event
    or GET that wins completed it with the placement it found (on GCS a second rewrite to the served
    name fails its `ifGenerationMatch=0` and `place` answers the existing object; fake-gcs-server
    1.54 ignores that precondition and overwrites, so the winner's write is made here as it would
    be). Then the loser's write loses: the winner's outcome stands, and the served name holds the
    bytes exactly when that outcome is `completed` with them."""
    key, _ = make_key()
    data = padded_mp4(3000, secrets.randbits(64))
    out = create(client, key, {"content_type": "video/mp4", "size_bytes": len(data)})
    put_bytes(out["upload_url"], data)
    end_hour_now(db, out["id"])  # after the bytes landed: each settler (a sweep too) looks, and they count
    name, token = object_name(out), oidc_issuer.token()
    resource, events_token = resource_of(gcs, name), oidc_issuer.events_token()
    real_place, raced = gcs_sessions.place, []

    def place_then_lose(*args, **kwargs):
        placed = real_place(*args, **kwargs)
        if not raced:
            raced.append(winner)
            current = lifecycle.load_by_id(db, out["id"])
            if winner in ("cancel", "sweep"):
                ending = lifecycle.Settlement.cancel() if winner == "cancel" else lifecycle.Settlement.expire()
            else:
                facts = {"duration_seconds": 1.0, "width": 64, "height": 48, "codecs": ["h264"]}
                ending = lifecycle.Settlement.complete(placed, facts)
            lifecycle.transition(db, current, ending)
        return placed

    monkeypatch.setattr(gcs_sessions, "place", place_then_lose)
    status, said = _settle_by(loser, client, key, out, resource, events_token if loser == "event" else token)
    assert raced == [winner]  # the loser did place before its write
    final = record(db, out["id"])["state"]
    assert final == ("completed" if winner in ("event", "get") else "cancelled" if winner == "cancel" else "expired")
    served = gcs.bucket(BUCKET).get_blob(name)
    fetched = requests.get(out["source_url"], timeout=10)
    if final == "completed":
        assert served is not None
        assert served.generation == record(db, out["id"])["generation"]
        assert fetched.status_code == 200
        assert fetched.content == data
    else:
        assert served is None
        assert fetched.status_code == 404
    # The loser answered what stands.
    if loser == "get":
        assert (status, said) == (200, final)
    elif loser == "cancel":
        assert (status, said) == ((409, "upload_completed") if final == "completed" else (200, final))
    else:
        assert status == 200


@pytest.mark.parametrize("settler", SETTLERS)
def test_bytes_finalized_after_expires_at_expire_the_upload_whoever_looks_first(
    client, db, gcs, make_key, oidc_issuer, settler
):
    """A GCS session stays writable past our expires_at: bytes that land then are never served,
    and no settler calls them completed, though none had expired the upload before they landed."""
    key, _ = make_key()
    data = padded_mp4(3000, secrets.randbits(64))
    out = create(client, key, {"content_type": "video/mp4", "size_bytes": len(data)})
    backdate(db, out["id"])  # its hour is over, and nothing has looked
    put_bytes(out["upload_url"], data)
    name = object_name(out)
    resource = resource_of(gcs, name)
    token = oidc_issuer.events_token() if settler == "event" else oidc_issuer.token()
    status, said = _settle_by(settler, client, key, out, resource, token)
    assert status == 200
    assert said in ("expired", "deleted_late_object", "swept")
    stored = record(db, out["id"])
    assert stored["state"] == "expired"
    assert "media" not in stored
    assert gcs.bucket(BUCKET).get_blob(name) is None
    assert requests.get(out["source_url"], timeout=10).status_code == 404
    assert gcs.bucket(STAGING_BUCKET).get_blob(name) is None  # nothing keeps them
    got = client.get(f"/v1/uploads/{out['id']}", headers=bearer(key)).get_json()
    assert got["status"] == "expired"
    assert got["completed_at"] is None


def test_a_late_event_finishes_undoing_a_placement_its_settler_left_behind(client, db, gcs, make_key, oidc_issuer):
    """An instance placed the bytes, lost its write to a cancel, and died before undoing it:
    the storage event (its redelivery) takes the placement away."""
    key, _ = make_key()
    data = padded_mp4(3000, secrets.randbits(64))
    out = create(client, key, {"content_type": "video/mp4"})
    put_bytes(out["upload_url"], data)
    name = object_name(out)
    resource = resource_of(gcs, name)
    gcs_sessions.place(gcs, STAGING_BUCKET, BUCKET, name, int(resource["generation"]), "video/mp4")
    lifecycle.transition(db, lifecycle.load_by_id(db, out["id"]), lifecycle.Settlement.cancel())
    assert requests.get(out["source_url"], timeout=10).status_code == 200  # what the dead instance left
    resp = push(client, envelope(resource), oidc_issuer.events_token())
    assert resp.status_code == 200
    assert resp.get_json() == {"outcome": "deleted_late_object"}
    assert gcs.bucket(BUCKET).get_blob(name) is None
    assert requests.get(out["source_url"], timeout=10).status_code == 404
    assert record(db, out["id"])["state"] == "cancelled"


def test_the_preconditions_proxy_keeps_what_fake_gcs_server_ignores(backends):
    """dev/gcs_preconditions.py (make chaos runs the functions behind it): a rewrite onto an existing object
    with ifGenerationMatch=0 and a delete of another generation are 412, as on GCS; the rest passes."""
    from google.api_core import exceptions as gexc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from dev.gcs_preconditions import Preconditions

    proxy = Preconditions(backends["storage"].url)
    try:
        client = storage.Client(
            project="p", credentials=AnonymousCredentials(), client_options={"api_endpoint": proxy.url}
        )
        name = f"uploads/ws_proxy/{secrets.token_hex(16)}.mp4"
        client.bucket(STAGING_BUCKET).blob(name).upload_from_string(b"bytes", content_type="video/mp4")
        source = client.bucket(STAGING_BUCKET).get_blob(name)
        first = client.bucket(BUCKET).blob(name)
        first.rewrite(source, if_generation_match=0)
        with pytest.raises(gexc.PreconditionFailed):
            client.bucket(BUCKET).blob(name).rewrite(source, if_generation_match=0)
        with pytest.raises(gexc.PreconditionFailed):
            client.bucket(BUCKET).blob(name).delete(if_generation_match=first.generation + 1)
        assert client.bucket(BUCKET).get_blob(name).generation == first.generation  # not overwritten
        client.bucket(BUCKET).blob(name).delete(if_generation_match=first.generation)
        assert client.bucket(BUCKET).get_blob(name) is None
    finally:
        proxy.stop()
