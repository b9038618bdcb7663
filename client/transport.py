"""HTTP for the upload command: one keep-alive session, and the retry policy
every request shares (the API's and the storage session's).

Retried: connection errors, timeouts, 5xx, 429 and 409 `idempotency_key_in_use`,
waiting the longer of an exponential backoff with full jitter and the answer's
`Retry-After` (a 429's wait is noted on stderr: the workspace's limits,
docs/api.md). Bounded twice: `attempts` tries in a row, and `budget` seconds
since the last progress. A retry that would wait past the budget gives up at once.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
from requests.adapters import HTTPAdapter

# Statuses worth the same request again. 409 only for `idempotency_key_in_use`
# (the first request with this key is still running); see `Retry.transient`.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class GaveUp(Exception):
    """Retries ran out (attempts or time); `last` says what the last try got."""

    def __init__(self, last: str):
        super().__init__(last)
        self.last = last


def retry_after(response: requests.Response | None, now: float | None = None) -> float | None:
    """Seconds the answer asks us to wait (`Retry-After`: seconds or an HTTP date), if any."""
    if response is None:
        return None
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def describe(outcome: requests.Response | Exception) -> str:
    if isinstance(outcome, requests.Response):
        return f"HTTP {outcome.status_code}"
    if isinstance(outcome, requests.Timeout):
        return "timed out"
    if isinstance(outcome, requests.ConnectionError):
        return "connection failed"
    return str(outcome) or type(outcome).__name__


@dataclass
class Retry:
    """Backoff state for one run of the command. `progress()` resets it."""

    attempts: int = 8
    budget: float = 300.0
    base: float = 1.0
    cap: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    # Told when a 429 makes us wait (the command writes it on stderr).
    note: Callable[[str], None] = lambda text: None
    _failures: int = field(default=0, init=False)
    _since: float | None = field(default=None, init=False)

    def progress(self) -> None:
        self._failures = 0
        self._since = None

    @staticmethod
    def transient(outcome: requests.Response | Exception) -> bool:
        if isinstance(outcome, (requests.ConnectionError, requests.Timeout)):
            return True
        if not isinstance(outcome, requests.Response):
            return False
        if outcome.status_code == 409:
            return _error_code(outcome) == "idempotency_key_in_use"
        return outcome.status_code in TRANSIENT_STATUSES

    def wait(self, outcome: requests.Response | Exception) -> None:
        """Sleep before the next try, or raise GaveUp if the bounds are reached."""
        now = self.clock()
        if self._since is None:
            self._since = now
        self._failures += 1
        if self._failures >= self.attempts:
            raise GaveUp(f"{describe(outcome)}, {self._failures} tries in a row")
        delay = random.uniform(0, min(self.cap, self.base * 2 ** (self._failures - 1)))
        asked = retry_after(outcome) if isinstance(outcome, requests.Response) else None
        if asked is not None:
            delay = max(delay, asked)
        if now - self._since + delay > self.budget:
            raise GaveUp(f"{describe(outcome)}, and {self.budget:.0f} s without progress")
        if isinstance(outcome, requests.Response) and outcome.status_code == 429:
            self.note(
                f"{_error_code(outcome) or 'HTTP 429'}: waiting {delay:.0f} s as asked "
                f"(Retry-After: {outcome.headers.get('Retry-After', 'none')}), then trying again"
            )
        self.sleep(delay)


def _error_code(response: requests.Response) -> str | None:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


class _BigBlocks(HTTPAdapter):
    # urllib3 sends a file-like body in 16 KiB reads; 1 MiB ones cost fewer
    # system calls and the same memory as the chunk we would otherwise hold.
    def init_poolmanager(self, *args, **kwargs):
        kwargs["blocksize"] = 1 << 20
        super().init_poolmanager(*args, **kwargs)


def session(user_agent: str) -> requests.Session:
    http = requests.Session()
    adapter = _BigBlocks(max_retries=0)
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    http.headers["User-Agent"] = user_agent
    return http
