"""The floor: a bare functions-framework function doing only the work a request
truly needs, served exactly like the endpoint. Anything the endpoint costs
beyond this is our overhead.

  /a  one GCS resumable-session initiation and one Firestore create of the
      same upload record (as POST /v1/uploads without an Idempotency-Key)
  /b  Firestore create of the same idempotency record, the initiation, then
      one commit of the upload record's create with the same conditional
      update (a fresh key)
  /c  one Firestore get (the least a replay needs)
  /d  a storage event's least work: read the pushed JSON and the object
      resource it carries, get the upload's record, read the object's first
      64 KiB (one ranged read: what the service's check reads of a small
      file) and decode each track's first frame (PyAV, in this process: no
      sandbox), place it in the served bucket (the same rewrite,
      if_generation_match=0), write the same completion to the record (the
      fields lib/uploads/settling.py writes are part of the work, the webhook's owed
      mark and the media included), conditioned on the update_time read (a
      conditional update in Firestore needs the read), publish the webhook
      event message (WEBHOOKS_TOPIC), and delete the staging object
  /f  a webhook delivery's least work: read the pushed JSON, decode the body
      it carries, and make the same HTTP POST to the receiver (FLOOR_RECEIVER,
      host:port) as the endpoint does: a new connection, the same headers (a
      signature of the same length, not computed), the status read

Same clients, same call options as lib/ (timeouts, retry budgets, the content
type set on the blob, if_generation_match=0), created once at import.
"""

import base64
import http.client
import io
import json
import os
import secrets
from datetime import UTC, datetime, timedelta

import av
import functions_framework
from google.api_core import retry as gretry
from google.cloud import firestore, pubsub_v1, storage
from google.cloud.storage.retry import DEFAULT_RETRY

_project = os.environ["GOOGLE_CLOUD_PROJECT"]
_bucket = storage.Client(project=_project).bucket(os.environ["UPLOAD_BUCKET"])
_staging = storage.Client(project=_project).bucket(os.environ["STAGING_BUCKET"])
_db = firestore.Client(project=_project)
_replay = _db.collection("floor").document("replay")
_FS_RETRY = gretry.Retry(initial=0.05, maximum=1.0, multiplier=2.0, timeout=4.0)
_publisher = pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=100, max_latency=0.0))
_webhooks = _publisher.topic_path(_project, os.environ.get("WEBHOOKS_TOPIC", "webhooks"))
_GCS_RETRY = DEFAULT_RETRY.with_delay(initial=0.1, maximum=1.0, multiplier=2.0).with_timeout(5.0)


def _decode(data: bytes) -> None:
    """The decoding every check truly needs (issue 31): each track's first frame, in this process, with
    the decoders imported once (the endpoint does it in a fresh sandboxed child per check)."""
    with av.open(io.BytesIO(data)) as clip:
        waiting = {s.index for s in clip.streams if s.type in ("audio", "video")}
        for packet in clip.demux():
            if packet.stream.index in waiting and packet.size and packet.decode():
                waiting.discard(packet.stream.index)
            if not waiting:
                return


def _initiate() -> tuple[str, dict]:
    """A session, and the upload record lib/uploads/lifecycle.py writes for it (the fields are part of the work)."""
    token = secrets.token_hex(16)
    name = f"uploads/floor/{token}.mp4"
    blob = _bucket.blob(name)
    blob.content_type = "video/mp4"
    url = blob.create_resumable_upload_session(
        content_type="video/mp4", if_generation_match=0, timeout=(2.0, 4.0), retry=_GCS_RETRY
    )
    now = datetime.now(UTC).replace(microsecond=0)
    record = {
        "workspace_id": "ws_bench",
        "mode": "live",
        "object_name": name,
        "content_type": "video/mp4",
        "size_bytes": None,
        "created_at": now,
        "expires_at": now + timedelta(hours=1),
        "state": "pending",
        "session_url": url,
        "sweep_shard": int(token[-4:], 16) % 64,
        "declared_crc32c": None,
        "declared_md5": None,
    }
    return url, record


def _upload_ref():
    return _db.collection("floor_uploads").document(f"upl_{secrets.token_hex(16)}")


