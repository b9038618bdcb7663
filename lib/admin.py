"""Ops CLI for API keys: `python -m lib.admin {create-key,list-keys,revoke-key}`.

Talks to the Firestore named by GOOGLE_CLOUD_PROJECT (and FIRESTORE_DATABASE,
default "(default)") with application default credentials, or to the emulator
when FIRESTORE_EMULATOR_HOST is set. A new key is printed once and never
stored; everything else only ever shows a key's id and display prefix.

Exit status: 0 done, 1 failed (not found, Firestore unavailable), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from typing import Sequence

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.base_query import FieldFilter

from lib import auth
from lib.clients import FIRESTORE_ATTEMPT_TIMEOUT, FIRESTORE_RETRY, firestore_client, upstream
from lib.config import ConfigError, FirestoreSettings
from lib.errors import ServiceUnavailable


def _workspace(value: str) -> str:
    if not auth.WORKSPACE_ID.fullmatch(value):
        raise argparse.ArgumentTypeError("must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lib.admin", description="Manage Framelane API keys.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    create = commands.add_parser("create-key", help="create a key and print it once")
    create.add_argument("--workspace", required=True, type=_workspace, help="workspace id, e.g. ws_acme")
    create.add_argument("--name", help="a label for people, e.g. 'render backend'")
    create.add_argument("--test", action="store_true", help="a test-mode key (fl_test_...)")
    create.add_argument("--json", action="store_true",
                        help='print only {"id","key","workspace_id","prefix","mode"}')

    listing = commands.add_parser("list-keys", help="list a workspace's keys (never the secrets)")
    listing.add_argument("--workspace", required=True, type=_workspace)
    listing.add_argument("--json", action="store_true", help="print a JSON array")

    revoke = commands.add_parser(
        "revoke-key", help="revoke a key; instances stop trusting it within API_KEY_CACHE_TTL_SECONDS (30 s)")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the id from create-key or list-keys (or the key itself)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        db = firestore_client(FirestoreSettings.from_env(os.environ))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return {"create-key": _create, "list-keys": _list, "revoke-key": _revoke}[args.command](db, args)
    except ServiceUnavailable:
        print("error: Firestore is unavailable; nothing was changed. Try again.", file=sys.stderr)
        return 1


def _create(db, args) -> int:
    with upstream():
        key, record = auth.create_key(db, args.workspace, args.name, "test" if args.test else "live")
    if args.json:
        print(json.dumps({"id": record.id, "key": key, "workspace_id": record.workspace_id,
                          "prefix": record.prefix, "mode": record.mode}))
    else:
        print(f"Created {record.mode} key {record.id} for workspace {record.workspace_id}.", file=sys.stderr)
        print(key)
        print("Store it now: it is not stored anywhere and cannot be shown again.", file=sys.stderr)
    return 0


def _list(db, args) -> int:
    query = db.collection(auth.COLLECTION).where(filter=FieldFilter("workspace_id", "==", args.workspace))
    with upstream():
        rows = [
            {"id": snap.id, "prefix": d.get("prefix"), "mode": d.get("mode"), "name": d.get("name"),
             "created_at": _iso(d.get("created_at")), "revoked_at": _iso(d.get("revoked_at"))}
            for snap in query.stream(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT * 2)
            for d in [snap.to_dict()]
        ]
    rows.sort(key=lambda row: row["created_at"] or "")
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print(f"No keys for workspace {args.workspace}.", file=sys.stderr)
        return 0
    print(f"{'ID':<64}  {'PREFIX':<12}  {'MODE':<4}  {'CREATED':<20}  {'REVOKED':<20}  NAME")
    for row in rows:
        print(f"{row['id']:<64}  {row['prefix']:<12}  {row['mode']:<4}  {row['created_at'] or '-':<20}  "
              f"{row['revoked_at'] or '-':<20}  {row['name'] or ''}")
    return 0


def _revoke(db, args) -> int:
    key_id = auth.key_id(args.key_id) if auth.is_well_formed(args.key_id) else args.key_id.lower()
    if len(key_id) != 64 or any(c not in "0123456789abcdef" for c in key_id):
        print("error: KEY_ID must be a key id (64 hex characters) as list-keys prints it", file=sys.stderr)
        return 2
    ref = db.collection(auth.COLLECTION).document(key_id)
    with upstream():
        snap = ref.get(retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)
    if not snap.exists:
        print(f"error: no key with id {key_id}", file=sys.stderr)
        return 1
    revoked_at = snap.get("revoked_at")
    if revoked_at is None:
        revoked_at = datetime.now(timezone.utc)
        try:
            with upstream():
                ref.update({"revoked_at": revoked_at},
                           option=db.write_option(last_update_time=snap.update_time),
                           retry=FIRESTORE_RETRY, timeout=FIRESTORE_ATTEMPT_TIMEOUT)
        except gexc.FailedPrecondition:
            print("error: the key changed while revoking it; run the command again", file=sys.stderr)
            return 1
    print(f"Revoked key {key_id} ({snap.get('prefix')}) at {_iso(revoked_at)}; "
          "instances that looked it up recently accept it for up to API_KEY_CACHE_TTL_SECONDS (30 s) more.")
    return 0


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":
    sys.exit(main())
