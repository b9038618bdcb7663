"""What landed against what was declared: an object whose size, crc32c or md5 is not the
declared one, or whose bytes are not the declared media type, is never `completed`, on any path
that settles an upload (storage event, GET, cancel, sweep); it is `rejected`, never served (its
bytes stay in the staging bucket for support until its lifecycle rule deletes them).

fake-gcs-server enforces none of the declared values at the PUT (GCS does), so
here the wrong bytes really land, and it is the service's own check under test.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import pytest
import requests

from lib.uploads import lifecycle, settling
from lib.uploads.gcs_sessions import StoredObject
from tests.conftest import BUCKET, STAGING_BUCKET
from tests.helpers import media, padded_mp4, schema_errors
from tests.uploads.test_events import crc32c, envelope, md5, object_name, push, resource_of
from tests.uploads.test_lifecycle import bearer, create, end_hour_now, put_bytes, record


def declared(data: bytes, **overrides) -> dict:
    """A create body declaring `data`'s size and checksums, but for `overrides`."""
    return {"content_type": "video/mp4", "size_bytes": len(data), "crc32c": crc32c(data), "md5": md5(data), **overrides}


# Each way the bytes can differ from the declaration: (create body, what is PUT, code).
DATA = padded_mp4(3000, secrets.randbits(64))
CLIP = media("clip.mp4")
HTML = b"<!doctype html><title>not a video</title>" + b"<p>page</p>" * 300
MISMATCHES = [
    pytest.param(declared(DATA), DATA[:2048], "size_mismatch", id="short"),
    pytest.param(declared(DATA), DATA + b"extra", "size_mismatch", id="long"),
    pytest.param(declared(DATA, crc32c=crc32c(b"other bytes")), DATA, "checksum_mismatch", id="crc32c"),
    pytest.param(declared(DATA, md5=md5(b"other bytes")), DATA, "checksum_mismatch", id="md5"),
    pytest.param(declared(HTML), HTML, "content_mismatch", id="html-as-mp4"),
    pytest.param(declared(media("image.png")), media("image.png"), "content_mismatch", id="png-as-mp4"),
    pytest.param(declared(media("sound.m4a")), media("sound.m4a"), "content_mismatch", id="audio-only-as-video"),
    pytest.param({"content_type": "video/mp4"}, CLIP[:-200], "unreadable_media", id="index-cut-short"),
]


def assert_rejected(client, db, gcs, key: str, out: dict, code: str, openapi_doc) -> dict:
    """Rejected, as GET shows it (settling it if nobody had) and as stored; never served, its
    bytes kept in the staging bucket (for support, until the bucket's lifecycle rule)."""
    got = client.get(f"/v1/uploads/{out['id']}", headers=bearer(key)).get_json()
    stored = record(db, out["id"])
    assert stored["state"] == "rejected"
    assert stored["rejection_code"] == code
    assert "session_url" not in stored
    assert stored["settled_at"]
    assert gcs.bucket(BUCKET).get_blob(object_name(out)) is None  # source_url can never serve it
    assert requests.get(out["source_url"], timeout=10).status_code == 404
    assert gcs.bucket(STAGING_BUCKET).get_blob(object_name(out)) is not None
    assert got["media"] is None
    assert got["status"] == "rejected"
    assert got["size_bytes"] == stored["size_bytes"]
    assert got["rejection"]["code"] == code
    assert got["rejection"]["message"]
    assert got["completed_at"] is None
    assert got["crc32c"] is None
    assert got["md5"] is None
    assert schema_errors(openapi_doc, "#/components/schemas/Upload", got) == []
    return got


