"""Webhooks end to end: a state change, the Pub/Sub emulator, relays standing
in for the push subscriptions, the served function, and receivers over HTTP
that verify every signature with `standardwebhooks`, as customers do.

The event path's relay for the webhooks topic redelivers after 1 s, then 2 s,
and dead-letters after WEBHOOK_MAX_ATTEMPTS (conftest.py); production's
subscription backs off 10 s to 600 s for 100 attempts (terraform/webhooks.tf).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests
from google.cloud import firestore
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from dev.oidc_issuer import WEBHOOKS_AUDIENCE
from dev.receiver import Receiver
from lib.uploads import lifecycle, sweep
from lib.webhooks import attempts, endpoints, fanout, messages, pushes, sending
from tests.conftest import BUCKET, ROOT, STAGING_BUCKET, WEBHOOK_MAX_ATTEMPTS
from tests.helpers import SESSION_WEBHOOK_SECRETS, padded_mp4, schema_errors
from tests.uploads.test_events import wait_for
from tests.uploads.test_lifecycle import CLIP, VIDEO, backdate, bearer, put_bytes, record


@pytest.fixture
def receivers():
    started: list[Receiver] = []

    def start(*script) -> Receiver:
        receiver = Receiver()
        receiver.script.extend(script)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


@pytest.fixture
def endpoint(db):
    """Register `receiver` as an endpoint of `workspace` (its secret given to the receiver)."""

    def add(receiver: Receiver, workspace: str, mode: str = "live") -> endpoints.Endpoint:
        created = endpoints.create_endpoint(db, workspace, mode, receiver.url, True, datetime.now(UTC))
        receiver.secrets.append(created.secret)
        SESSION_WEBHOOK_SECRETS.add(created.secret)
        return created

    return add


def upload(event_path, key: str, data: bytes | None = None) -> dict:
    """Create an upload on the event path's function; PUT `data` to it if given."""
    resp = event_path["function"].post(json=VIDEO, headers=bearer(key))
    assert resp.status_code == 201, resp.text
    out = resp.json()
    if data is not None:
        put_bytes(out["upload_url"], data)
    return out


def get(event_path, key: str, upload_id: str) -> dict:
    served = event_path["function"]
    return served.session.get(f"{served.url}/v1/uploads/{upload_id}", headers=bearer(key), timeout=30).json()


def deliveries(db, workspace: str, endpoint_id: str | None = None) -> list[dict]:
    rows = attempts.recent_deliveries(db, workspace, 100)
    return [row for row in rows if endpoint_id is None or row["endpoint_id"] == endpoint_id]


def test_a_completed_upload_is_pushed_signed_with_the_upload_as_get_returns_it(
    event_path, make_key, receivers, endpoint, db, openapi_doc
):
    key, workspace = make_key()
    receiver = receivers()
    hook = endpoint(receiver, workspace)
    data = padded_mp4(4096, secrets.randbits(64))
    out = upload(event_path, key, data)
    [got] = receiver.wait_for(1)
    assert got.verified
    event = Webhook(hook.secret).verify(got.body, got.headers)  # as a customer verifies it
    assert event["type"] == "upload.completed"
    assert event["data"] == get(event_path, key, out["id"])
    assert event["data"]["status"] == "completed"
    assert event["data"]["size_bytes"] == len(data)
    assert event["data"]["media"] == {"duration_seconds": 1.0, "width": 64, "height": 48, "codecs": ["h264"]}
    assert set(event) == {"type", "timestamp", "data"}
    assert schema_errors(openapi_doc, "#/components/schemas/UploadEvent", event) == []
    parameters = openapi_doc["webhooks"]["uploadEvent"]["post"]["parameters"]
    documented = {p["name"]: p["schema"]["pattern"] for p in parameters}
    for name, pattern in documented.items():
        assert re.fullmatch(pattern, got.headers[name]), name
    assert got.headers["content-type"] == "application/json"
    assert got.webhook_id == fanout.event_id(out["id"], "upload.completed")
    assert abs(int(got.headers["webhook-timestamp"]) - datetime.now(UTC).timestamp()) < 60
    assert got.headers["webhook-signature"].startswith("v1,")
    assert " " not in got.headers["webhook-signature"]
    # Recorded: one attempt, 200; the owed mark cleared once fanned out.
    rows = wait_for(lambda: deliveries(db, workspace), what="the delivery record")
    assert [(r["event_type"], r["status"], r["error"], r["attempt"]) for r in rows] == [
        ("upload.completed", 200, None, 1)
    ]
    assert lifecycle.OWED_FIELD not in record(db, out["id"])


