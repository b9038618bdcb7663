"""`make smoke`: walk a deployment's whole upload journey and say which step failed.

    FRAMELANE_API_KEY=fl_test_... python -m dev.smoke --api-url https://api.example.com [--emulators]
    python -m dev.smoke --api-url https://api.example.com --api-key-file ~/.framelane-smoke-key

Run it after every `terraform apply` and rollout (docs/operations.md). A test-mode key is enough:
its objects go under test-uploads/, which the bucket deletes a day later. The key comes from the
environment (FRAMELANE_API_KEY) or a file (`--api-key-file`, `-` for standard input), never from
the command line, where `ps` shows it to every user of the machine. Each step prints its name, its
time and what it saw; the first failure ends the run with exit 1, naming the step and why. The key
and the upload URLs (bearer secrets) are never printed: a failure's message is redacted as the
service's log lines are (lib/platform/logs.py). What the smoke made is cancelled if it is still pending.

`--emulators`: the deployment is `make run`'s. Steps that need what only Google runs (the CDN's
headers and 404s, a cancelled session refusing bytes) are skipped there, each saying why.

`--webhook-url URL`: also prove webhooks. The smoke adds a webhook endpoint with that URL for the
key's workspace and mode (through Firestore, as `python -m lib.admin add-webhook` does, so it needs
the ops credentials and GOOGLE_CLOUD_PROJECT), then waits for the deliveries function's record of
the upload's `upload.completed` delivered there with a 2xx, and removes the endpoint at the end. Any
receiver that answers 2xx will do; the smoke reads the outcome from the attempt log, not from it.
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import os
import secrets
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import google_crc32c
import requests

from dev import samples
from lib.api import auth
from lib.platform import clock, logs
from lib.platform.clients import firestore_client
from lib.platform.config import ConfigError, FirestoreSettings
from lib.platform.errors import ApiError
from lib.webhooks import attempts, endpoints, targets

TIMEOUT = 30


class StepFailed(Exception):
    """A step saw something other than a working deployment: the message says what."""


class Skipped(Exception):
    """A step that cannot be shown on this deployment: the message says why."""


def crc32c(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


class Smoke:
    def __init__(
        self,
        api_url: str,
        api_key: str,
        emulators: bool,
        event_seconds: float,
        out: Callable[[str], None] = print,
        webhook_url: str | None = None,
        webhook_seconds: float = 60.0,
    ):
        self.api = api_url.rstrip("/")
        self.auth = {"Authorization": f"Bearer {api_key}"}
        self.webhook_url = webhook_url
        self.webhook_seconds = webhook_seconds
        self.endpoint: endpoints.Endpoint | None = None
        self.db: Any = None  # a Firestore client, once a step needs one
        self.emulators = emulators
        self.event_seconds = event_seconds
        self.out = out
        self.http = requests.Session()
        self.made: list[str] = []  # upload ids, to cancel at the end if still pending
        self.data = samples.mp4_of_size(64 * 1024)  # a real MP4, different every run
        self.upload: dict = {}
        self.put_at = 0.0
        self.put_date: datetime | None = None

    def call(self, method: str, path: str, expect: int, **kwargs) -> requests.Response:
        resp = self.http.request(method, self.api + path, headers=self.auth, timeout=TIMEOUT, **kwargs)
        if resp.status_code != expect:
            raise StepFailed(f"{method} {path} answered {resp.status_code}, not {expect}: {_error(resp)}")
        return resp

    def run(self) -> int:
        steps = [
            ("health", self.health),
            ("webhook endpoint", self.add_endpoint),
            ("create", self.create),
            ("put", self.put),
            ("completed by the storage event", self.completed),
            ("webhook delivered", self.delivered),
            ("source_url", self.source),
            ("the CDN serves nothing else", self.cdn_refuses),
            ("a rejected impostor", self.impostor),
            ("cancel", self.cancel),
        ]
        try:
            for name, step in steps:
                started = time.monotonic()
                try:
                    said = step()
                except Skipped as why:
                    self.out(f"skip  {name}: {why}")
                    continue
                except (StepFailed, requests.RequestException) as exc:
                    # A connection error names the URL it tried: a session URL's upload_id is a secret.
                    self.out(f"FAIL  {name} ({time.monotonic() - started:.2f} s): {logs.redact(str(exc))}")
                    return 1
                self.out(f"ok    {name} ({time.monotonic() - started:.2f} s){': ' + said if said else ''}")
            self.out("smoke: the deployment works")
            return 0
        finally:
            self.clean_up()

    def health(self) -> str:
        resp = self.http.get(self.api + "/health", timeout=TIMEOUT)
        if resp.status_code != 200:
            raise StepFailed(f"/health answered {resp.status_code}")
        return ""

    def add_endpoint(self) -> str:
        """Before the upload, so that its completion is told to the endpoint."""
        if not self.webhook_url:
            raise Skipped("no --webhook-url given")
        try:
            self.db = firestore_client(FirestoreSettings.from_env(os.environ))
            key = auth.authenticate(self.db, self.auth["Authorization"], auth.lookup_cache(0))
        except (ConfigError, ApiError) as exc:  # no project set; an unknown key; Firestore unreachable
            raise StepFailed(f"cannot read the key's workspace from Firestore: {exc}") from None
        try:
            self.endpoint = endpoints.create_endpoint(
                self.db, key.workspace_id, key.mode, self.webhook_url, allow_private=self.emulators, now=clock.now()
            )
        except targets.TargetRefused as exc:  # the URL's rules, as add-webhook applies them
            raise StepFailed(f"the webhook URL is refused: {exc}") from None
        return f"{self.endpoint.id} for {key.workspace_id} ({key.mode})"

    def delivered(self) -> str:
        if self.endpoint is None:
            raise Skipped("no --webhook-url given")
        deadline = time.monotonic() + self.webhook_seconds
        while True:
            rows = [
                row
                for row in attempts.recent_deliveries(self.db, self.endpoint.workspace_id, 100)
                if row["endpoint_id"] == self.endpoint.id
                and row["upload_id"] == self.upload["id"]
                and row["event_type"] == "upload.completed"
            ]
            if any(row["status"] and 200 <= row["status"] < 300 for row in rows):
                return f"upload.completed answered 2xx, after {len(rows)} attempt(s)"
            if time.monotonic() >= deadline:
                seen = ", ".join(str(row["status"] or row["error"]) for row in rows) or "no attempt recorded"
                raise StepFailed(f"no 2xx delivery of upload.completed within {self.webhook_seconds:.0f} s ({seen})")
            time.sleep(1)  # polling the attempt log, within the bound above

    def create(self) -> str:
        body = {
            "content_type": "video/mp4",
            "filename": "smoke.mp4",
            "size_bytes": len(self.data),
            "crc32c": crc32c(self.data),
        }
        resp = self.call("POST", "/v1/uploads", 201, json=body)
        self.upload = resp.json()
        self.made.append(self.upload["id"])
        limits = "RateLimit-Policy" in resp.headers and "RateLimit" in resp.headers
        return f"{self.upload['id']}" + (", with its RateLimit fields" if limits else ", limits off")

    def put(self) -> str:
        resp = self.http.put(
            self.upload["upload_url"], data=self.data, headers={"Content-Type": "video/mp4"}, timeout=TIMEOUT * 4
        )
        if resp.status_code not in (200, 201):
            raise StepFailed(f"the session answered {resp.status_code} to the bytes")
        self.put_at = time.monotonic()
        # When storage answered (its clock, to the second): what the completion's latency is measured from.
        self.put_date = email.utils.parsedate_to_datetime(resp.headers["Date"]) if resp.headers.get("Date") else None
        return f"{len(self.data):,} bytes"

    def completed(self) -> str:
        """No GET before the bound: a GET would settle the upload itself. After it, one GET must find it
        completed, placed at least a second before that GET was answered (both times the servers')."""
        time.sleep(max(0.0, self.event_seconds - (time.monotonic() - self.put_at)))  # the bound, not readiness
        resp = self.call("GET", f"/v1/uploads/{self.upload['id']}", 200)
        shown = resp.json()
        if shown["status"] != "completed":
            raise StepFailed(
                f"{self.event_seconds:.0f} s after the PUT the upload is {shown['status']}"
                + (f" ({shown['rejection']['code']})" if shown.get("rejection") else "")
            )
        answered = email.utils.parsedate_to_datetime(resp.headers["Date"])
        placed = datetime.fromisoformat(shown["completed_at"].replace("Z", "+00:00"))
        if (answered - placed).total_seconds() < 2:  # both to the second; the GET comes >= 3 s after the PUT
            raise StepFailed(
                f"completed at {shown['completed_at']}, by the GET itself (answered "
                f"{resp.headers['Date']}): no storage event did it within {self.event_seconds:.0f} s"
            )
        if (shown["size_bytes"], shown["crc32c"]) != (len(self.data), crc32c(self.data)):
            raise StepFailed(f"it holds {shown['size_bytes']} bytes, crc32c {shown['crc32c']}: not what was sent")
        facts = shown.get("media") or {}
        if (facts.get("width"), facts.get("height"), facts.get("codecs")) != (64, 48, ["h264"]):
            raise StepFailed(f"its media are {facts}, not the clip's 64x48 h264")
        seen = (
            f"placed {max(0.0, (placed - self.put_date).total_seconds()):.0f} s after the PUT's answer"
            if self.put_date
            else "the PUT's answer had no Date to measure from"
        )
        # The step's own time is the wait before it looks (--event-seconds), not the event's latency.
        return (
            f"{seen} (the servers' clocks, to the second; looked after the {self.event_seconds:.0f} s bound), "
            f"completed_at {shown['completed_at']}, media {facts['duration_seconds']} s 64x48 h264"
        )

    def source(self) -> str:
        resp = self.http.get(self.upload["source_url"], timeout=TIMEOUT * 4)
        if resp.status_code != 200 or resp.content != self.data:
            raise StepFailed(
                f"source_url answered {resp.status_code} with {len(resp.content):,} bytes, not the bytes sent"
            )
        if resp.headers.get("X-Content-Type-Options", "").lower() != "nosniff":
            if self.emulators:
                return "byte-exact (nosniff not checked: the local stand-in for the CDN is fake-gcs-server)"
            raise StepFailed("no X-Content-Type-Options: nosniff on the upload")
        return "byte-exact, nosniff"

    def cdn_refuses(self) -> str:
        if self.emulators:
            raise Skipped("the local stand-in for the CDN is fake-gcs-server, which lists its buckets")
        base = self.upload["source_url"].split("/test-uploads/", 1)[0].split("/uploads/", 1)[0]
        for path in (
            "/",
            "/uploads/",
            "/test-uploads/",
            "/?prefix=uploads/",
            "/uploads?list-type=2",
            "/uploads/?list-type=2&prefix=uploads/",
            "/test-uploads/?prefix=test-uploads/",
        ):
            resp = self.http.get(base + path, timeout=TIMEOUT)
            if resp.status_code != 404 or b"<ListBucketResult" in resp.content or b'"items"' in resp.content:
                raise StepFailed(f"the CDN answered {path} with {resp.status_code}, not 404 (a listing?)")
        return "/, /uploads/, /test-uploads/ and listing queries: 404"

    def impostor(self) -> str:
        """A web page declared video/mp4: rejected (content_mismatch), never served."""
        page = b"<!doctype html><title>smoke</title>" + secrets.token_hex(512).encode()
        made = self.call("POST", "/v1/uploads", 201, json={"content_type": "video/mp4", "size_bytes": len(page)})
        upload = made.json()
        self.made.append(upload["id"])
        resp = self.http.put(upload["upload_url"], data=page, timeout=TIMEOUT)
        if resp.status_code not in (200, 201):
            raise StepFailed(f"the session answered {resp.status_code} to the bytes")
        shown = self.call("GET", f"/v1/uploads/{upload['id']}", 200).json()
        code = (shown.get("rejection") or {}).get("code")
        if shown["status"] != "rejected" or code != "content_mismatch":
            raise StepFailed(f"a web page as video/mp4 is {shown['status']} ({code}), not rejected content_mismatch")
        served = self.http.get(upload["source_url"], timeout=TIMEOUT).status_code
        if served != 404:
            raise StepFailed(f"the rejected upload's source_url answered {served}, not 404")
        return "rejected content_mismatch, source_url 404"

    def cancel(self) -> str:
        made = self.call("POST", "/v1/uploads", 201, json={"content_type": "video/mp4"}).json()
        self.made.append(made["id"])
        shown = self.call("POST", f"/v1/uploads/{made['id']}/cancel", 200).json()
        if shown["status"] != "cancelled":
            raise StepFailed(f"the cancel answered status {shown['status']}")
        if self.emulators:
            return "cancelled (the session's refusal not checked: fake-gcs-server takes bytes after a cancel)"
        resp = self.http.put(made["upload_url"], data=self.data, timeout=TIMEOUT)
        if resp.status_code < 400:
            raise StepFailed(f"the cancelled session took the bytes ({resp.status_code})")
        return f"cancelled; its session refuses bytes ({resp.status_code})"

    def clean_up(self) -> None:
        if self.endpoint is not None:
            try:
                endpoints.remove_endpoint(self.db, self.endpoint.id)
            except Exception:  # noqa: BLE001 - the run's verdict stands; say what is left behind
                self.out(
                    f"note  could not remove webhook endpoint {self.endpoint.id}: "
                    "python -m lib.admin remove-webhook removes it"
                )
        for upload_id in self.made:
            try:
                self.http.post(f"{self.api}/v1/uploads/{upload_id}/cancel", headers=self.auth, timeout=TIMEOUT)
            except requests.RequestException:
                self.out(f"note  could not cancel {upload_id}; it expires within the hour")


def _error(resp: requests.Response) -> str:
    try:
        error = resp.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return resp.text[:200]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.smoke", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--api-url", required=True, help="the API's base URL (https://api.<domain>, or the function's)")
    parser.add_argument(
        "--api-key-file",
        type=argparse.FileType("r"),
        help="a file holding the API key (a test-mode fl_test_ key is enough; - for standard input); "
        "default: $FRAMELANE_API_KEY",
    )
    parser.add_argument(
        "--emulators",
        action="store_true",
        help="the deployment is `make run`'s (skips what only Google runs, saying why)",
    )
    parser.add_argument(
        "--event-seconds",
        type=float,
        default=10.0,
        help="how long the storage event may take to complete an upload (default 10)",
    )
    parser.add_argument(
        "--webhook-url",
        help="also prove webhooks: a receiver answering 2xx (needs the ops "
        "credentials and GOOGLE_CLOUD_PROJECT; the endpoint is removed at the end)",
    )
    parser.add_argument(
        "--webhook-seconds",
        type=float,
        default=60.0,
        help="how long the upload.completed delivery may take (default 60)",
    )
    args = parser.parse_args(argv)
    if args.event_seconds < 3:
        parser.error("--event-seconds must be 3 or more: the step tells the event's completion from a GET's by it")
    if args.api_key_file is not None:
        with args.api_key_file:
            api_key = args.api_key_file.read().strip()
    else:
        api_key = os.environ.get("FRAMELANE_API_KEY", "").strip()
    if not api_key:
        parser.error(
            "no API key: set FRAMELANE_API_KEY or pass --api-key-file (never the key itself: "
            "a command line is visible to every user of the machine)"
        )
    return Smoke(
        args.api_url,
        api_key,
        args.emulators,
        args.event_seconds,
        webhook_url=args.webhook_url,
        webhook_seconds=args.webhook_seconds,
    ).run()


if __name__ == "__main__":
    sys.exit(main())
