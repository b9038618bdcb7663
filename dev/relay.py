"""A local Pub/Sub push relay (dev/ and tests; never deployed).

The Pub/Sub emulator cannot attach OIDC tokens to push deliveries, so this
stands in for the push subscription: it pulls the emulator's subscription and
pushes each message to the function as Pub/Sub does, with the same envelope
(`{"message": {"attributes", "data", "messageId", "publishTime"},
"subscription"}`) and a Google-shaped OIDC token (audience, service account)
signed with a local key the function trusts through OIDC_CERTS_URL
(dev/oidc_issuer.py). A 2xx acknowledges the message; anything else, or no
answer, leaves it unacknowledged, to be redelivered after a backoff (1 s
doubling to 10 s), as Pub/Sub's retry policy does.

    python -m dev.relay --pubsub-host 127.0.0.1:8085 --subscription projects/P/subscriptions/S \\
        --endpoint http://127.0.0.1:8080/internal/storage-events --audience AUD \\
        --service-account EMAIL --key-file key.pem --key-id KID

Prints one line per delivery (message id, status, attempt): never a token.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from google.auth import crypt, jwt

MAX_MESSAGES = 10
BACKOFF_MAX_SECONDS = 10


class Relay:
    def __init__(self, pubsub_host: str, subscription: str, endpoint: str, audience: str, service_account: str,
                 signer: crypt.Signer):
        self.base = f"http://{pubsub_host}/v1/{subscription}"
        self.subscription, self.endpoint = subscription, endpoint
        self.audience, self.service_account, self.signer = audience, service_account, signer
        self.http = requests.Session()
        self.http.trust_env = False
        self.attempts: dict[str, int] = {}

    def token(self) -> str:
        now = int(time.time())
        claims = {"iss": "https://accounts.google.com", "aud": self.audience, "azp": "relay", "sub": "relay",
                  "email": self.service_account, "email_verified": True, "iat": now, "exp": now + 3600}
        return jwt.encode(self.signer, claims).decode()

    def pull(self) -> list[dict]:
        resp = self.http.post(f"{self.base}:pull", json={"maxMessages": MAX_MESSAGES}, timeout=60)
        resp.raise_for_status()
        return resp.json().get("receivedMessages", [])

    def deliver(self, received: dict) -> None:
        message = received["message"]
        message_id = message.get("messageId", "?")
        attempt = self.attempts.get(message_id, 0) + 1
        envelope = {"message": {**message, "message_id": message_id, "publish_time": message.get("publishTime")},
                    "subscription": self.subscription}
        try:
            resp = self.http.post(self.endpoint, json=envelope, timeout=60,
                                  headers={"Authorization": f"Bearer {self.token()}"})
            status = resp.status_code
        except requests.RequestException as exc:
            status = type(exc).__name__
        if isinstance(status, int) and 200 <= status < 300:
            self.attempts.pop(message_id, None)
            self.http.post(f"{self.base}:acknowledge", json={"ackIds": [received["ackId"]]}, timeout=10)
        else:
            self.attempts[message_id] = attempt
            backoff = min(2 ** (attempt - 1), BACKOFF_MAX_SECONDS)
            self.http.post(f"{self.base}:modifyAckDeadline", timeout=10,
                           json={"ackIds": [received["ackId"]], "ackDeadlineSeconds": backoff})
        print(json.dumps({"relay": "delivery", "message_id": message_id, "status": status, "attempt": attempt}),
              flush=True)

    def run(self) -> None:
        print(json.dumps({"relay": "ready", "subscription": self.subscription, "endpoint": self.endpoint}),
              flush=True)
        with ThreadPoolExecutor(MAX_MESSAGES) as pool:
            while True:
                try:
                    received = self.pull()
                except requests.RequestException as exc:
                    print(json.dumps({"relay": "pull failed", "error": type(exc).__name__}), flush=True)
                    time.sleep(1)  # the emulator is restarting or gone: retry gently
                    continue
                list(pool.map(self.deliver, received))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pubsub-host", required=True, help="the emulator, host:port")
    parser.add_argument("--subscription", required=True, help="projects/P/subscriptions/S, a pull subscription")
    parser.add_argument("--endpoint", required=True, help="where to push, e.g. http://127.0.0.1:8080/internal/storage-events")
    parser.add_argument("--audience", required=True)
    parser.add_argument("--service-account", required=True)
    parser.add_argument("--key-file", required=True, help="PEM private key the function's OIDC_CERTS_URL publishes")
    parser.add_argument("--key-id", required=True)
    args = parser.parse_args(argv)
    with open(args.key_file, "rb") as handle:
        signer = crypt.RSASigner.from_string(handle.read(), key_id=args.key_id)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Relay(args.pubsub_host, args.subscription, args.endpoint, args.audience, args.service_account, signer).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
