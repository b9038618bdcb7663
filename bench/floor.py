"""The floor: a bare functions-framework function doing only the work a request
truly needs, served exactly like the endpoint. Anything the endpoint costs
beyond this is our overhead.

  /a  one GCS resumable-session initiation (as POST /v1/uploads without a key)
  /b  Firestore create of the same idempotency record, the initiation, the same
      conditional update (a fresh key)
  /c  one Firestore get (the least a replay needs)

Same clients, same call options as lib/ (timeouts, retry budgets, the content
type set on the blob, if_generation_match=0), created once at import.
"""

import json
import os
import secrets
from datetime import datetime, timedelta, timezone

import functions_framework
from google.api_core import retry as gretry
from google.cloud import firestore, storage
from google.cloud.storage.retry import DEFAULT_RETRY

_project = os.environ["GOOGLE_CLOUD_PROJECT"]
_bucket = storage.Client(project=_project).bucket(os.environ["UPLOAD_BUCKET"])
_db = firestore.Client(project=_project)
_replay = _db.collection("floor").document("replay")
_FS_RETRY = gretry.Retry(initial=0.05, maximum=1.0, multiplier=2.0, timeout=4.0)
_GCS_RETRY = DEFAULT_RETRY.with_delay(initial=0.1, maximum=1.0, multiplier=2.0).with_timeout(5.0)


def _initiate() -> str:
    blob = _bucket.blob(f"uploads/floor/{secrets.token_hex(16)}.mp4")
    blob.content_type = "video/mp4"
    return blob.create_resumable_upload_session(content_type="video/mp4", if_generation_match=0,
                                                timeout=(2.0, 4.0), retry=_GCS_RETRY)


@functions_framework.http
def floor(request):
    if request.path == "/a":
        body = {"upload_url": _initiate()}
    elif request.path == "/b":
        # The same record as lib/idempotency.py writes: the fields are part of the work.
        now = datetime.now(timezone.utc)
        ref = _db.collection("floor").document(secrets.token_hex(32))
        claim = ref.create({"workspace_id": "ws_bench", "fingerprint": secrets.token_hex(32),
                            "state": "in_progress", "claim_token": secrets.token_hex(16), "response": None,
                            "created_at": now, "lease_expires_at": now + timedelta(seconds=30),
                            "expires_at": now + timedelta(days=1)},
                           retry=_FS_RETRY, timeout=2.5)
        body = {"upload_url": _initiate()}
        ref.update({"state": "completed", "response": body},
                   option=_db.write_option(last_update_time=claim.update_time), retry=_FS_RETRY, timeout=2.5)
    elif request.path == "/c":
        body = _replay.get(retry=_FS_RETRY, timeout=2.5).to_dict()["response"]
    else:
        return "", 404
    return json.dumps(body), 201, {"Content-Type": "application/json"}
