"""The ops CLI's webhook commands: add-webhook, list-webhooks, enable-webhook, remove-webhook,
rotate-webhook-secret, webhook-deliveries."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime

from google.cloud import firestore

from lib.admin.show import table
from lib.platform import clock
from lib.platform.config import allow_private_targets
from lib.webhooks import attempts, endpoints, targets


def _allow_private() -> bool:
    """WEBHOOK_ALLOW_PRIVATE_TARGETS, honoured only against the emulator: a deployment's
    endpoints must pass the rules its deliveries apply (which never allow private targets)."""
    if not allow_private_targets(os.environ):
        return False
    if os.environ.get("FIRESTORE_EMULATOR_HOST"):
        return True
    print(
        "warning: WEBHOOK_ALLOW_PRIVATE_TARGETS is ignored: it applies only with FIRESTORE_EMULATOR_HOST "
        "(a local stack), never to a deployment's Firestore",
        file=sys.stderr,
    )
    return False


def add(db: firestore.Client, args: argparse.Namespace) -> int:
    try:
        endpoint = endpoints.create_endpoint(
            db, args.workspace, "test" if args.test else "live", args.url, _allow_private(), datetime.now(UTC)
        )
    except targets.TargetRefused as exc:
        print(f"error: refused webhook URL: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(_with_secret(endpoint)))
    else:
        print(
            f"Added {endpoint.mode} webhook endpoint {endpoint.id} for workspace {endpoint.workspace_id}: "
            f"{endpoint.url}",
            file=sys.stderr,
        )
        print(endpoint.secret)
        print(
            "That is its signing secret: store it now; it cannot be shown again "
            "(rotate-webhook-secret makes a new one).",
            file=sys.stderr,
        )
    return 0


def list_webhooks(db: firestore.Client, args: argparse.Namespace) -> int:
    rows = [endpoint.public() for endpoint in endpoints.list_endpoints(db, args.workspace)]
    return table(
        rows,
        args.json,
        f"No webhook endpoints for workspace {args.workspace}.",
        (
            ("ID", 35, lambda row: row["id"]),
            ("MODE", 4, lambda row: row["mode"]),
            ("STATUS", 8, lambda row: row["status"]),
            ("SINCE", 20, lambda row: row["disabled_at"] or row["failing_since"] or "-"),
            ("CREATED", 20, lambda row: row["created_at"]),
            ("OLD SECRET UNTIL", 20, lambda row: row["previous_secret_expires_at"] or "-"),
            ("URL", 0, lambda row: row["url"]),
        ),
    )


def enable(db: firestore.Client, args: argparse.Namespace) -> int:
    endpoint = endpoints.enable(db, args.endpoint_id)
    if endpoint is None:
        return _no_endpoint(args.endpoint_id)
    print(
        f"Enabled webhook endpoint {endpoint.id} ({endpoint.url}); deliveries resume once instances' "
        f"copies of it are out of date (at most {endpoints.ENDPOINT_CACHE_SECONDS:.0f} s). Events from while "
        "it was disabled are not sent."
    )
    return 0


def remove(db: firestore.Client, args: argparse.Namespace) -> int:
    endpoint = endpoints.remove_endpoint(db, args.endpoint_id)
    if endpoint is None:
        return _no_endpoint(args.endpoint_id)
    print(
        f"Removed webhook endpoint {endpoint.id} ({endpoint.url}); nothing more is sent to it once "
        f"instances' copies of it are out of date (at most {endpoints.ENDPOINT_CACHE_SECONDS:.0f} s)."
    )
    return 0


def rotate_secret(db: firestore.Client, args: argparse.Namespace) -> int:
    endpoint = endpoints.rotate_secret(db, args.endpoint_id, datetime.now(UTC))
    if endpoint is None:
        return _no_endpoint(args.endpoint_id)
    assert endpoint.previous_secret_expires_at is not None  # a rotation always sets it
    until = clock.rfc3339(endpoint.previous_secret_expires_at)
    if args.json:
        print(json.dumps({**_with_secret(endpoint), "previous_secret_expires_at": until}))
    else:
        print(f"New signing secret for {endpoint.id} ({endpoint.url}):", file=sys.stderr)
        print(endpoint.secret)
        print(
            f"Events are signed with both the new and the old secret until {until}; "
            "switch the receiver to the new one before then.",
            file=sys.stderr,
        )
    return 0


def deliveries(db: firestore.Client, args: argparse.Namespace) -> int:
    rows = attempts.recent_deliveries(db, args.workspace, args.limit)
    return table(
        rows,
        args.json,
        f"No webhook deliveries for workspace {args.workspace} in the last 7 days.",
        (
            ("AT", 20, lambda row: row["at"]),
            ("EVENT", 36, lambda row: row["event_id"]),
            ("TYPE", 16, lambda row: row["event_type"]),
            ("ENDPOINT", 35, lambda row: row["endpoint_id"] or "-"),
            ("TRY", 3, lambda row: "-" if row["attempt"] is None else row["attempt"]),
            (
                "RESULT",
                22,
                lambda row: "dead-lettered" if row["dead_lettered"] else (row["status"] or row["error"] or "-"),
            ),
            ("MS", 0, lambda row: "-" if row["latency_ms"] is None else f"{row['latency_ms']:.0f}"),
        ),
    )


def _with_secret(endpoint: endpoints.Endpoint) -> dict[str, str]:
    """What --json prints of an endpoint whose secret is shown (add-webhook, rotate-webhook-secret): once."""
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "workspace_id": endpoint.workspace_id,
        "mode": endpoint.mode,
        "secret": endpoint.secret,
    }


def _no_endpoint(endpoint_id: str) -> int:
    print(f"error: no webhook endpoint with id {endpoint_id}", file=sys.stderr)
    return 1