def test_a_rejected_upload_is_pushed_with_its_rejection_and_its_bytes_are_gone(
    event_path, make_key, receivers, endpoint, openapi_doc
):
    """A PUT of other bytes than declared: the storage event rejects it, and the workspace is told."""
    key, workspace = make_key()
    receiver = receivers()
    endpoint(receiver, workspace)
    resp = event_path["function"].post(json={**VIDEO, "size_bytes": 4096}, headers=bearer(key))
    assert resp.status_code == 201, resp.text
    out = resp.json()
    put_bytes(out["upload_url"], padded_mp4(1024 * 3, secrets.randbits(64)))
    [got] = receiver.wait_for(1)
    assert got.verified
    assert got.event["type"] == "upload.rejected"
    assert got.webhook_id == fanout.event_id(out["id"], "upload.rejected")
    data = got.event["data"]
    assert data == get(event_path, key, out["id"])
    assert data["status"] == "rejected"
    assert data["size_bytes"] == 4096
    assert data["completed_at"] is None
    assert data["rejection"]["code"] == "size_mismatch"
    assert "3072 bytes landed" in data["rejection"]["message"]
    assert schema_errors(openapi_doc, "#/components/schemas/UploadEvent", got.event) == []
    assert requests.get(out["source_url"], timeout=30).status_code == 404  # never served


def test_cancelled_and_expired_uploads_are_pushed_whoever_settles_them(
    event_path, make_key, receivers, endpoint, db, oidc_issuer
):
    key, workspace = make_key()
    receiver = receivers()
    endpoint(receiver, workspace)
    served = event_path["function"]
    cancelled = upload(event_path, key)
    assert served.post(f"/v1/uploads/{cancelled['id']}/cancel", headers=bearer(key)).json()["status"] == "cancelled"
    by_get, by_sweep = upload(event_path, key), upload(event_path, key)
    backdate(db, by_get["id"])
    backdate(db, by_sweep["id"])
    assert get(event_path, key, by_get["id"])["status"] == "expired"
    sweep = served.post("/internal/sweep", headers={"Authorization": f"Bearer {oidc_issuer.token()}"})
    assert sweep.status_code == 200, sweep.text
    got = receiver.wait_for(3)
    assert all(item.verified for item in got)
    assert sorted((item.event["data"]["id"], item.event["type"]) for item in got) == sorted(
        [(cancelled["id"], "upload.cancelled"), (by_get["id"], "upload.expired"), (by_sweep["id"], "upload.expired")]
    )


def test_a_failing_receiver_gets_the_same_webhook_id_until_it_answers_2xx(
    event_path, make_key, receivers, endpoint, db
):
    key, workspace = make_key()
    receiver = receivers(500, 500, 200)
    hook = endpoint(receiver, workspace)
    out = upload(event_path, key, CLIP)
    got = receiver.wait_for(3)
    assert [item.answered for item in got] == [500, 500, 200]
    assert {item.webhook_id for item in got} == {fanout.event_id(out["id"], "upload.completed")}
    assert all(item.verified for item in got)
    assert len({item.body for item in got}) == 1
    rows = wait_for(lambda: len(r := deliveries(db, workspace, hook.id)) == 3 and r, what="three attempts")
    assert [(r["attempt"], r["status"]) for r in reversed(rows)] == [(1, 500), (2, 500), (3, 200)]


def test_a_receiver_that_hangs_is_cut_off_at_10_s_and_retried(event_path, make_key, receivers, endpoint, db):
    key, workspace = make_key()
    receiver = receivers(("hang", 30), 200)
    hook = endpoint(receiver, workspace)
    upload(event_path, key, CLIP)
    first, second = receiver.wait_for(2, timeout=45)
    assert first.answered is None
    assert second.answered == 200
    assert first.webhook_id == second.webhook_id
    rows = wait_for(lambda: len(r := deliveries(db, workspace, hook.id)) == 2 and r, what="two attempts")
    timed_out, delivered = rows[1], rows[0]
    assert timed_out["error"] == "timeout"
    assert timed_out["status"] is None
    assert 9_500 <= timed_out["latency_ms"] <= 12_000, timed_out
    assert delivered["status"] == 200
    assert second.at - first.at >= 10


