"""`make run`: the whole service on this machine, on the emulators, until Ctrl-C.

Starts the Firestore and Pub/Sub emulators and fake-gcs-server on loopback
(fake-gcs-server publishing each finalized object to the Pub/Sub emulator,
as the bucket's notification does), creates the bucket and a demo API key,
serves the function with functions-framework on 127.0.0.1:8080, runs the
push relays (dev/relay.py) that deliver storage events and webhook messages
to it with OIDC tokens from a local issuer it trusts, registers a webhook
endpoint for the demo workspace on a local receiver (dev/receiver.py) that
verifies each signature and prints each event, serves the browser demo
(dev/demo.py: a page and the backend that holds the key), and prints curls
and the upload command to try.
Ports: FUNCTION_PORT (8080), FIRESTORE_PORT (8681), STORAGE_PORT (4443),
PUBSUB_PORT (8085), ISSUER_PORT (8086), RECEIVER_PORT (8087), DEMO_PORT (8088),
DELIVERIES_PORT (8089: the webhooks function, `deliveries`, as deployed beside the API's),
REDIS_PORT (6390: redis-server, where the limits count, as Memorystore is deployed).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from dev import emulators
from dev.oidc_issuer import Issuer
from dev.receiver import Receiver, print_event

PROJECT = "framelane-local"
BUCKET = "framelane-local-uploads"
WORKSPACE = "ws_demo"
TOPIC, SUBSCRIPTION = "storage-events", "storage-events-relay"
WEBHOOKS_TOPIC, WEBHOOKS_DEAD_LETTER_TOPIC = "webhooks", "webhooks-dead-letter"
WEBHOOK_MAX_ATTEMPTS = 5


def main() -> int:
    ports = {
        name: int(os.environ.get(name, default))
        for name, default in (
            ("FUNCTION_PORT", 8080),
            ("FIRESTORE_PORT", 8681),
            ("STORAGE_PORT", 4443),
            ("PUBSUB_PORT", 8085),
            ("ISSUER_PORT", 8086),
            ("RECEIVER_PORT", 8087),
            ("DEMO_PORT", 8088),
            ("DELIVERIES_PORT", 8089),
            ("REDIS_PORT", 6390),
        )
    }
    busy = [f"{name}={port}" for name, port in ports.items() if emulators.port_in_use(port)]
    if busy:
        print(
            f"error: port in use: {', '.join(busy)}. Stop what holds it, or set another port, "
            f"e.g. `make run FUNCTION_PORT=8090`.",
            file=sys.stderr,
        )
        return 1

    log_dir = emulators.new_log_dir("framelane-run-")
    status = 1
    try:
        status = _serve(ports, log_dir)
    except KeyboardInterrupt:
        # Ctrl-C (or SIGTERM) during start-up: what had started is stopped already (_serve's finally).
        print("\nStopped during start-up; nothing is left running.", file=sys.stderr)
        status = 0
    finally:
        # Kept (and said where) when something failed; a clean Ctrl-C leaves nothing behind.
        emulators.finish_log_dir(log_dir, status == 0)
    return status


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _serve(ports: dict[str, int], log_dir) -> int:
    services: list[emulators.Service] = []
    stop = threading.Event()
    # Until everything is up, a signal interrupts start-up where it is (each starter stops what it
    # started: lib's _start and start_stack); once it is up, it ends the loop below.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    issuer = receiver = demo = None
    try:
        print("Starting the Firestore and Pub/Sub emulators, fake-gcs-server and redis-server ...", file=sys.stderr)
        stack = emulators.start_stack(log_dir, PROJECT, BUCKET, events=(TOPIC, SUBSCRIPTION), ports=ports)
        services += stack.started
        firestore, storage, pubsub = stack.firestore, stack.storage, stack.pubsub
        assert pubsub is not None  # events on: start_stack started it

        # The storage events' tokens come from a local issuer the function trusts
        # (OIDC_CERTS_URL); the sweep stays shut (no SWEEP_*: no scheduler here).
        issuer = Issuer(port=ports["ISSUER_PORT"])
        trust = {k: v for k, v in issuer.env().items() if not k.startswith("SWEEP_")}
        hooks, dead_letters = emulators.create_webhook_topics(
            pubsub, PROJECT, WEBHOOKS_TOPIC, WEBHOOKS_DEAD_LETTER_TOPIC
        )
        # Webhooks on, and allowed to reach the receiver on loopback (never so in a deployment).
        env = emulators.function_env(
            firestore,
            storage,
            PROJECT,
            BUCKET,
            stack.redis,
            **trust,
            PUBSUB_EMULATOR_HOST=pubsub.extra["host"],
            WEBHOOKS_TOPIC=WEBHOOKS_TOPIC,
            WEBHOOK_ALLOW_PRIVATE_TARGETS="true",
        )
        key = _demo_key(firestore)
        receiver = Receiver(ports["RECEIVER_PORT"], on_event=print_event)
        endpoint = _demo_webhook(firestore, receiver)
        function = emulators.start_function(env, log_dir, ports["FUNCTION_PORT"])
        services.append(function)
        # The webhook pushes go to the deliveries function, as deployed (terraform/webhooks.tf).
        deliveries = emulators.start_function(
            env, log_dir, ports["DELIVERIES_PORT"], name="function-deliveries", target="deliveries"
        )
        services.append(deliveries)
        services.append(
            emulators.start_relay(
                pubsub,
                f"projects/{PROJECT}/subscriptions/{SUBSCRIPTION}",
                function.url + "/internal/storage-events",
                issuer,
                log_dir,
            )
        )
        services.append(
            emulators.start_relay(
                pubsub,
                hooks,
                deliveries.url + "/internal/webhooks",
                issuer,
                log_dir,
                name="push-relay-webhooks",
                caller="webhooks",
                extra_args=(
                    "--max-attempts",
                    str(WEBHOOK_MAX_ATTEMPTS),
                    "--dead-letter-topic",
                    f"projects/{PROJECT}/topics/{WEBHOOKS_DEAD_LETTER_TOPIC}",
                ),
            )
        )
        services.append(
            emulators.start_relay(
                pubsub,
                dead_letters,
                deliveries.url + "/internal/webhook-dead-letters",
                issuer,
                log_dir,
                name="push-relay-dead-letters",
                caller="webhooks",
            )
        )
        from dev.demo import Demo

        demo = Demo(function.url, key, ports["DEMO_PORT"])
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        _print_instructions(function.url, key, env, log_dir, endpoint, receiver, demo)
        while not stop.is_set():
            for service in services:
                if not service.alive():
                    print(f"error: {service.name} exited:\n{service.log_tail()}", file=sys.stderr)
                    return 1
            stop.wait(0.5)
        print("\nStopping ...", file=sys.stderr)
        return 0
    except emulators.SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for service in reversed(services):
            service.stop()
        if issuer is not None:
            issuer.stop()
        if receiver is not None:
            receiver.stop()
        if demo is not None:
            demo.stop()


def _demo_key(firestore: emulators.Service) -> str:
    """A fresh live key for the demo workspace, created through the same code as the CLI."""
    from lib.api import auth

    key, _ = auth.create_key(emulators.firestore_client_for(firestore, PROJECT), WORKSPACE, "make run demo", "live")
    return key


def _demo_webhook(firestore: emulators.Service, receiver: Receiver):
    """The demo workspace's live endpoint on the local receiver, its secret handed to the receiver."""
    from lib.platform import clock
    from lib.webhooks import endpoints

    endpoint = endpoints.create_endpoint(
        emulators.firestore_client_for(firestore, PROJECT), WORKSPACE, "live", receiver.url, True, clock.now()
    )
    receiver.secrets.append(endpoint.secret)
    return endpoint


