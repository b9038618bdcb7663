"""The ops CLI's key commands: create-key, list-keys, revoke-key (lib/api/auth.py owns the collection)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from google.cloud import firestore

from lib.admin.show import iso, table
from lib.api import auth
from lib.platform.clients import upstream


def create(db: firestore.Client, args: argparse.Namespace) -> int:
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


def list_keys(db: firestore.Client, args: argparse.Namespace) -> int:
    rows = [
        {**row, "created_at": iso(row["created_at"]), "revoked_at": iso(row["revoked_at"])}
        for row in auth.list_keys(db, args.workspace)
    ]
    return table(
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


def revoke(db: firestore.Client, args: argparse.Namespace) -> int:
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
        f"Revoked key {key_id} ({revoked.prefix}) at {iso(revoked.revoked_at)}; "
        "instances that looked it up recently accept it for up to API_KEY_CACHE_TTL_SECONDS (30 s) more."
    )
    return 0
