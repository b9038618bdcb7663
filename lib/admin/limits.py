"""The ops CLI's limits commands: set-limits, limits (lib/limits/counters.py keeps them)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from google.cloud import firestore

from lib.limits import quotas
from lib.platform import config
from lib.platform.clients import upstream
from lib.uploads import lifecycle


def set_limits(db: firestore.Client, args: argparse.Namespace) -> int:
    if args.creates_per_minute is None and args.max_pending_uploads is None:
        print("error: give --creates-per-minute, --max-pending-uploads or both", file=sys.stderr)
        return 2
    with upstream():
        now = _limits_of(quotas.set_limits(db, args.workspace, args.creates_per_minute, args.max_pending_uploads))
    print(
        f"Workspace {args.workspace} may create {now.creates_per_minute} uploads a minute and have "
        f"{now.max_pending_uploads} pending (test and live each); instances apply it within "
        f"{quotas.LIMITS_CACHE_SECONDS + 1:.0f} s."
    )
    return 0


def show(db: firestore.Client, args: argparse.Namespace) -> int:
    mode = "test" if args.test else "live"
    with upstream():
        own = quotas.stored(db, args.workspace)
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


def _limits_of(own: dict[str, Any] | None) -> quotas.Limits:
    """A workspace's limits from its own figures (`own`, as stored), the deployment's defaults
    (CREATES_PER_MINUTE, MAX_PENDING_UPLOADS, as the function reads them) for what it leaves out."""
    return quotas.of(own, quotas.Limits(*config.limits_defaults(os.environ)))
