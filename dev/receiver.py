"""A webhook receiver for `make run` and the tests (dev/; never deployed).

It does what a customer's endpoint should: verifies each request's
Standard Webhooks signature with the endpoint's secret (the `standardwebhooks`
library, as customers would), answers 2xx quickly, and here also prints the
event. Tests script its answers (a status, or hanging) and read what it got.

    python -m dev.receiver --port 8087 --secret whsec_...   # prints each event
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    """One request as it arrived."""

    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.monotonic() when its body was in
    verified: bool  # a signature matched one of the receiver's secrets
    answered: int | None = None  # the status sent back (None: hung up without one)

    @property
    def event(self) -> Any:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


@dataclass
class Receiver:
    """A threaded HTTP server on 127.0.0.1 that records every POST.

    `secrets`: the signing secrets to verify with (any may match).
    `script`: answers for the next requests, in order: an int status, or
    ("hang", seconds) to answer nothing for that long; when it runs out, 200.
    `on_event`: called with each Received (make run prints them).
    """

    port: int = 0
    secrets: list[str] = field(default_factory=list, repr=False)
    on_event: Callable[[Received], None] | None = None

    def __post_init__(self) -> None:
        self.received: list[Received] = []
        self.script: deque = deque()
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # As real servers do: else Nagle holds the body back behind the headers on a kept-alive
            # connection until the client's delayed ACK, 40 ms.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                item = Received(self.path, headers, body, time.monotonic(), receiver.verify(body, headers))
                with receiver._changed:
                    answer = receiver.script.popleft() if receiver.script else 200
                    receiver.received.append(item)
                    receiver._changed.notify_all()
                if receiver.on_event is not None:
                    receiver.on_event(item)
                if isinstance(answer, tuple) and answer[0] == "hang":
                    receiver._stopping.wait(answer[1])  # the behaviour under test: no answer for that long
                    self.close_connection = True
                    return
                item.answered = int(answer)
                payload = b'{"ok":true}'
                self.send_response(item.answered)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args: Any) -> None:
                pass  # the request line is not worth a line; on_event says what came

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # http.server's 5 drops SYNs under a burst of connections

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="receiver", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks"

    def verify(self, body: bytes, headers: dict[str, str]) -> bool:
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
                return True
            except (WebhookVerificationError, ValueError):
                continue
        return False

    def wait_for(
        self, count: int, timeout: float = 30.0, where: Callable[[Received], bool] = lambda _item: True
    ) -> list[Received]:
        """The received requests matching `where`, once there are at least `count` (or at `timeout`)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [item for item in self.received if where(item)]
                left = deadline - time.monotonic()
                if len(found) >= count or left <= 0:
                    return found
                self._changed.wait(left)

    def stop(self) -> None:
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()


def print_event(item: Received) -> None:
    try:
        event = item.event
        summary = f"{event.get('type')} {event.get('data', {}).get('id')} status={event.get('data', {}).get('status')}"
    except (ValueError, AttributeError):
        summary = f"{len(item.body)} bytes that are not a JSON event"
    check = "signature verified" if item.verified else "SIGNATURE NOT VERIFIED"
    print(f"[webhook] {summary} (webhook-id {item.webhook_id}; {check})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.receiver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8087)
    parser.add_argument("--secret", action="append", default=[], help="a whsec_ signing secret (repeatable)")
    args = parser.parse_args(argv)
    receiver = Receiver(args.port, args.secret, print_event)
    print(f"Receiving webhooks on {receiver.url}; Ctrl-C stops.", file=sys.stderr)
    try:
        receiver.thread.join()
    except KeyboardInterrupt:
        receiver.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
