"""A local Pub/Sub push relay (dev/ and tests; never deployed).

The Pub/Sub emulator cannot attach OIDC tokens to push deliveries, so this
stands in for a push subscription: it pulls the emulator's subscription and
pushes each message to the function as Pub/Sub does, with the same envelope
(`{"message": {"attributes", "data", "messageId", "publishTime"},
"subscription"}`, plus `deliveryAttempt` when it dead-letters) and a
Google-shaped OIDC token (audience, service account) signed with a local key
the function trusts through OIDC_CERTS_URL (dev/oidc_issuer.py).

A 2xx acknowledges the message; anything else, or no answer, leaves it
unacknowledged, to be redelivered after an exponential backoff (by default 1 s
doubling to 10 s), as a subscription's retry policy does. With
`--dead-letter-topic`, a message that has failed `--max-attempts` times is
published there (its attributes kept, as Pub/Sub's forwarding does) and
acknowledged, as a dead-letter policy does. Up to `--concurrency` pushes are
in flight at once.

    python -m dev.relay --pubsub-host 127.0.0.1:8085 --subscription projects/P/subscriptions/S \\
        --endpoint http://127.0.0.1:8080/internal/storage-events --audience AUD \\
        --service-account EMAIL --key-file key.pem --key-id KID

Prints one line per delivery (message id, status, attempt): never a token,
never a message's data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from google.auth import crypt, jwt

# A push in flight has its message's deadline pushed back this often (to twice this from then).
HOLD_SECONDS = 4
# An idle subscription is pulled again after this long.
IDLE_SECONDS = 0.05


class Relay:
    def __init__(
        self,
        pubsub_host: str,
        subscription: str,
        endpoint: str,
        audience: str,
        service_account: str,
        signer: crypt.Signer,
        min_backoff: float = 1.0,
        max_backoff: float = 10.0,
        max_attempts: int | None = None,
        dead_letter_topic: str | None = None,
        concurrency: int = 16,
    ):
        self.base = f"http://{pubsub_host}/v1/{subscription}"
        self.pubsub = f"http://{pubsub_host}/v1"
        self.subscription, self.endpoint = subscription, endpoint
        self.audience, self.service_account, self.signer = audience, service_account, signer
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.max_attempts, self.dead_letter_topic = max_attempts, dead_letter_topic
        self.slots = threading.BoundedSemaphore(concurrency)
        self.concurrency = concurrency
        self.http = requests.Session()
        self.http.trust_env = False
        self.http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=concurrency + 4))
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()

    def token(self) -> str:
        now = int(time.time())
        claims = {
            "iss": "https://accounts.google.com",
            "aud": self.audience,
            "azp": "relay",
            "sub": "relay",
            "email": self.service_account,
            "email_verified": True,
            "iat": now,
            "exp": now + 3600,
        }
        return jwt.encode(self.signer, claims).decode()

    def pull(self, count: int) -> list[dict]:
        # Never a long poll: the emulator hands messages to a pull whose client is gone (a relay that
        # was killed, or gave up waiting) as readily as to a live one, and they then sit unseen until
        # their ack deadline passes. A pull that returns at once leaves nothing behind; when it finds
        # nothing, the next is made after IDLE_SECONDS.
        resp = self.http.post(
            f"{self.base}:pull", json={"maxMessages": count, "returnImmediately": True}, timeout=(5, 30)
        )
        resp.raise_for_status()
        return resp.json().get("receivedMessages", [])

    def hold(self, ack_id: str, pushed: threading.Event) -> None:
        """Keep a message leased while its push is in flight, as Pub/Sub's own push holds it: its
        deadline is pushed back every HOLD_SECONDS, so only a relay that died gives it back (within
        the subscription's 10 s), never a slow push."""
        while not pushed.wait(HOLD_SECONDS):
            with contextlib.suppress(
                requests.RequestException
            ):  # the emulator is busy or gone: the message may come back, as it may on Pub/Sub
                self.http.post(
                    f"{self.base}:modifyAckDeadline",
                    timeout=5,
                    json={"ackIds": [ack_id], "ackDeadlineSeconds": 2 * HOLD_SECONDS},
                )

    def deliver(self, received: dict) -> None:
        try:
            self._deliver(received)
        finally:
            self.slots.release()

    def _deliver(self, received: dict) -> None:
        message = received["message"]
        message_id = message.get("messageId", "?")
        with self.lock:
            attempt = self.attempts.get(message_id, 0) + 1
            self.attempts[message_id] = attempt
        envelope = {
            "message": {**message, "message_id": message_id, "publish_time": message.get("publishTime")},
            "subscription": self.subscription,
        }
        if self.dead_letter_topic:
            envelope["deliveryAttempt"] = attempt
        pushed = threading.Event()
        threading.Thread(target=self.hold, args=(received["ackId"], pushed), daemon=True).start()
        try:
            resp = self.http.post(
                self.endpoint, json=envelope, timeout=60, headers={"Authorization": f"Bearer {self.token()}"}
            )
            status: int | str = resp.status_code
        except requests.RequestException as exc:
            status = type(exc).__name__
        finally:
            pushed.set()
        outcome = "nack"
        if isinstance(status, int) and 200 <= status < 300:
            outcome = "ack"
        elif self.dead_letter_topic and self.max_attempts and attempt >= self.max_attempts:
            attributes = {
                **message.get("attributes", {}),
                "CloudPubSubDeadLetterSourceDeliveryCount": str(attempt),
                "CloudPubSubDeadLetterSourceSubscription": self.subscription.rsplit("/", 1)[-1],
            }
            self.http.post(
                f"{self.pubsub}/{self.dead_letter_topic}:publish",
                timeout=10,
                json={"messages": [{"data": message.get("data", ""), "attributes": attributes}]},
            ).raise_for_status()
            outcome = "dead_lettered"
        if outcome == "nack":
            backoff = min(self.min_backoff * 2 ** (attempt - 1), self.max_backoff)
            self.http.post(
                f"{self.base}:modifyAckDeadline",
                timeout=10,
                json={"ackIds": [received["ackId"]], "ackDeadlineSeconds": max(0, round(backoff))},
            )
        else:
            with self.lock:
                self.attempts.pop(message_id, None)
            self.http.post(f"{self.base}:acknowledge", json={"ackIds": [received["ackId"]]}, timeout=10)
        print(
            json.dumps(
                {
                    "relay": "delivery",
                    "message_id": message_id,
                    "status": status,
                    "attempt": attempt,
                    "outcome": outcome,
                }
            ),
            flush=True,
        )

    def run(self) -> None:
        print(json.dumps({"relay": "ready", "subscription": self.subscription, "endpoint": self.endpoint}), flush=True)
        with ThreadPoolExecutor(self.concurrency) as pool:
            while True:
                self.slots.acquire()  # at least one free slot before pulling
                free = 1
                while free < self.concurrency and self.slots.acquire(blocking=False):
                    free += 1
                try:
                    received = self.pull(free)
                except requests.RequestException as exc:
                    for _ in range(free):
                        self.slots.release()
                    print(json.dumps({"relay": "pull failed", "error": type(exc).__name__}), flush=True)
                    time.sleep(1)  # the emulator is restarting or gone: retry gently
                    continue
                for _ in range(free - len(received)):
                    self.slots.release()
                for item in received:
                    pool.submit(self.deliver, item)
                if not received:
                    time.sleep(IDLE_SECONDS)  # the poll interval of an idle subscription


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pubsub-host", required=True, help="the emulator, host:port")
    parser.add_argument("--subscription", required=True, help="projects/P/subscriptions/S, a pull subscription")
    parser.add_argument(
        "--endpoint", required=True, help="where to push, e.g. http://127.0.0.1:8080/internal/storage-events"
    )
    parser.add_argument("--audience", required=True)
    parser.add_argument("--service-account", required=True)
    parser.add_argument("--key-file", required=True, help="PEM private key the function's OIDC_CERTS_URL publishes")
    parser.add_argument("--key-id", required=True)
    parser.add_argument("--min-backoff", type=float, default=1.0, help="seconds before the first redelivery")
    parser.add_argument("--max-backoff", type=float, default=10.0, help="the longest wait between deliveries")
    parser.add_argument("--max-attempts", type=int, help="with --dead-letter-topic: attempts before dead-lettering")
    parser.add_argument("--dead-letter-topic", help="projects/P/topics/T to forward exhausted messages to")
    parser.add_argument("--concurrency", type=int, default=16, help="pushes in flight at once")
    args = parser.parse_args(argv)
    with open(args.key_file, "rb") as handle:
        signer = crypt.RSASigner.from_string(handle.read(), key_id=args.key_id)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Relay(
        args.pubsub_host,
        args.subscription,
        args.endpoint,
        args.audience,
        args.service_account,
        signer,
        args.min_backoff,
        args.max_backoff,
        args.max_attempts,
        args.dead_letter_topic,
        args.concurrency,
    ).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