def _post_to_receiver(message: dict) -> None:
    host, port = os.environ["FLOOR_RECEIVER"].rsplit(":", 1)
    attributes = message["attributes"]
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(
            "POST",
            "/webhooks",
            body=base64.b64decode(message["data"]),
            headers={
                "content-type": "application/json",
                "user-agent": "Framelane-Webhooks/1",
                "webhook-id": attributes["event_id"],
                "webhook-timestamp": "1796000000",
                "webhook-signature": "v1," + "A" * 43 + "=",
            },
        )
        response = conn.getresponse()
        response.read(65536)
        if not 200 <= response.status < 300:
            raise RuntimeError(f"receiver answered {response.status}")
    finally:
        conn.close()


@functions_framework.http
def floor(request):
    if request.path == "/a":
        url, record = _initiate()
        _upload_ref().create(record, retry=_FS_RETRY, timeout=2.5)
        body = {"upload_url": url}
    elif request.path == "/b":
        # The same record as lib/api/idempotency.py writes: the fields are part of the work.
        now = datetime.now(UTC)
        ref = _db.collection("floor").document(secrets.token_hex(32))
        claim = ref.create(
            {
                "workspace_id": "ws_bench",
                "fingerprint": secrets.token_hex(32),
                "state": "in_progress",
                "claim_token": secrets.token_hex(16),
                "response": None,
                "created_at": now,
                "lease_expires_at": now + timedelta(seconds=30),
                "expires_at": now + timedelta(days=1),
            },
            retry=_FS_RETRY,
            timeout=2.5,
        )
        url, record = _initiate()
        body = {"upload_url": url}
        batch = _db.batch()
        batch.create(_upload_ref(), record)
        batch.update(
            ref, {"state": "completed", "response": body}, option=_db.write_option(last_update_time=claim.update_time)
        )
        batch.commit(retry=_FS_RETRY, timeout=2.5)
    elif request.path == "/c":
        body = _replay.get(retry=_FS_RETRY, timeout=2.5).to_dict()["response"]
    elif request.path == "/d":
        message = json.loads(request.get_data())["message"]
        obj = json.loads(base64.b64decode(message["data"]))
        name = message["attributes"]["objectId"]
        ref = _db.collection("floor_uploads").document("upl_" + name.rsplit("/", 1)[1].split(".")[0])
        snap = ref.get(retry=_FS_RETRY, timeout=2.5)
        generation = int(obj["generation"])
        source = _staging.blob(name, generation=generation)
        head = source.download_as_bytes(
            start=0,
            end=min(int(obj["size"]), 65536) - 1,
            raw_download=True,
            checksum=None,
            timeout=(2.0, 4.0),
            retry=_GCS_RETRY,
        )
        _decode(head)
        target = _bucket.blob(name)
        target.content_type = "video/mp4"
        target.rewrite(
            source, if_generation_match=0, if_source_generation_match=generation, timeout=(2.0, 30.0), retry=_GCS_RETRY
        )
        ref.update(
            {
                "state": "completed",
                "size_bytes": int(obj["size"]),
                "crc32c": obj.get("crc32c"),
                "md5": obj.get("md5Hash"),
                "generation": target.generation,
                "completed_at": target.time_created,
                "media": {"duration_seconds": 1.0, "width": 64, "height": 48, "codecs": ["h264", "aac"]},
                "media_bytes_read": len(head),
                "settled_at": firestore.SERVER_TIMESTAMP,
                "session_url": firestore.DELETE_FIELD,
                "webhook_owed_at": firestore.SERVER_TIMESTAMP,
            },
            option=_db.write_option(last_update_time=snap.update_time),
            retry=_FS_RETRY,
            timeout=2.5,
        )
        _publisher.publish(_webhooks, b"", retry=_FS_RETRY, timeout=2.5, kind="event", upload_id=ref.id).result(
            timeout=6
        )
        _staging.blob(name).delete(if_generation_match=generation, timeout=(2.0, 4.0), retry=_GCS_RETRY)
        body = {"outcome": "completed"}
    elif request.path == "/f":
        _post_to_receiver(json.loads(request.get_data())["message"])
        body = {"outcome": "delivered"}
    else:
        return "", 404
    return json.dumps(body), 201, {"Content-Type": "application/json"}
