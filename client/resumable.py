"""The GCS resumable-upload protocol, from the client's side.

https://cloud.google.com/storage/docs/performing-resumable-uploads:
- each chunk but the last is a multiple of 256 KiB, sent with
  `Content-Range: bytes FIRST-LAST/TOTAL`;
- 308 means "more, please": its `Range: bytes=0-N` says what the session holds
  (N + 1 bytes), which may be less than was sent; no `Range` means nothing;
- 200 or 201 means the object is finalized, and its body is the object's
  resource: its `size` and `crc32c`, which the command checks against the file;
- after an interruption, `PUT` with `Content-Range: bytes */TOTAL` and no body
  asks the session how much it holds, and the upload goes on from there.
A cancelled session answers 499, an expired one 404 or 410 (the same set
`lib/uploads/gcs_sessions.py` reads when it cancels sessions). Redirects are never
followed: a session URL is the whole address, and GCS's 308 carries no `Location`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import requests

from client.transport import Retry

CHUNK_QUANTUM = 256 * 1024
SESSION_ENDED = frozenset({404, 410, 499})
_RANGE = re.compile(r"bytes=0-([0-9]+)")
# Bounds on a session that misbehaves: how often its offset may go back, and
# how many bytes may be sent for a file in all (every chunk three times over).
MAX_REGRESSIONS = 3
MAX_SENT_FACTOR = 3


class SessionGone(Exception):
    """The session was cancelled or expired (GCS answered 499, 404 or 410)."""


class Misbehaved(Exception):
    """Storage answered what the protocol never does (a redirect, more bytes than the file
    has, an offset that keeps going back): the session cannot be trusted with the file."""


class Refused(Exception):
    """Storage refused the bytes for good (a 4xx that retrying cannot change)."""

    def __init__(self, response: requests.Response):
        text = " ".join(response.text[:300].split())
        super().__init__(f"storage answered HTTP {response.status_code}" + (f": {text}" if text else ""))
        self.status = response.status_code


class Finalized(NamedTuple):
    """The session's final answer: the object resource GCS sends with its 200 or 201."""

    resource: dict[str, Any]

    @classmethod
    def of(cls, response: requests.Response) -> Finalized:
        try:
            body = response.json()
        except ValueError:
            body = None
        return cls(body if isinstance(body, dict) else {})

    @property
    def facts(self) -> tuple[int, str] | None:
        """(size, crc32c) of the object as the answer states them; None if it does not."""
        size, crc32c = self.resource.get("size"), self.resource.get("crc32c")
        if isinstance(size, (str, int)) and str(size).isdigit() and isinstance(crc32c, str):
            return int(size), crc32c
        return None

    def differs(self, size: int, crc32c: str | None) -> str | None:
        """How the finalized object differs from a file of `size` bytes and
        `crc32c`, as far as the answer says (None: it says nothing else)."""
        facts = self.facts
        if facts is None:
            return None
        stored, stored_crc32c = facts
        if stored != size:
            return f"storage finalized {stored} bytes of the file's {size}"
        if stored_crc32c != crc32c:
            return f"the stored object's crc32c is {stored_crc32c}, the file's {crc32c}"
        return None


def persisted(response: requests.Response) -> int:
    """Bytes a 308 says the session holds."""
    match = _RANGE.fullmatch(response.headers.get("Range", "").strip())
    return int(match.group(1)) + 1 if match else 0


class _Slice:
    """Bytes [start, end) of an open file, read as they are sent: the body of
    one chunk PUT without holding the chunk in memory. It has `read` and
    `__len__` and nothing else, so requests sends it with a Content-Length."""

    def __init__(self, fd: int, start: int, end: int, sent: Callable[[int], None]):
        self._fd, self._at, self._end, self._sent = fd, start, end, sent

    def __len__(self) -> int:
        return self._end - self._at

    def read(self, size: int = -1) -> bytes:
        size = len(self) if size is None or size < 0 else min(size, len(self))
        data = os.pread(self._fd, size, self._at)
        self._at += len(data)
        self._sent(self._at)
        return data


