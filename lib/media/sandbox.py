"""The parent's side of a check: the decoding child started, limited, and served byte ranges within the budget.

The child (`lib/media/probe.py`) is started with an empty environment and nothing inherited but
its three pipes; it limits itself (memory, CPU time, file writes, open files) and installs a seccomp
filter (no sockets, no programs) before it reads a byte of the object. Then it asks for ranges:

    child -> parent   b"S"                              started: limits and filter in place
                      b"R" offset:u64 length:u32         a read
                      b"V" size:u32 json                 the verdict (lib/media/facts.py Verdict's fields)
    parent -> child   size:i32 bytes                     the range (it may be longer than asked: a
                                                         window), or size -1: the budget is spent

The parent makes every read through `fetch`, in windows that double along a sequential run (an
index at either end of a long file is a few large reads, not one per box), counts bytes and reads
against the `Budget`, and enforces a wall-clock deadline of its own: past it the check is
`CheckTimedOut` (Storage or the machine was slow: the caller answers 503 and the upload stays
pending), never a verdict. A child that dies is a verdict about its bytes (a decoder crashed or ran
out of CPU or memory on them), unless it died before saying it started: that is ours, `EngineFailed`.

Why this is ours: the decoders (PyAV, Pillow, fontTools) read a file object for as long as they like.
What a check may take is counted where those reads are served (bytes and reads, here) and bounded by
the kernel in the child (setrlimit for CPU time and memory, seccomp for what it may call); what joins
the two is this protocol, a child asking its parent for each range, which is particular to how the
bytes reach us (ranged reads of one Storage object) and so written here.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from lib.media.facts import UNREADABLE_MEDIA, Budget, Media, Usage, Verdict

Fetch = Callable[[int, int], bytes]  # bytes [start, end) of the object

BUDGET = Budget()
# Checks one instance runs at once; each child may take Budget.memory_bytes of address space
# (terraform/variables.tf's memory is sized for this many beside the requests).
CHECKS_AT_ONCE = 2
_SLOTS = threading.BoundedSemaphore(CHECKS_AT_ONCE)
VERDICT_BYTES = 64 * 1024  # the most a child's verdict may hold; more is a child gone wrong
REASON_CHARS = 400  # of a refusal's reason kept (it becomes the rejection's message)
_CHILD = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); from lib.media.probe import main; main(sys.argv[2:])"
)


class CheckTimedOut(Exception):
    """The check did not finish within its wall-clock deadline: no verdict (the caller's 503)."""


class EngineFailed(Exception):
    """The decoding child could not start or load its engine (a broken deployment, not the bytes): no verdict."""


def check(declared: str, size: int, fetch: Fetch, deadline: float, budget: Budget = BUDGET) -> Verdict:
    """The verdict on an object of `size` bytes read through `fetch`, declared `declared` (a canonical
    content type); `deadline` is a time.monotonic() past which the check is abandoned (CheckTimedOut).
    Whatever `fetch` raises (Storage unavailable, the object gone) is raised as it is."""
    if size == 0:
        return Verdict(None, "content_mismatch", f"The object is empty, so it is not {declared}.")
    if not _SLOTS.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise CheckTimedOut("every check slot stayed busy until the deadline")
    try:
        return _Session(declared, size, fetch, deadline, budget).run()
    finally:
        _SLOTS.release()


class _Session:
    """One child, from start to verdict."""

    def __init__(self, declared: str, size: int, fetch: Fetch, deadline: float, budget: Budget):
        self.declared, self.size, self.fetch, self.deadline, self.budget = declared, size, fetch, deadline, budget
        self.usage = Usage()
        self.window = budget.first_window
        self.next_sequential = -1
        self.buffer = b""

    def run(self) -> Verdict:
        paths = json.dumps([p for p in sys.path if p])  # where this interpreter finds lib and the engines
        limits = json.dumps(
            {
                "memory_bytes": self.budget.memory_bytes,
                "cpu_seconds": self.budget.cpu_seconds,
                "max_pixels": self.budget.max_pixels,
                "max_bytes": self.budget.max_bytes,
            }
        )
        self.child = subprocess.Popen(  # our own interpreter and module, no shell
            [sys.executable, "-I", "-c", _CHILD, paths, self.declared, str(self.size), limits],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={"LC_ALL": "C.UTF-8"},
            close_fds=True,
            start_new_session=True,
        )
        assert self.child.stdin is not None
        assert self.child.stdout is not None
        self.to_child, self.from_child = self.child.stdin.fileno(), self.child.stdout.fileno()
        started = False
        try:
            while True:
                tag = self._receive(1)
                if tag == b"S":
                    started = True
                elif tag == b"R" and started and len(request := self._receive(12)) == 12:
                    self._serve(*struct.unpack(">QI", request))
                elif tag == b"V" and started and (said := self._said()) is not None:
                    return self._verdict(said)
                else:  # anything else, or a message cut off, is the child ending
                    return self._died(started)
        finally:
            self._end()

    def _said(self) -> dict[str, object] | None:
        """The verdict's fields, or None where the child did not finish saying them (or said too much)."""
        size = self._receive(4)
        length = struct.unpack(">I", size)[0] if len(size) == 4 else VERDICT_BYTES + 1
        body = self._receive(length) if length <= VERDICT_BYTES else b""
        try:
            said = json.loads(body) if len(body) == length else None
        except ValueError:
            return None
        return said if isinstance(said, dict) else None

    def _serve(self, offset: int, length: int) -> None:
        if offset >= self.size:
            self._send(struct.pack(">i", 0))
            return
        # A whole window if the budget allows, else the least that answers, else the budget is spent.
        reads, spent = self.usage.reads, self.usage.bytes_read
        for end in (min(self.size, offset + max(length, self._window(offset))), min(self.size, offset + length)):
            if reads < self.budget.max_reads and spent + end - offset <= self.budget.max_bytes:
                break
        else:
            self._send(struct.pack(">i", -1))
            return
        data = self.fetch(offset, end)
        self.usage.reads += 1
        self.usage.bytes_read += len(data)
        self.next_sequential = offset + len(data)
        self._send(struct.pack(">i", len(data)) + data)

    def _window(self, offset: int) -> int:
        """Reads along a sequential run double their window; a seek starts again from the first."""
        self.window = (
            min(self.window * 2, self.budget.max_window) if offset == self.next_sequential else self.budget.first_window
        )
        return self.window

    def _verdict(self, said: dict[str, object]) -> Verdict:
        if said.get("engine_failed"):
            raise EngineFailed(f"the media check's child could not run its engine: {said['engine_failed']}")
        media = said.get("media")
        facts = None
        if isinstance(media, dict):
            facts = Media.sane(
                media.get("duration_seconds"),
                media.get("width"),
                media.get("height"),
                tuple(str(codec) for codec in media.get("codecs") or ()),
            )
        cpu_ms = said.get("cpu_ms")
        self.usage.cpu_ms = float(cpu_ms) if isinstance(cpu_ms, int | float) else 0.0
        self.usage.sandbox = str(said.get("sandbox") or "")
        peak = said.get("peak_rss_kib")
        self.usage.peak_rss_kib = peak if isinstance(peak, int) else 0
        code = None if facts else str(said.get("code") or UNREADABLE_MEDIA)
        failure = str(said["failure"])[:100] if said.get("failure") else None
        return Verdict(facts, code, str(said.get("reason") or "")[:REASON_CHARS], failure, self.usage)

    def _died(self, started: bool) -> Verdict:
        try:
            status = self.child.wait(timeout=max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise CheckTimedOut("the media check's child closed its pipe but did not exit") from None
        if not started:
            raise EngineFailed(f"the media check's child exited with {status} before it started")
        if status in (-signal.SIGXCPU, -signal.SIGKILL):  # the soft and the hard CPU limit
            reason = f"decoding it took more than {self.budget.cpu_seconds} s of CPU time"
            self.usage.cpu_ms = self.budget.cpu_seconds * 1000.0
            return Verdict(None, UNREADABLE_MEDIA, reason, "CpuTimeExceeded", self.usage)
        name = signal.Signals(-status).name if status < 0 else f"exit {status}"
        return Verdict(None, UNREADABLE_MEDIA, "a decoder failed on it", name, self.usage)

    def _receive(self, count: int) -> bytes:
        """Exactly `count` bytes from the child, b"" if it closed its side first."""
        while len(self.buffer) < count:
            self._wait(self.from_child, readable=True)
            chunk = os.read(self.from_child, max(65536, count - len(self.buffer)))
            if not chunk:
                return b""
            self.buffer += chunk
        out, self.buffer = self.buffer[:count], self.buffer[count:]
        return out

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._wait(self.to_child, readable=False)
            try:
                view = view[os.write(self.to_child, view[: 1024 * 1024]) :]
            except BrokenPipeError:
                return  # the child is gone; its exit is read next

    def _wait(self, fd: int, readable: bool) -> None:
        left = self.deadline - time.monotonic()
        ready = select.select([fd], [], [], max(0.0, left)) if readable else select.select([], [fd], [], max(0.0, left))
        if not any(ready):
            raise CheckTimedOut("the media check ran past its deadline")

    def _end(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
        self.child.wait()
        for pipe in (self.child.stdin, self.child.stdout):
            if pipe is not None:
                pipe.close()