def _print_instructions(url: str, key: str, env: dict, log_dir, endpoint, receiver: Receiver, demo) -> None:
    print(
        f"""
Framelane uploads is serving on {url} (emulators: Firestore {env["FIRESTORE_EMULATOR_HOST"]}, Storage {env["STORAGE_EMULATOR_HOST"]}).
Demo API key for workspace {WORKSPACE}: {key}

Each block below stands alone: paste it into a shell in this directory.

1. Create an upload:

  curl -sS -X POST {url}/v1/uploads \\
    -H 'Authorization: Bearer {key}' \\
    -H 'Content-Type: application/json' \\
    -H "Idempotency-Key: $(date +%s%N)" \\
    -d '{{"content_type": "video/mp4", "filename": "clip.mp4"}}'

2. Declare the size and checksum, PUT a file to the upload_url it returned (here: a one-second
   clip from tests/media/). Within a second or two of the PUT the storage event (fake-gcs-server
   -> Pub/Sub emulator -> relay -> POST /internal/storage-events) has read the clip's headers,
   found it is the MP4 declared, placed it at source_url and recorded the upload completed, with
   no GET: the function's log says so, then the GET shows it ("status": "completed", the stored
   size, completed_at, crc32c, md5 and "media": its duration, size and codecs). source_url
   answers 404 until then. PUT this README instead and the upload is "rejected"
   (content_mismatch), never served.

  FILE=tests/media/clip.mp4
  RESP=$(curl -sS -X POST {url}/v1/uploads -H 'Authorization: Bearer {key}' -d "{{\\"content_type\\": \\"video/mp4\\", \\"size_bytes\\": $(wc -c < $FILE), \\"md5\\": \\"$(python3 -c 'import base64,hashlib,sys; print(base64.b64encode(hashlib.md5(open(sys.argv[1],"rb").read()).digest()).decode())' $FILE)\\"}}")
  ID=$(echo "$RESP" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  UPLOAD_URL=$(echo "$RESP" | python3 -c 'import json,sys; print(json.load(sys.stdin)["upload_url"])')
  SOURCE_URL=$(echo "$RESP" | python3 -c 'import json,sys; print(json.load(sys.stdin)["source_url"])')
  curl -sS -X PUT -H 'Content-Type: video/mp4' --data-binary @$FILE "$UPLOAD_URL"
  sleep 2; grep "storage-events.*$ID" {log_dir}/function.log
  curl -sS {url}/v1/uploads/$ID -H 'Authorization: Bearer {key}'
  curl -sS -o /dev/null -w 'source_url: %{{http_code}}, %{{size_download}} bytes\\n' "$SOURCE_URL"

3. Cancel an upload before its bytes arrive ("status": "cancelled"; again: the same answer):

  ID=$(curl -sS -X POST {url}/v1/uploads -H 'Authorization: Bearer {key}' -d '{{"content_type": "image/png"}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  curl -sS -X POST {url}/v1/uploads/$ID/cancel -H 'Authorization: Bearer {key}'

   Emulator gaps that show here: on fake-gcs-server a cancelled session still takes bytes, and a
   declared size or checksum is not enforced at the PUT (real GCS refuses both). So a PUT after
   step 3's cancel still lands: its storage event deletes those late bytes, and the upload stays
   "cancelled", as it would in production. And bytes other than the declared ones land too: the
   service checks them itself, so such an upload is "rejected" (its "rejection" says why,
   upload.rejected goes to the receiver) and its bytes are never served.

4. Upload from a terminal, in chunks, with a progress bar; it checks that what landed is the file:

  # A 200 MB MP4: the clip, then random filler in a box players skip. Or any video, image or audio file of yours.
  python3 -c 'import os; c=open("tests/media/clip-faststart.mp4","rb").read(); n=200_000_000-len(c); open("/tmp/framelane-sample.mp4","wb").write(c+n.to_bytes(4,"big")+b"free"+os.urandom(n-8))'
  FRAMELANE_API_URL={url} FRAMELANE_API_KEY={key} .venv/bin/python -m client upload /tmp/framelane-sample.mp4

   Resuming cannot be shown here. Against GCS, Ctrl-C and the same command again resumes where it
   stopped. fake-gcs-server instead finalizes a session when asked how much it holds, so here the
   rerun's question makes a short object: the command compares it with the file and says so
   (exit 5, never "uploaded"), the service rejects the upload (upload.rejected below), and a third
   run uploads the file anew. docs/clients.md has both; the tests resume against another stand-in.

5. Upload from a browser: open {demo.url} and pick a video or image. The page's backend
   (dev/demo.py) holds the key and mints the upload with cors_origin {demo.url}; the browser
   sends the bytes straight to storage in chunks (UpChunk), with pause and resume.

6. The demo workspace's limits and where its live keys stand (creates in the last minute,
   pending uploads); each create's answer carries RateLimit-Policy and RateLimit too:

  curl -sS {url}/v1/limits -H 'Authorization: Bearer {key}'
  FIRESTORE_EMULATOR_HOST={env["FIRESTORE_EMULATOR_HOST"]} GOOGLE_CLOUD_PROJECT={PROJECT} .venv/bin/python -m lib.admin limits --workspace {WORKSPACE}

   Ops change a workspace's limits (every instance holds them within 5 s); past them a create
   answers 429 rate_limited or quota_exceeded. For {WORKSPACE}:

  FIRESTORE_EMULATOR_HOST={env["FIRESTORE_EMULATOR_HOST"]} GOOGLE_CLOUD_PROJECT={PROJECT} .venv/bin/python -m lib.admin set-limits --workspace {WORKSPACE} --creates-per-minute 120 --max-pending-uploads 100

7. Prove the deployment, as ops do after every apply and rollout (docs/operations.md): the whole
   journey, each step timed; here the steps only Google runs are skipped, each saying why:

  FRAMELANE_API_KEY={key} make smoke API_URL={url} SMOKE_ARGS=--emulators

(The expiry sweep, POST /internal/sweep, is shut here: it takes only Cloud Scheduler's OIDC token.
A GET after expires_at still expires the upload.)

Webhooks: {WORKSPACE}'s live endpoint {endpoint.id} is the receiver at {receiver.url}. It checks
each signature with the endpoint's secret (standardwebhooks) and prints each event below, as
"[webhook] upload.completed upl_... (webhook-id evt_...; signature verified)": step 2's PUT gives
upload.completed, step 3's cancel upload.cancelled. Add your own endpoint (https only in a deployment;
here loopback and http are allowed too), then list the delivery attempts:

  FIRESTORE_EMULATOR_HOST={env["FIRESTORE_EMULATOR_HOST"]} GOOGLE_CLOUD_PROJECT={PROJECT} WEBHOOK_ALLOW_PRIVATE_TARGETS=true \\
    .venv/bin/python -m lib.admin add-webhook --workspace {WORKSPACE} --url http://127.0.0.1:9000/hooks
  FIRESTORE_EMULATOR_HOST={env["FIRESTORE_EMULATOR_HOST"]} GOOGLE_CLOUD_PROJECT={PROJECT} \\
    .venv/bin/python -m lib.admin webhook-deliveries --workspace {WORKSPACE}

More keys: FIRESTORE_EMULATOR_HOST={env["FIRESTORE_EMULATOR_HOST"]} GOOGLE_CLOUD_PROJECT={PROJECT} .venv/bin/python -m lib.admin create-key --workspace ws_other
Logs: {log_dir} (removed when you stop cleanly; kept when something fails)   Ctrl-C stops everything.
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