class Uploader:
    """Sends one file to one session URL, resuming and retrying as it goes.

    `shown(n)` is told how many bytes are across (sent, then what the session
    confirms); it may go back when a retry finds the session holds less.
    """

    def __init__(
        self,
        http: requests.Session,
        url: str,
        fd: int,
        size: int,
        *,
        chunk: int,
        retry: Retry,
        timeout: float,
        shown: Callable[[int], None] = lambda n: None,
    ):
        if chunk <= 0 or chunk % CHUNK_QUANTUM:
            raise ValueError(f"chunk size must be a positive multiple of {CHUNK_QUANTUM} bytes")
        self.http, self.url, self.fd, self.size = http, url, fd, size
        self.chunk, self.retry, self.timeout, self.shown = chunk, retry, timeout, shown
        self._regressions = 0  # times the session said it holds less than it held
        self._sent = 0  # bytes sent in chunk PUTs, retries included

    def _put(self, headers: dict[str, str], body) -> requests.Response | Exception:
        try:
            return self.http.put(
                self.url, data=body, headers=headers, timeout=(10, self.timeout), allow_redirects=False
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            return exc

    def _judge(self, outcome: requests.Response | Exception) -> int | Finalized | None:
        """The session's offset after a 308, its final answer once finalized;
        else raise, or wait and return None (ask again)."""
        if isinstance(outcome, requests.Response):
            if outcome.status_code in (200, 201):
                return Finalized.of(outcome)
            if outcome.status_code in (301, 302, 303, 307) or (
                outcome.status_code == 308 and "Location" in outcome.headers
            ):
                raise Misbehaved(f"storage answered a redirect (HTTP {outcome.status_code}), which is not followed")
            if outcome.status_code == 308:
                held = persisted(outcome)
                if held > self.size:
                    raise Misbehaved(f"storage says the session holds {held} bytes of a {self.size}-byte file")
                return held
            if outcome.status_code in SESSION_ENDED:
                raise SessionGone()
            if not Retry.transient(outcome):
                raise Refused(outcome)
        self.retry.wait(outcome)
        return None

    def _spend(self, size: int) -> None:
        self._sent += size
        if self._sent > MAX_SENT_FACTOR * self.size + self.chunk:
            raise Misbehaved(
                f"{self._sent} bytes were sent for a {self.size}-byte file and the session has not finished"
            )

    def holds(self) -> int | Finalized:
        """How many bytes the session holds, or its final answer if it is
        finalized, asking until it answers."""
        while True:
            answer = self._judge(self._put({"Content-Range": f"bytes */{self.size}"}, b""))
            if answer is not None:
                return answer

    def send(self, offset: int) -> Finalized:
        """Send from `offset` until the session finalizes the object; its final answer."""
        if self.size == 0:
            # Nothing to send: `bytes */0` is the whole (empty) object, and finalizes it.
            while not isinstance(answer := self.holds(), Finalized):
                self.retry.wait(Exception("an empty file's session asked for bytes"))
            return answer
        while True:
            self.shown(offset)
            end = min(offset + self.chunk, self.size)
            self._spend(end - offset)
            body = _Slice(self.fd, offset, end, self.shown)
            result = self._judge(self._put({"Content-Range": f"bytes {offset}-{end - 1}/{self.size}"}, body))
            if result is None:
                # Failed and waited: ask the session what it kept.
                result = self.holds()
            if isinstance(result, Finalized):
                self.shown(self.size)
                return result
            if result > offset:
                self.retry.progress()
            elif result < offset:
                # The session holds less than it held before: never in GCS's protocol.
                # Go on from where it says, a few times; past that it is not to be trusted.
                self._regressions += 1
                if self._regressions > MAX_REGRESSIONS:
                    raise Misbehaved(f"the session's offset went back {self._regressions} times")
            else:
                # A 308 that took nothing: count it as a failure, so a session
                # that never moves is bounded like any other.
                self.retry.wait(Exception("no progress"))
            offset = result
