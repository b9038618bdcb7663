"""Ops CLI for API keys and webhook endpoints: `python -m lib.admin COMMAND`.

Keys: create-key, list-keys, revoke-key. Webhooks: add-webhook, list-webhooks,
enable-webhook, remove-webhook, rotate-webhook-secret, webhook-deliveries. Limits:
set-limits, limits (a workspace's creates per minute and pending uploads). Migration:
backfill-sweep-shards (once, after the deploy that shards the sweep's index).

Talks to the Firestore named by GOOGLE_CLOUD_PROJECT (and FIRESTORE_DATABASE,
default "(default)") with application default credentials, or to the emulator
when FIRESTORE_EMULATOR_HOST is set. A new key is printed once and never
stored; everything else only ever shows a key's id and display prefix. A
webhook's signing secret is printed only by add-webhook and
rotate-webhook-secret, never listed. A webhook URL is checked against the
delivery rules (lib/webhooks/targets.py) before it is stored; WEBHOOK_ALLOW_PRIVATE_TARGETS=true
allows loopback and http, as the local service does, but only against the
emulator (FIRESTORE_EMULATOR_HOST set); elsewhere it is ignored with a warning.

Exit status: 0 done, 1 failed (not found, Firestore unavailable), 2 usage
(including a webhook URL the delivery rules refuse).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from lib.api import auth
from lib.limits import counters
from lib.platform import clock, config
from lib.platform.clients import firestore_client, upstream
from lib.platform.config import ConfigError, FirestoreSettings, allow_private_targets
from lib.platform.errors import ServiceUnavailable
from lib.uploads import lifecycle
from lib.webhooks import attempts, endpoints, targets


def _workspace(value: str) -> str:
    if not auth.WORKSPACE_ID.fullmatch(value):
        raise argparse.ArgumentTypeError("must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lib.admin", description="Manage Framelane API keys and webhook endpoints."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    create = commands.add_parser("create-key", help="create a key and print it once")
    create.add_argument("--workspace", required=True, type=_workspace, help="workspace id, e.g. ws_acme")
    create.add_argument("--name", help="a label for people, e.g. 'render backend'")
    create.add_argument("--test", action="store_true", help="a test-mode key (fl_test_...)")
    create.add_argument("--json", action="store_true", help='print only {"id","key","workspace_id","prefix","mode"}')

    listing = commands.add_parser("list-keys", help="list a workspace's keys (never the secrets)")
    listing.add_argument("--workspace", required=True, type=_workspace)
    listing.add_argument("--json", action="store_true", help="print a JSON array")

    revoke = commands.add_parser(
        "revoke-key", help="revoke a key; instances stop trusting it within API_KEY_CACHE_TTL_SECONDS (30 s)"
    )
    revoke.add_argument("key_id", metavar="KEY_ID", help="the id from create-key or list-keys (or the key itself)")

    add = commands.add_parser("add-webhook", help="add a webhook endpoint and print its signing secret once")
    add.add_argument("--workspace", required=True, type=_workspace)
    add.add_argument("--url", required=True, help="https URL that receives the events")
    add.add_argument("--test", action="store_true", help="receive test-mode uploads' events (fl_test_ keys)")
    add.add_argument("--json", action="store_true", help='print only {"id","url","workspace_id","mode","secret"}')

    hooks = commands.add_parser("list-webhooks", help="list a workspace's endpoints (never the secrets)")
    hooks.add_argument("--workspace", required=True, type=_workspace)
    hooks.add_argument("--json", action="store_true", help="print a JSON array")

    enable = commands.add_parser("enable-webhook", help="deliver again to an endpoint disabled after days of failures")
    enable.add_argument("endpoint_id", metavar="ID")

    remove = commands.add_parser("remove-webhook", help="remove an endpoint; nothing more is sent to it after 5 s")
    remove.add_argument("endpoint_id", metavar="ID", help="the id from add-webhook or list-webhooks (we_...)")

    rotate = commands.add_parser(
        "rotate-webhook-secret", help="a new signing secret; the old one keeps signing beside it for 24 hours"
    )
    rotate.add_argument("endpoint_id", metavar="ID")
    rotate.add_argument(
        "--json",
        action="store_true",
        help='print only {"id","url","workspace_id","mode","secret","previous_secret_expires_at"}',
    )

    _limits_parsers(commands)

    commands.add_parser(
        "backfill-sweep-shards", help="give upload records from before the sharded sweep index their shard (once)"
    )
    deliveries = commands.add_parser("webhook-deliveries", help="a workspace's recent delivery attempts")
    deliveries.add_argument("--workspace", required=True, type=_workspace)
    deliveries.add_argument(
        "--limit", type=_bounded(1000), default=50, help="how many, newest first (1-1000, default 50)"
    )
    deliveries.add_argument("--json", action="store_true", help="print a JSON array")
    return parser


def _limits_parsers(commands: Any) -> None:
    set_limits = commands.add_parser(
        "set-limits", help="set a workspace's own limits (instances apply them within 5 s)"
    )
    set_limits.add_argument("--workspace", required=True, type=_workspace)
    set_limits.add_argument(
        "--creates-per-minute",
        type=_bounded(config.MAX_CREATES_PER_MINUTE),
        help=f"uploads it may create in any 60 s (1-{config.MAX_CREATES_PER_MINUTE})",
    )
    set_limits.add_argument(
        "--max-pending-uploads",
        type=_bounded(config.MAX_PENDING_UPLOADS),
        help=f"uploads it may have pending at once (1-{config.MAX_PENDING_UPLOADS})",
    )
    show_limits = commands.add_parser("limits", help="a workspace's limits and its pending uploads")
    show_limits.add_argument("--workspace", required=True, type=_workspace)
    show_limits.add_argument("--test", action="store_true", help="count its test-mode uploads (live by default)")
    show_limits.add_argument(
        "--json",
        action="store_true",
        help='print {"workspace_id","mode","creates_per_minute","max_pending_uploads","pending_uploads","source"}',
    )


def _bounded(maximum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError("must be a whole number") from None
        if not 1 <= number <= maximum:
            raise argparse.ArgumentTypeError(f"must be between 1 and {maximum}")
        return number

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        db = firestore_client(FirestoreSettings.from_env(os.environ))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    commands = {
        "create-key": _create,
        "list-keys": _list,
        "revoke-key": _revoke,
        "add-webhook": _add_webhook,
        "list-webhooks": _list_webhooks,
        "remove-webhook": _remove_webhook,
        "enable-webhook": _enable_webhook,
        "rotate-webhook-secret": _rotate_webhook_secret,
        "webhook-deliveries": _webhook_deliveries,
        "backfill-sweep-shards": _backfill_sweep_shards,
        "set-limits": _set_limits,
        "limits": _limits,
    }
    try:
        return commands[args.command](db, args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ServiceUnavailable:
        print("error: Firestore is unavailable; nothing was changed. Try again.", file=sys.stderr)
        return 1


def _create(db, args) -> int:
    with upstream():
        key, record = auth.create_key(db, args.workspace, args.name, "test" if args.test else "live")
    if args.json:
        print(
            json.dumps(
                {
                    "id": record.id,
                    "key": key,
                    "workspace_id": record.workspace_id,
                    "prefix": record.prefix,
                    "mode": record.mode,
                }
            )
        )
    else:
        print(f"Created {record.mode} key {record.id} for workspace {record.workspace_id}.", file=sys.stderr)
        print(key)
        print("Store it now: it is not stored anywhere and cannot be shown again.", file=sys.stderr)
    return 0


def _list(db, args) -> int:
    rows = [
        {**row, "created_at": _iso(row["created_at"]), "revoked_at": _iso(row["revoked_at"])}
        for row in auth.list_keys(db, args.workspace)
    ]
    return _show(
        rows,
        args.json,
        f"No keys for workspace {args.workspace}.",
        (
            ("ID", 64, lambda row: row["id"]),
            ("PREFIX", 12, lambda row: row["prefix"]),
            ("MODE", 4, lambda row: row["mode"]),
            ("CREATED", 20, lambda row: row["created_at"] or "-"),
            ("REVOKED", 20, lambda row: row["revoked_at"] or "-"),
            ("NAME", 0, lambda row: row["name"] or ""),
        ),
    )


Column = tuple[str, int, Callable[[dict], Any]]  # title, width (0: the last, unpadded), value


def _show(rows: list[dict], as_json: bool, empty: str, columns: tuple[Column, ...]) -> int:
    """`rows` as a JSON array, or as a table (or `empty`, on stderr, when there are none)."""
    if as_json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print(empty, file=sys.stderr)
        return 0
    print("  ".join(f"{title:<{width}}" if width else title for title, width, _ in columns))
    for row in rows:
        print("  ".join(f"{value(row)!s:<{width}}" if width else str(value(row)) for _, width, value in columns))
    return 0


def _revoke(db, args) -> int:
    key_id = auth.key_id(args.key_id) if auth.is_well_formed(args.key_id) else args.key_id.lower()
    if len(key_id) != 64 or any(c not in "0123456789abcdef" for c in key_id):
        print("error: KEY_ID must be a key id (64 hex characters) as list-keys prints it", file=sys.stderr)
        return 2
    try:
        revoked = auth.revoke(db, key_id, datetime.now(UTC))
    except auth.KeyChanged:
        print("error: the key changed while revoking it; run the command again", file=sys.stderr)
        return 1
    if revoked is None:
        print(f"error: no key with id {key_id}", file=sys.stderr)
        return 1
    print(
        f"Revoked key {key_id} ({revoked.prefix}) at {_iso(revoked.revoked_at)}; "
        "instances that looked it up recently accept it for up to API_KEY_CACHE_TTL_SECONDS (30 s) more."
    )
    return 0


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


def _add_webhook(db, args) -> int:
    try:
        endpoint = endpoints.create_endpoint(
            db, args.workspace, "test" if args.test else "live", args.url, _allow_private(), datetime.now(UTC)
        )
    except targets.TargetRefused as exc:
        print(f"error: refused webhook URL: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "id": endpoint.id,
                    "url": endpoint.url,
                    "workspace_id": endpoint.workspace_id,
                    "mode": endpoint.mode,
                    "secret": endpoint.secret,
                }
            )
        )
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


def _list_webhooks(db, args) -> int:
    rows = [endpoint.public() for endpoint in endpoints.list_endpoints(db, args.workspace)]
    return _show(
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


def _enable_webhook(db, args) -> int:
    endpoint = endpoints.enable(db, args.endpoint_id)
    if endpoint is None:
        print(f"error: no webhook endpoint with id {args.endpoint_id}", file=sys.stderr)
        return 1
    print(
        f"Enabled webhook endpoint {endpoint.id} ({endpoint.url}); deliveries resume once instances' "
        f"copies of it are out of date (at most {endpoints.ENDPOINT_CACHE_SECONDS:.0f} s). Events from while "
        "it was disabled are not sent."
    )
    return 0


def _remove_webhook(db, args) -> int:
    endpoint = endpoints.remove_endpoint(db, args.endpoint_id)
    if endpoint is None:
        print(f"error: no webhook endpoint with id {args.endpoint_id}", file=sys.stderr)
        return 1
    print(
        f"Removed webhook endpoint {endpoint.id} ({endpoint.url}); nothing more is sent to it once "
        f"instances' copies of it are out of date (at most {endpoints.ENDPOINT_CACHE_SECONDS:.0f} s)."
    )
    return 0


def _rotate_webhook_secret(db, args) -> int:
    endpoint = endpoints.rotate_secret(db, args.endpoint_id, datetime.now(UTC))
    if endpoint is None:
        print(f"error: no webhook endpoint with id {args.endpoint_id}", file=sys.stderr)
        return 1
    assert endpoint.previous_secret_expires_at is not None  # a rotation always sets it
    until = clock.rfc3339(endpoint.previous_secret_expires_at)
    if args.json:
        print(
            json.dumps(
                {
                    "id": endpoint.id,
                    "url": endpoint.url,
                    "workspace_id": endpoint.workspace_id,
                    "mode": endpoint.mode,
                    "secret": endpoint.secret,
                    "previous_secret_expires_at": until,
                }
            )
        )
    else:
        print(f"New signing secret for {endpoint.id} ({endpoint.url}):", file=sys.stderr)
        print(endpoint.secret)
        print(
            f"Events are signed with both the new and the old secret until {until}; "
            "switch the receiver to the new one before then.",
            file=sys.stderr,
        )
    return 0


def _webhook_deliveries(db, args) -> int:
    rows = attempts.recent_deliveries(db, args.workspace, args.limit)
    return _show(
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


def _set_limits(db, args) -> int:
    if args.creates_per_minute is None and args.max_pending_uploads is None:
        print("error: give --creates-per-minute, --max-pending-uploads or both", file=sys.stderr)
        return 2
    with upstream():
        now = _limits_of(counters.set_limits(db, args.workspace, args.creates_per_minute, args.max_pending_uploads))
    print(
        f"Workspace {args.workspace} may create {now.creates_per_minute} uploads a minute and have "
        f"{now.max_pending_uploads} pending (test and live each); instances apply it within "
        f"{counters.LIMITS_CACHE_SECONDS + 1:.0f} s."
    )
    return 0


def _limits(db, args) -> int:
    mode = "test" if args.test else "live"
    with upstream():
        own = counters.stored(db, args.workspace)
    now = _limits_of(own)
    row = {
        "workspace_id": args.workspace,
        "mode": mode,
        "creates_per_minute": now.creates_per_minute,
        "max_pending_uploads": now.max_pending_uploads,
        "pending_uploads": lifecycle.pending_count(db, args.workspace, mode),
        "source": "workspace" if own else "default",
    }
    if args.json:
        print(json.dumps(row))
        return 0
    print(
        f"Workspace {args.workspace} ({mode}): {row['creates_per_minute']} creates a minute, "
        f"{row['pending_uploads']} of {row['max_pending_uploads']} uploads pending "
        f"({'its own limits' if own else 'the defaults'})."
    )
    return 0


def _limits_of(own: dict[str, Any] | None) -> counters.Limits:
    """A workspace's limits from its own figures (`own`, as stored), the deployment's defaults
    (CREATES_PER_MINUTE, MAX_PENDING_UPLOADS, as the function reads them) for what it leaves out."""
    return counters.of(own, counters.Limits(*config.limits_defaults(os.environ)))


def _backfill_sweep_shards(db, _args) -> int:
    read, given = lifecycle.backfill_shards(db)
    print(f"{given} of {read} upload records given a sweep shard; the sweep now reaches them all.")
    return 0


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return clock.rfc3339(value)


if __name__ == "__main__":
    sys.exit(main())
