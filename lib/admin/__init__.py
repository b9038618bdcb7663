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
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from google.cloud import firestore

from lib.admin import hooks, keys, limits
from lib.api import auth
from lib.platform import config
from lib.platform.clients import firestore_client
from lib.platform.config import ConfigError, FirestoreSettings
from lib.platform.errors import ServiceUnavailable
from lib.uploads import lifecycle


def _workspace(value: str) -> str:
    if not auth.WORKSPACE_ID.fullmatch(value):
        raise argparse.ArgumentTypeError("must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lib.admin", description="Manage Framelane API keys and webhook endpoints."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = _adder(commands)

    create = add("create-key", "create a key and print it once", '{"id","key","workspace_id","prefix","mode"}')
    create.add_argument("--name", help="a label for people, e.g. 'render backend'")
    create.add_argument("--test", action="store_true", help="a test-mode key (fl_test_...)")
    add("list-keys", "list a workspace's keys (never the secrets)", "[...]")
    revoke = add(
        "revoke-key",
        "revoke a key; instances stop trusting it within API_KEY_CACHE_TTL_SECONDS (30 s)",
        workspace=False,
    )
    revoke.add_argument("key_id", metavar="KEY_ID", help="the id from create-key or list-keys (or the key itself)")

    hook = add(
        "add-webhook",
        "add a webhook endpoint and print its signing secret once",
        '{"id","url","workspace_id","mode","secret"}',
    )
    hook.add_argument("--url", required=True, help="https URL that receives the events")
    hook.add_argument("--test", action="store_true", help="receive test-mode uploads' events (fl_test_ keys)")
    add("list-webhooks", "list a workspace's endpoints (never the secrets)", "[...]")
    for name, text in (
        ("enable-webhook", "deliver again to an endpoint disabled after days of failures"),
        ("remove-webhook", "remove an endpoint; nothing more is sent to it after 5 s"),
    ):
        add(name, text, workspace=False).add_argument("endpoint_id", metavar="ID", help="we_..., from list-webhooks")
    rotate = add(
        "rotate-webhook-secret",
        "a new signing secret; the old one keeps signing beside it for 24 hours",
        '{"id","url","workspace_id","mode","secret","previous_secret_expires_at"}',
        workspace=False,
    )
    rotate.add_argument("endpoint_id", metavar="ID")
    deliveries = add("webhook-deliveries", "a workspace's recent delivery attempts", "[...]")
    deliveries.add_argument(
        "--limit", type=_bounded(1000), default=50, help="how many, newest first (1-1000, default 50)"
    )

    _limits_parsers(add)
    add(
        "backfill-sweep-shards",
        "give upload records from before the sharded sweep index their shard (once)",
        workspace=False,
    )
    return parser


def _adder(commands: Any) -> Callable[..., argparse.ArgumentParser]:
    """A command's parser, with `--workspace` (required) unless `workspace` is False, and `--json` when `json`
    says what it prints ("[...]": a JSON array)."""

    def add(name: str, text: str, json: str | None = None, workspace: bool = True) -> argparse.ArgumentParser:
        command: argparse.ArgumentParser = commands.add_parser(name, help=text)
        if workspace:
            command.add_argument("--workspace", required=True, type=_workspace, help="workspace id, e.g. ws_acme")
        if json:
            shape = "a JSON array" if json == "[...]" else f"only {json}"
            command.add_argument("--json", action="store_true", help=f"print {shape}")
        return command

    return add


def _limits_parsers(add: Callable[..., argparse.ArgumentParser]) -> None:
    set_limits = add("set-limits", "set a workspace's own limits (instances apply them within 5 s)")
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
    show_limits = add(
        "limits",
        "a workspace's limits and its pending uploads",
        '{"workspace_id","mode","creates_per_minute","max_pending_uploads","pending_uploads","source"}',
    )
    show_limits.add_argument("--test", action="store_true", help="count its test-mode uploads (live by default)")


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
        "create-key": keys.create,
        "list-keys": keys.list_keys,
        "revoke-key": keys.revoke,
        "add-webhook": hooks.add,
        "list-webhooks": hooks.list_webhooks,
        "remove-webhook": hooks.remove,
        "enable-webhook": hooks.enable,
        "rotate-webhook-secret": hooks.rotate_secret,
        "webhook-deliveries": hooks.deliveries,
        "backfill-sweep-shards": _backfill_sweep_shards,
        "set-limits": limits.set_limits,
        "limits": limits.show,
    }
    try:
        return commands[args.command](db, args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ServiceUnavailable:
        print("error: Firestore is unavailable; nothing was changed. Try again.", file=sys.stderr)
        return 1


def _backfill_sweep_shards(db: firestore.Client, _args: argparse.Namespace) -> int:
    read, given = lifecycle.backfill_shards(db)
    print(f"{given} of {read} upload records given a sweep shard; the sweep now reaches them all.")
    return 0