@pytest.mark.parametrize(("body", "sent", "code"), MISMATCHES)
def test_a_storage_event_for_bytes_other_than_the_declared_ones_rejects_the_upload(
    client, db, gcs, make_key, oidc_issuer, openapi_doc, body, sent, code
):
    key, _ = make_key()
    out = create(client, key, body)
    put_bytes(out["upload_url"], sent)
    resource = resource_of(gcs, object_name(out))
    resp = push(client, envelope(resource), oidc_issuer.events_token())
    assert resp.status_code == 200
    assert resp.get_json() == {"outcome": "rejected"}
    got = assert_rejected(client, db, gcs, key, out, code, openapi_doc)
    assert got["size_bytes"] == body.get("size_bytes")  # what the client declared, not what landed
    assert record(db, out["id"])["generation"] == int(resource["generation"])
    # A redelivery changes nothing; a cancel answers the rejection (nothing to cancel, nothing completed).
    again = push(client, envelope(resource), oidc_issuer.events_token())
    assert again.status_code == 200
    assert again.get_json() == {"outcome": "duplicate"}
    cancelled = client.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key))
    assert cancelled.status_code == 200
    assert cancelled.get_json()["status"] == "rejected"


@pytest.mark.parametrize(("body", "sent", "code"), MISMATCHES)
def test_a_get_that_finds_bytes_other_than_the_declared_ones_rejects_the_upload(
    client, db, gcs, make_key, openapi_doc, body, sent, code
):
    key, _ = make_key()
    out = create(client, key, body)
    put_bytes(out["upload_url"], sent)
    assert record(db, out["id"])["state"] == "pending"  # nobody has looked yet
    assert_rejected(client, db, gcs, key, out, code, openapi_doc)


def test_a_cancel_that_finds_wrong_bytes_answers_the_rejection_not_upload_completed(
    client, db, gcs, make_key, openapi_doc
):
    key, _ = make_key()
    out = create(client, key, declared(DATA))
    put_bytes(out["upload_url"], DATA[:1000])
    resp = client.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key))
    assert resp.status_code == 200
    assert resp.get_json()["status"] == "rejected"
    assert resp.get_json()["rejection"]["code"] == "size_mismatch"
    assert_rejected(client, db, gcs, key, out, "size_mismatch", openapi_doc)


def test_the_sweep_rejects_an_expired_upload_whose_bytes_are_not_the_declared_ones(
    client, db, gcs, make_key, oidc_issuer, openapi_doc
):
    key, _ = make_key()
    wrong, right = create(client, key, {"content_type": "video/mp4"}), create(client, key, declared(DATA))
    put_bytes(wrong["upload_url"], HTML)
    put_bytes(right["upload_url"], DATA)
    for out in (wrong, right):
        end_hour_now(db, out["id"])
    resp = client.post("/internal/sweep", headers=bearer(oidc_issuer.token()))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    counts = resp.get_json()
    assert counts["rejected"] >= 1
    assert counts["completed"] >= 1
    assert counts["failed"] == 0
    assert schema_errors(openapi_doc, "#/components/schemas/SweepResult", counts) == []
    assert_rejected(client, db, gcs, key, wrong, "content_mismatch", openapi_doc)
    assert record(db, right["id"])["state"] == "completed"
    assert gcs.bucket(BUCKET).get_blob(object_name(right)) is not None


def test_the_declared_bytes_complete_and_undeclared_values_are_not_checked(client, db, make_key):
    key, _ = make_key()
    exact = create(client, key, declared(DATA))
    put_bytes(exact["upload_url"], DATA)
    bare = create(client, key, {"content_type": "video/mp4"})
    put_bytes(bare["upload_url"], CLIP)
    for out, size in ((exact, len(DATA)), (bare, len(CLIP))):
        got = client.get(f"/v1/uploads/{out['id']}", headers=bearer(key)).get_json()
        assert got["status"] == "completed"
        assert got["size_bytes"] == size
        assert got["rejection"] is None


