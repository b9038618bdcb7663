"""What the ops CLI prints: tables a person reads, or JSON a script reads."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from lib.platform import clock

Column = tuple[str, int, Callable[[dict[str, Any]], Any]]  # title, width (0: the last, unpadded), value


def table(rows: list[dict[str, Any]], as_json: bool, empty: str, columns: tuple[Column, ...]) -> int:
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


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return clock.rfc3339(value)