def test_one_failing_endpoint_causes_no_repeats_at_another(event_path, make_key, receivers, endpoint, db):
    key, workspace = make_key()
    failing, healthy = receivers(500, 500), receivers()
    endpoint(failing, workspace)
    endpoint(healthy, workspace)
    upload(event_path, key, CLIP)
    assert len(failing.wait_for(3)) == 3  # 500, 500, then 200
    assert len(healthy.received) == 1
    assert healthy.received[0].verified


def test_a_removed_endpoint_gets_nothing_more(event_path, make_key, receivers, endpoint, db):
    """Nothing more once instances' cached copy of it is out of date (ENDPOINT_CACHE_SECONDS):
    its queued retries are dropped, and new events are not fanned out to it."""
    key, workspace = make_key()
    removed, kept = receivers(*([500] * 10)), receivers()
    gone = endpoint(removed, workspace)
    endpoint(kept, workspace)
    upload(event_path, key, CLIP)
    assert len(removed.wait_for(1)) == 1  # its first attempt failed; a retry is queued
    out = subprocess.run(
        [sys.executable, "-m", "lib.admin", "remove-webhook", gone.id],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    removed_at = time.monotonic()
    served = event_path["deliveries"]
    # A queued retry comes up, finds the endpoint gone and is acknowledged without a request.
    wait_for(
        lambda: [
            line
            for line in served.log_lines()
            if line.get("endpoint_id") == gone.id and line.get("outcome") == "endpoint_removed"
        ],
        what="the retry for the removed endpoint",
    )
    before = len(removed.received)
    assert all(item.at <= removed_at + endpoints.ENDPOINT_CACHE_SECONDS + 1 for item in removed.received)
    second = upload(event_path, key, CLIP)
    kept.wait_for(2)
    assert {item.event["data"]["id"] for item in kept.received} >= {second["id"]}
    assert len(removed.received) == before


def test_rotation_signs_with_both_secrets_then_only_the_new_one(event_path, make_key, receivers, endpoint, db):
    key, workspace = make_key()
    receiver = receivers()
    hook = endpoint(receiver, workspace)
    out = subprocess.run(
        [sys.executable, "-m", "lib.admin", "rotate-webhook-secret", hook.id, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    rotated = json.loads(out.stdout)
    SESSION_WEBHOOK_SECRETS.add(rotated["secret"])
    assert rotated["secret"] != hook.secret
    assert rotated["id"] == hook.id
    until = datetime.fromisoformat(rotated["previous_secret_expires_at"].replace("Z", "+00:00"))
    assert timedelta(hours=23, minutes=59) < until - datetime.now(UTC) <= timedelta(hours=24)

    upload(event_path, key, CLIP)
    [during] = receiver.wait_for(1)
    signatures = during.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    for secret in (hook.secret, rotated["secret"]):  # each secret alone verifies it
        Webhook(secret).verify(during.body, during.headers)

    # The overlap is over (as 24 hours later): only the new secret signs, once the
    # instance's cached copy of the endpoint is out of date (a documented TTL, waited out).
    endpoints.endpoint_ref(db, hook.id).update({"previous_secret_expires_at": datetime.now(UTC)})
    time.sleep(endpoints.ENDPOINT_CACHE_SECONDS + 0.5)
    upload(event_path, key, CLIP)
    after = receiver.wait_for(2)[1]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    Webhook(rotated["secret"]).verify(after.body, after.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(hook.secret).verify(after.body, after.headers)


def test_test_and_live_events_stay_apart(event_path, make_key, receivers, endpoint):
    live_key, workspace = make_key()
    test_key, _ = make_key(workspace, mode="test")
    live, test = receivers(), receivers()
    endpoint(live, workspace, "live")
    endpoint(test, workspace, "test")
    live_upload = upload(event_path, live_key, b"live")
    test_upload = upload(event_path, test_key, b"test")
    live.wait_for(1)
    test.wait_for(1)
    # Each event fans out once, after both are in; nothing crossed over.
    wait_for(
        lambda: all(lifecycle.OWED_FIELD not in record_of(event_path, u["id"]) for u in (live_upload, test_upload)),
        what="both fan-outs",
    )
    assert [item.event["data"]["id"] for item in live.received] == [live_upload["id"]]
    assert [item.event["data"]["id"] for item in test.received] == [test_upload["id"]]


def record_of(event_path, upload_id: str) -> dict:
    return record(firestore.Client(project="framelane-test"), upload_id)


def test_after_the_last_attempt_a_delivery_is_dead_lettered_and_shown(event_path, make_key, receivers, endpoint, db):
    key, workspace = make_key()
    receiver = receivers(*([503] * WEBHOOK_MAX_ATTEMPTS))
    hook = endpoint(receiver, workspace)
    upload(event_path, key, CLIP)
    assert len(receiver.wait_for(WEBHOOK_MAX_ATTEMPTS, timeout=60)) == WEBHOOK_MAX_ATTEMPTS
    rows = wait_for(
        lambda: [r for r in deliveries(db, workspace, hook.id) if r["dead_lettered"]],
        timeout=30,
        what="the dead-letter record",
    )
    assert rows[0]["error"] == "dead_lettered"
    assert rows[0]["event_type"] == "upload.completed"
    out = subprocess.run(
        [sys.executable, "-m", "lib.admin", "webhook-deliveries", "--workspace", workspace],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    assert "dead-lettered" in out.stdout
    assert "503" in out.stdout
    assert hook.secret not in out.stdout + out.stderr
    # No attempt after the dead letter.
    assert len(receiver.received) == WEBHOOK_MAX_ATTEMPTS


def test_an_event_whose_publish_was_lost_is_published_again_by_the_sweep(
    event_path, make_key, receivers, endpoint, db, oidc_issuer
):
    """As if the instance died between storing the state change and publishing its event."""
    key, workspace = make_key()
    out = upload(event_path, key)
    receiver = receivers()
    endpoint(receiver, workspace)
    past = datetime.now(UTC) - sweep.OWED_GRACE - timedelta(minutes=1)
    # The state change, stored with its owed mark, and no event published.
    db.collection(lifecycle.COLLECTION).document(out["id"]).update(
        {"state": "cancelled", "settled_at": past, lifecycle.OWED_FIELD: past, "session_url": firestore.DELETE_FIELD}
    )
    served = event_path["function"]
    resp = served.post("/internal/sweep", headers={"Authorization": f"Bearer {oidc_issuer.token()}"})
    assert resp.status_code == 200
    [got] = receiver.wait_for(1)
    assert got.verified
    assert got.event["type"] == "upload.cancelled"
    assert got.event["data"]["id"] == out["id"]
    wait_for(lambda: lifecycle.OWED_FIELD not in record(db, out["id"]), what="the owed mark cleared")


def test_a_redelivered_storage_event_publishes_the_event_its_first_attempt_owed(
    event_path, make_key, receivers, endpoint, db
):
    """As if the instance that settled the upload died between its write and its publish: the
    storage event's redelivery (here: bytes landing after the cancel) publishes it, with no sweep."""
    key, workspace = make_key()
    out = upload(event_path, key)
    receiver = receivers()
    endpoint(receiver, workspace)
    now = datetime.now(UTC)
    db.collection(lifecycle.COLLECTION).document(out["id"]).update(
        {"state": "cancelled", "settled_at": now, lifecycle.OWED_FIELD: now, "session_url": firestore.DELETE_FIELD}
    )
    name = out["source_url"].split(f"/{BUCKET}/", 1)[1]
    storage = event_path["storage"].url
    resp = requests.post(
        f"{storage}/upload/storage/v1/b/{STAGING_BUCKET}/o",
        params={"uploadType": "media", "name": name},
        data=CLIP,
        headers={"Content-Type": "video/mp4"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    [got] = receiver.wait_for(1)
    assert got.verified
    assert got.event["type"] == "upload.cancelled"
    assert got.event["data"]["id"] == out["id"]
    assert got.webhook_id == fanout.event_id(out["id"], "upload.cancelled")
    wait_for(lambda: lifecycle.OWED_FIELD not in record(db, out["id"]), what="the owed mark cleared")


def test_a_url_that_became_private_is_refused_at_delivery(event_path, make_key, receivers, db):
    """Delivery checks the rules again: here the stored URL is loopback and private targets are off."""
    _key, workspace = make_key()
    receiver = receivers()
    url = receiver.url.replace("http://", "https://")
    hook = endpoints.create_endpoint(db, workspace, "live", url, True, datetime.now(UTC))
    SESSION_WEBHOOK_SECRETS.add(hook.secret)
    delivery = messages.Delivery(hook.id, "evt_x", "upload.completed", "upl_" + "0" * 32, b"{}", 1)
    outcome = sending.deliver(db, delivery, allow_private=False, now=datetime.now(UTC))
    assert not outcome.delivered
    assert "loopback" in outcome.refused
    assert receiver.received == []
    [row] = deliveries(db, workspace, hook.id)
    assert row["error"] == "refused_target"
    assert row["status"] is None


# --- the routes' own checks (in-process) ---------------------------------------------------------


def webhook_push(client, route: str, body, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(route, data=data, headers=headers, content_type="application/json")


@contextlib.contextmanager
def share_in_flight(endpoint_id: str) -> Iterator[None]:
    """This instance holds `endpoint_id`'s whole share of deliveries in flight while inside."""
    with contextlib.ExitStack() as held:
        assert all(
            held.enter_context(pushes.in_flight().slot(endpoint_id)) for _ in range(pushes.MAX_IN_FLIGHT_PER_ENDPOINT)
        )
        yield


def delivery_envelope(**attributes) -> dict:
    import base64

    base = {
        "kind": "delivery",
        "endpoint_id": "we_" + "0" * 32,
        "event_id": "evt_" + "1" * 32,
        "event_type": "upload.completed",
        "upload_id": "upl_" + "2" * 32,
    }
    return {
        "message": {"attributes": {**base, **attributes}, "data": base64.b64encode(b"{}").decode(), "messageId": "1"},
        "subscription": "s",
        "deliveryAttempt": 1,
    }


ROUTES = ["/internal/webhooks", "/internal/webhook-dead-letters"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("token", "status", "code"),
    [
        pytest.param(None, 401, "invalid_token", id="no-token"),
        pytest.param("events", 403, "forbidden", id="the-storage-events-identity"),
        pytest.param("sweep", 401, "invalid_token", id="the-sweeps-audience"),
    ],
)
def test_only_the_webhook_subscriptions_token_may_push(deliveries_client, oidc_issuer, route, token, status, code):
    tokens = {None: None, "events": oidc_issuer.events_token(aud=WEBHOOKS_AUDIENCE), "sweep": oidc_issuer.token()}
    resp = webhook_push(deliveries_client, route, delivery_envelope(), tokens[token])
    assert (resp.status_code, resp.get_json()["error"]["code"]) == (status, code)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param({"no": "message"}, id="no-message"),
        pytest.param({"message": {"attributes": {"kind": "other", "upload_id": "u"}}}, id="unknown-kind"),
        pytest.param({"message": {"attributes": {"kind": "delivery"}}}, id="no-upload-id"),
        pytest.param(
            {"message": {"attributes": {"kind": "delivery", "upload_id": "u"}, "data": "e30="}},
            id="delivery-without-endpoint",
        ),
        pytest.param(
            {
                "message": {
                    "attributes": {
                        "kind": "delivery",
                        "upload_id": "u",
                        "endpoint_id": "we_x",
                        "event_id": "e",
                        "event_type": "t",
                    },
                    "data": "!!",
                }
            },
            id="bad-base64",
        ),
        pytest.param({"message": {"attributes": {"kind": 1, "upload_id": "u"}}}, id="attribute-not-string"),
    ],
)
def test_a_body_that_is_not_a_webhooks_message_is_400(deliveries_client, oidc_issuer, route, body, openapi_doc):
    resp = webhook_push(deliveries_client, route, body, oidc_issuer.webhooks_token())
    assert resp.status_code == 400
    error = resp.get_json()["error"]
    assert error["code"] == "invalid_event"
    assert "webhook" in error["message"]


@pytest.mark.parametrize(
    ("route", "outcome"),
    [("/internal/webhooks", "endpoint_removed"), ("/internal/webhook-dead-letters", "dead_letter_recorded")],
)
@pytest.mark.parametrize("endpoint_id", ["we_a/b", "we_a//b", "we_" + "0" * 31 + "/", "we_" + "0" * 64])
def test_a_delivery_naming_no_endpoint_we_make_is_acknowledged_not_a_5xx(
    deliveries_client, oidc_issuer, route, outcome, endpoint_id
):
    """An id that is not one we make is never read as a Firestore path (`we_a/b` was a 500)."""
    resp = webhook_push(
        deliveries_client, route, delivery_envelope(endpoint_id=endpoint_id), oidc_issuer.webhooks_token()
    )
    assert resp.status_code == 200
    assert resp.get_json() == {"outcome": outcome}


def dead_letter_envelope(data: bytes) -> dict:
    """A dead-lettered message carrying only what Pub/Sub adds (as if ours were not kept)."""
    import base64

    added = {
        "CloudPubSubDeadLetterSourceSubscription": "framelane-uploads-webhooks",
        "CloudPubSubDeadLetterSourceDeliveryCount": "100",
    }
    return {
        "message": {"attributes": added, "data": base64.b64encode(data).decode(), "messageId": "7"},
        "subscription": "framelane-uploads-webhooks-dead",
    }


def test_a_dead_letter_is_recorded_from_its_data_alone_whatever_attributes_survive(
    event_path, make_key, deliveries_client, oidc_issuer, db
):
    """Pub/Sub's page does not promise our attributes outlive dead-lettering: nothing rests on them."""
    key, workspace = make_key()
    out = upload(event_path, key, CLIP)
    wait_for(lambda: get(event_path, key, out["id"])["status"] == "completed", what="the upload completed")
    event_type, body = fanout.event_body(lifecycle.load_by_id(db, out["id"]), "https://cdn.example")
    # A delivery: its data is the event body, which names the upload and the event.
    resp = webhook_push(
        deliveries_client, "/internal/webhook-dead-letters", dead_letter_envelope(body), oidc_issuer.webhooks_token()
    )
    assert resp.status_code == 200
    assert resp.get_json() == {"outcome": "dead_letter_recorded"}
    [row] = [r for r in deliveries(db, workspace) if r["dead_lettered"]]
    assert (row["upload_id"], row["event_type"], row["event_id"], row["mode"]) == (
        out["id"],
        event_type,
        fanout.event_id(out["id"], event_type),
        "live",
    )
    assert row["endpoint_id"] is None
    assert row["error"] == "dead_lettered"
    # An event message: its data is the upload's id; the owed mark (kept) brings it back.
    resp = webhook_push(
        deliveries_client,
        "/internal/webhook-dead-letters",
        dead_letter_envelope(out["id"].encode()),
        oidc_issuer.webhooks_token(),
    )
    assert resp.status_code == 200
    assert resp.get_json() == {"outcome": "event_dead_lettered"}
    # Neither: refused, as any message that is not ours.
    for data in (
        b"upl_nope",
        json.dumps({"type": "upload.completed", "data": {"id": "x"}}).encode(),
        b"{}",
        b"[" * 20_000,
        b"\xff\xfe",
    ):
        resp = webhook_push(
            deliveries_client,
            "/internal/webhook-dead-letters",
            dead_letter_envelope(data),
            oidc_issuer.webhooks_token(),
        )
        assert resp.status_code == 400, data
        assert resp.get_json()["error"]["code"] == "invalid_event", data
    # On the live route the attributes stay required: a message without them is not ours.
    resp = webhook_push(
        deliveries_client, "/internal/webhooks", dead_letter_envelope(body), oidc_issuer.webhooks_token()
    )
    assert resp.status_code == 400


def test_event_messages_carry_their_upload_id_in_their_data():
    published = []

    class Recorder:
        def publish(self, topic, messages):
            published.extend(messages)

    record = lifecycle.Record("upl_" + "3" * 32, {}, None)
    fanout.Announcer(Recorder(), "t").publish([record])
    assert published == [(record.id.encode(), {"kind": fanout.KIND_EVENT, "upload_id": record.id})]


def test_past_its_share_of_deliveries_in_flight_an_endpoint_waits_its_turn(
    deliveries_client, oidc_issuer, openapi_doc, capsys
):
    """With MAX_IN_FLIGHT_PER_ENDPOINT deliveries to one endpoint in flight on an instance, the
    next is deferred (429: Pub/Sub retries it later); another endpoint's goes at once. The deferral's
    log line names its event and endpoint, as a delivery's does (issue 33: it named neither)."""
    busy, other = "we_" + "a" * 32, "we_" + "b" * 32
    with share_in_flight(busy):
        capsys.readouterr()
        envelope = delivery_envelope(endpoint_id=busy)
        deferred = webhook_push(deliveries_client, "/internal/webhooks", envelope, oidc_issuer.webhooks_token())
        assert deferred.status_code == 429
        assert deferred.get_json()["error"]["code"] == "delivery_deferred"
        assert schema_errors(openapi_doc, "#/components/schemas/Error", deferred.get_json()) == []
        [line] = [
            json.loads(raw)
            for raw in capsys.readouterr().out.splitlines()
            if raw.startswith("{") and '"delivery_deferred"' in raw
        ]
        sent = envelope["message"]["attributes"]
        assert line["endpoint_id"] == busy
        assert line["event_id"] == sent["event_id"]
        assert line["outcome"] == "deferred"
        assert line["attempt"] == 1
        assert "in flight" in line["reason"]
        elsewhere = webhook_push(
            deliveries_client, "/internal/webhooks", delivery_envelope(endpoint_id=other), oidc_issuer.webhooks_token()
        )
        assert elsewhere.status_code == 200
    # The slots are given back: its next delivery goes (its endpoint is gone here, so it is dropped).
    again = webhook_push(
        deliveries_client, "/internal/webhooks", delivery_envelope(endpoint_id=busy), oidc_issuer.webhooks_token()
    )
    assert again.status_code == 200
    assert again.get_json() == {"outcome": "endpoint_removed"}


def test_a_delivery_for_an_endpoint_that_is_gone_is_acknowledged_without_a_request(deliveries_client, oidc_issuer):
    resp = webhook_push(deliveries_client, "/internal/webhooks", delivery_envelope(), oidc_issuer.webhooks_token())
    assert resp.status_code == 200
    assert resp.get_json() == {"outcome": "endpoint_removed"}


def test_unconfigured_the_webhook_routes_refuse_every_push(serve, oidc_issuer):
    served = serve(drop=("WEBHOOKS_AUDIENCE", "WEBHOOKS_SERVICE_ACCOUNT"), target="deliveries")
    for route in ROUTES:
        resp = served.post(
            route, json=delivery_envelope(), headers={"Authorization": f"Bearer {oidc_issuer.webhooks_token()}"}
        )
        assert (resp.status_code, resp.json()["error"]["code"]) == (403, "forbidden")


def test_with_its_own_url_as_audience_a_push_must_carry_the_url_it_reached(serve, oidc_issuer):
    """WEBHOOKS_AUDIENCE=own-url (terraform: the deliveries function behind Cloud Run's IAM check, its
    pushes' audience its run.app URL): a token for the URL the push reached passes; one for another
    URL, or for the fixed audience, does not."""
    served = serve(target="deliveries", WEBHOOKS_AUDIENCE="own-url")
    own = served.url.replace("http://", "https://", 1)
    for audience, passes in (
        (own, True),
        (own + "/internal/webhooks", False),
        ("https://other-service.a.run.app", False),
        (WEBHOOKS_AUDIENCE, False),
    ):
        for route in ROUTES:
            resp = served.post(
                route,
                json=delivery_envelope(),
                headers={"Authorization": f"Bearer {oidc_issuer.webhooks_token(aud=audience)}"},
            )
            if passes:  # past the token: the delivery's endpoint is unknown, so it is acknowledged
                assert resp.status_code == 200, (route, resp.text)
            else:
                assert (resp.status_code, resp.json()["error"]["code"]) == (401, "invalid_token"), (audience, route)


@pytest.mark.parametrize("route", ROUTES)
def test_the_api_function_does_not_serve_the_webhook_routes(client, oidc_issuer, route):
    """Pushes go to the deliveries function only: on the API's, a slow receiver could hold its threads."""
    resp = webhook_push(client, route, delivery_envelope(), oidc_issuer.webhooks_token())
    assert resp.status_code == 404
    assert resp.get_json()["error"]["code"] == "not_found"


def test_the_deliveries_function_serves_nothing_but_the_webhook_routes_and_health(deliveries_client, key):
    resp = deliveries_client.post(
        "/v1/uploads", json={"content_type": "video/mp4"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert resp.status_code == 404
    assert resp.get_json()["error"]["code"] == "not_found"
    for route in ("/internal/sweep", "/internal/storage-events"):
        assert deliveries_client.post(route).status_code == 404
    assert deliveries_client.get("/health").get_json() == {"status": "ok"}


def test_with_webhooks_off_a_state_change_marks_nothing_owed(client, make_key, db):
    """The in-process app has no WEBHOOKS_TOPIC: no owed mark, nothing for the sweep to republish."""
    key, _ = make_key()
    out = client.post("/v1/uploads", json=VIDEO, headers=bearer(key)).get_json()
    assert client.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key)).status_code == 200
    assert lifecycle.OWED_FIELD not in record(db, out["id"])


@pytest.mark.parametrize("case", ["topic-missing", "pubsub-down"])
def test_a_failed_publish_never_fails_the_request_and_leaves_the_event_owed(event_path, serve, make_key, db, case):
    from dev import emulators

    host = event_path["pubsub"].extra["host"] if case == "topic-missing" else f"127.0.0.1:{emulators.free_port()}"
    served = serve(PUBSUB_EMULATOR_HOST=host, WEBHOOKS_TOPIC="no-such-topic" if case == "topic-missing" else "webhooks")
    key, _ = make_key()
    out = served.post(json=VIDEO, headers=bearer(key)).json()
    started = time.monotonic()
    resp = served.post(f"/v1/uploads/{out['id']}/cancel", headers=bearer(key))
    assert resp.status_code == 200
    assert resp.json()["status"] == "cancelled"
    assert time.monotonic() - started < 15  # the publish is bounded
    stored = record(db, out["id"])
    assert stored["state"] == "cancelled"
    assert lifecycle.OWED_FIELD in stored
    [line] = [line for line in served.log_lines() if line.get("upload_id") == out["id"] and "cancel" in line["message"]]
    assert line["webhook_owed"] in ("NotFound", "ServiceUnavailable", "RetryError", "DeadlineExceeded", "TimeoutError")


def test_an_endpoint_failing_every_delivery_for_5_days_is_disabled_then_skipped_until_enabled(db, make_key):
    """Svix's rule: every attempt failed for 5 days (from the first failure after the last
    success) disables the endpoint; it then gets nothing, says so in list-webhooks, and
    enable-webhook brings it back."""

    _, workspace = make_key()
    hook = endpoints.create_endpoint(db, workspace, "live", "http://127.0.0.1:9/refused", True, datetime.now(UTC))
    SESSION_WEBHOOK_SECRETS.add(hook.secret)
    delivery = messages.Delivery(hook.id, "evt_" + "1" * 32, "upload.completed", "upl_" + "2" * 32, b"{}", 1)
    start = datetime.now(UTC)
    first = sending.deliver(db, delivery, allow_private=True, now=start)
    assert first.label == "failed"
    assert endpoints.get_endpoint(db, hook.id).failing_since == start
    almost = sending.deliver(db, delivery, allow_private=True, now=start + endpoints.DISABLE_AFTER - timedelta(1))
    assert almost.label == "failed"
    assert not almost.disabled
    assert endpoints.get_endpoint(db, hook.id).disabled_at is None
    last = sending.deliver(db, delivery, allow_private=True, now=start + endpoints.DISABLE_AFTER)
    assert last.label == "failed"
    assert last.disabled
    stored = endpoints.get_endpoint(db, hook.id)
    assert stored.disabled_at == start + endpoints.DISABLE_AFTER
    assert stored.public()["status"] == "disabled"
    skipped = sending.deliver(db, delivery, allow_private=True, now=start + endpoints.DISABLE_AFTER + timedelta(1))
    assert skipped.label == "endpoint_disabled"
    assert skipped.result is None
    listed = subprocess.run(
        [sys.executable, "-m", "lib.admin", "list-webhooks", "--workspace", workspace, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    [row] = json.loads(listed.stdout)
    assert row["status"] == "disabled"
    assert row["disabled_at"]
    assert row["failing_since"]
    enabled = subprocess.run(
        [sys.executable, "-m", "lib.admin", "enable-webhook", hook.id],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert enabled.returncode == 0, enabled.stderr
    again = endpoints.get_endpoint(db, hook.id)
    assert again.disabled_at is None
    assert again.failing_since is None
    assert again.public()["status"] == "enabled"


def test_a_success_resets_the_failure_clock(db, make_key):
    from tests.webhooks.test_targets import Server, answer

    _, workspace = make_key()
    ok = Server(answer(204))
    try:
        hook = endpoints.create_endpoint(
            db, workspace, "live", f"http://127.0.0.1:{ok.port}/in", True, datetime.now(UTC)
        )
        SESSION_WEBHOOK_SECRETS.add(hook.secret)
        endpoints.endpoint_ref(db, hook.id).update({"failing_since": datetime.now(UTC)})
        delivery = messages.Delivery(hook.id, "evt_" + "3" * 32, "upload.completed", "upl_" + "4" * 32, b"{}", 1)
        assert sending.deliver(db, delivery, allow_private=True, now=datetime.now(UTC)).delivered
    finally:
        ok.stop()
    assert endpoints.get_endpoint(db, hook.id).failing_since is None