def test_with_storage_down_a_rejection_is_503_with_nothing_changed_and_its_redelivery_rejects(
    backends, serve, client, db, gcs, make_key, oidc_issuer, openapi_doc
):
    """The bytes are read before the record says anything: a failed read leaves it pending."""
    from dev.emulators import free_port

    key, _ = make_key()
    out = create(client, key, declared(HTML))
    put_bytes(out["upload_url"], HTML)
    body = envelope(resource_of(gcs, object_name(out)))
    down = serve(STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{free_port()}")
    resp = down.post("/internal/storage-events", json=body, headers=bearer(oidc_issuer.events_token()))
    assert resp.status_code == 503, resp.text
    assert record(db, out["id"])["state"] == "pending"
    assert gcs.bucket(STAGING_BUCKET).get_blob(object_name(out)) is not None
    assert push(client, body, oidc_issuer.events_token()).get_json() == {"outcome": "rejected"}
    assert_rejected(client, db, gcs, key, out, "content_mismatch", openapi_doc)


def test_a_content_rejection_names_what_the_bytes_are_and_what_to_do(client, make_key):
    key, _ = make_key()
    cases = (
        (declared(media("image.png")), media("image.png"), "The bytes are image/png, not video/mp4"),
        ({"content_type": "audio/mpeg"}, media("captions.vtt"), "not audio/mpeg"),
    )
    for body, sent, named in cases:
        out = create(client, key, body)
        put_bytes(out["upload_url"], sent)
        resp = client.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key))
        assert resp.status_code == 200
        assert resp.get_json()["status"] == "rejected"
        message = resp.get_json()["rejection"]["message"]
        assert named in message, message
        assert "declares the file's own content type" in message, message


# --- the verdict itself -------------------------------------------------------------------------------


def _object(data: bytes, *, crc: str | None = "", md5_hash: str | None = "") -> StoredObject:
    return StoredObject(
        size=len(data),
        generation=7,
        crc32c=crc32c(data) if crc == "" else crc,
        md5=md5(data) if md5_hash == "" else md5_hash,
        created=datetime.now(UTC),
    )


def _declared(data: bytes, **overrides) -> dict:
    return {"size_bytes": len(data), "declared_crc32c": crc32c(data), "declared_md5": md5(data), **overrides}


@pytest.mark.parametrize(
    ("declaration", "obj", "code"),
    [
        pytest.param(_declared(b"abc"), _object(b"abc"), None, id="all-match"),
        pytest.param({}, _object(b"abc"), None, id="nothing-declared"),
        pytest.param(
            {"size_bytes": None, "declared_crc32c": None, "declared_md5": None}, _object(b"x"), None, id="declared-null"
        ),
        pytest.param(_declared(b"abcd"), _object(b"abc"), "size_mismatch", id="size"),
        pytest.param(_declared(b"abc", declared_crc32c=crc32c(b"abd")), _object(b"abc"), "checksum_mismatch", id="crc"),
        pytest.param(_declared(b"abc", declared_md5=md5(b"abd")), _object(b"abc"), "checksum_mismatch", id="md5"),
        # Declared but not reported by Storage: it cannot be checked, so it is not called completed.
        pytest.param(_declared(b"abc"), _object(b"abc", md5_hash=None), "checksum_mismatch", id="md5-unreported"),
        pytest.param({"size_bytes": 3}, _object(b"abc", crc=None, md5_hash=None), None, id="size-only"),
    ],
)
def test_the_verdict_checks_each_declared_value(declaration, obj, code):
    changes = settling.verdict(declaration, obj).changes()
    if code is None:
        assert changes == lifecycle.Settlement.complete(obj).changes()
    else:
        assert changes["state"] == "rejected"
        assert changes["rejection_code"] == code
        assert changes["generation"] == obj.generation
        assert "size_bytes" not in changes


def test_a_size_rejection_says_what_landed_and_what_was_declared():
    changes = settling.verdict({"size_bytes": 200_000_000}, _object(b"x" * 1024)).changes()
    assert "1024 bytes landed" in changes["rejection_message"]
    assert "200000000" in changes["rejection_message"]
