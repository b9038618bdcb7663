"""The decoding child: limits and a seccomp filter first, then the bytes, asked of the parent range by range.

Started by lib/media/sandbox.py as `python -I -c ... <paths> <declared> <size> <limits>`, never by hand;
`python -m lib.media.probe --self-test` prints what the sandbox refuses on this machine (ops can run
it where the function runs). Whatever happens while the bytes are read and decoded ends in one
verdict written to the parent; a crash or a CPU limit ends the process, which the parent reads as one.
"""

from __future__ import annotations

import ctypes
import errno
import io
import json
import os
import platform
import resource
import signal
import struct
import sys
from typing import BinaryIO

from lib.media import engines
from lib.media.facts import CONTENT_MISMATCH, UNREADABLE_MEDIA, Limits, Media, Mismatch, Unreadable


class OverBudget(OSError):
    """The parent refused a read: the check's budget of bytes or reads is spent."""


# -- the sandbox ------------------------------------------------------------------------------------


def limit(memory_bytes: int, cpu_seconds: int) -> None:
    """Address space, CPU time (SIGXCPU, then SIGKILL a second later), no file written, few files open."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails (EFBIG) instead of ending us
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))


# The system calls refused once the filter is in: no socket (so no metadata server, no network), no
# program started, no process made (threads still may: clone with CLONE_THREAD), nothing traced.
# Numbers from the kernel's syscall tables (arch/x86/entry/syscalls/syscall_64.tbl, and the generic
# table arm64 uses); the audit architecture values from include/uapi/linux/audit.h.
_ARCHES = {
    "x86_64": (
        0xC000003E,
        {
            "socket": 41,
            "socketpair": 53,
            "clone": 56,
            "fork": 57,
            "vfork": 58,
            "execve": 59,
            "ptrace": 101,
            "execveat": 322,
            "clone3": 435,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {"socket": 198, "socketpair": 199, "clone": 220, "execve": 221, "ptrace": 117, "execveat": 281, "clone3": 435},
    ),
}
_CLONE_THREAD = 0x00010000


def _bpf(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def seccomp() -> bool:
    """Install the filter (after PR_SET_NO_NEW_PRIVS); False where this machine's architecture or
    kernel does not allow it (the limits above still hold)."""
    arch = _ARCHES.get(platform.machine())
    if arch is None:
        return False
    audit_arch, numbers = arch
    ld, jeq, jset, jge, ret = 0x20, 0x15, 0x45, 0x35, 0x06
    allow, deny, nosys = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    prog = [
        _bpf(ld, 0, 0, 4),
        _bpf(jeq, 1, 0, audit_arch),
        _bpf(ret, 0, 0, 0x80000000),  # other ABI: kill
        _bpf(ld, 0, 0, 0),
        _bpf(jge, 0, 1, 0x40000000),
        _bpf(ret, 0, 0, deny),
    ]  # x32 calls refused
    for name, number in numbers.items():
        if name == "clone":  # a thread (CLONE_THREAD in its flags, args[0]) may be made; a process not
            prog += [
                _bpf(jeq, 0, 4, number),
                _bpf(ld, 0, 0, 16),
                _bpf(jset, 1, 0, _CLONE_THREAD),
                _bpf(ret, 0, 0, deny),
                _bpf(ret, 0, 0, allow),
            ]
        else:  # clone3 is ENOSYS, so the C library falls back to clone, whose flags can be read
            prog += [_bpf(jeq, 0, 1, number), _bpf(ret, 0, 0, nosys if name == "clone3" else deny)]
    prog.append(_bpf(ret, 0, 0, allow))
    code = b"".join(prog)  # past a clone check that did not match, the accumulator still holds the call number
    filters = ctypes.create_string_buffer(code)

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    program = Program(len(code) // 8, ctypes.addressof(filters))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    return bool(libc.prctl(22, 2, ctypes.byref(program), 0, 0) == 0)  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


def drop_root() -> None:
    """Run as nobody where started as root: no file of the function's, no /proc of its parent."""
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)


# -- the object, read through the parent ----------------------------------------------------------


class Remote(io.RawIOBase):
    """The object as a seekable file: each miss asks the parent for a range (it answers a window,
    maybe more than asked), kept in a few cached windows."""

    KEEP = 32 * 1024 * 1024  # bytes of windows kept; older ones are dropped

    def __init__(self, size: int, requests: BinaryIO, answers: BinaryIO):
        super().__init__()
        self.size, self.position = size, 0
        self.requests, self.answers = requests, answers
        self.windows: list[tuple[int, bytes]] = []
        self.over_budget = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, "seek before the start of the object")
        self.position = base + offset
        return self.position

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]  # io's own signature takes any buffer
        data = self.read_at(self.position, len(buffer))
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def read_at(self, offset: int, length: int) -> bytes:
        """Exactly the bytes [offset, offset + length) that exist: across windows, asking for what is missing."""
        end = min(offset + length, self.size)
        pieces = []
        while offset < end:
            piece = self._cached(offset, end) or self._ask(offset, end)
            pieces.append(piece)
            offset += len(piece)
        return b"".join(pieces)

    def _cached(self, offset: int, end: int) -> bytes:
        for start, data in self.windows:
            if start <= offset < start + len(data):
                return data[offset - start : min(end, start + len(data)) - start]
        return b""

    def _ask(self, offset: int, end: int) -> bytes:
        self.requests.write(b"R" + struct.pack(">QI", offset, min(end - offset, 2**32 - 1)))
        self.requests.flush()
        (count,) = struct.unpack(">i", _exactly(self.answers, 4))
        if count < 0:
            self.over_budget = True
            raise OverBudget(errno.EIO, "the check's budget of reads is spent")
        data = _exactly(self.answers, count)
        if not data:
            raise OSError(errno.EIO, "the parent answered no bytes inside the object")
        self.windows.append((offset, data))
        while sum(len(window) for _, window in self.windows) > self.KEEP and len(self.windows) > 1:
            self.windows.pop(0)
        return data[: end - offset]


def _exactly(stream: BinaryIO, count: int) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise SystemExit(3)  # the parent went away
    return data


# -- the check ------------------------------------------------------------------------------------


def judge(declared: str, source: Remote, limits: Limits) -> dict[str, object]:
    """The verdict's fields for the object `source` declared `declared`."""
    try:
        media: Media = engines.check(declared, source, limits)
    except Mismatch as exc:
        return {"code": CONTENT_MISMATCH, "reason": str(exc)}
    except Unreadable as exc:
        if source.over_budget:
            return _over_budget(limits.max_bytes)
        return {"code": UNREADABLE_MEDIA, "reason": str(exc)}
    except ImportError as exc:
        # A module the engine did not load before the sandbox closed: ours, not the bytes' (the parent
        # answers 503 and the upload is settled again), never a verdict on a file.
        return {"engine_failed": f"{type(exc).__name__}: {exc}"}
    except MemoryError:
        return {
            "code": UNREADABLE_MEDIA,
            "reason": "decoding it needs more memory than a check may take",
            "failure": "MemoryError",
        }
    except Exception as exc:  # noqa: BLE001 - no file may break its upload: whatever a decoder raises is a verdict
        if source.over_budget:
            return _over_budget(limits.max_bytes)
        return {"code": UNREADABLE_MEDIA, "reason": "it does not decode", "failure": type(exc).__name__}
    return {"media": media.as_record()}


def _over_budget(max_bytes: int) -> dict[str, object]:
    return {
        "code": UNREADABLE_MEDIA,
        "reason": f"it could not be checked within the verification budget ({max_bytes // 2**20} MiB of reads)",
    }


def main(argv: list[str]) -> None:
    declared, size, settings = argv[0], int(argv[1]), json.loads(argv[2])
    requests, answers = sys.stdout.buffer, sys.stdin.buffer
    sys.stdout = sys.stderr  # nothing a library prints can reach the protocol
    limit(settings["memory_bytes"], settings["cpu_seconds"])
    engines.prepare(declared)  # the engine's modules, plugins and codecs loaded while files may be read
    drop_root()
    filtered = seccomp()
    requests.write(b"S")
    requests.flush()
    said = judge(declared, Remote(size, requests, answers), Limits(settings["max_pixels"], settings["max_bytes"]))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    said["cpu_ms"] = round((usage.ru_utime + usage.ru_stime) * 1000, 1)
    said["sandbox"] = "seccomp" if filtered else "limits only"
    said["peak_rss_kib"] = peak_rss_kib()
    body = json.dumps(said, allow_nan=False).encode()
    requests.write(b"V" + struct.pack(">I", len(body)) + body)
    requests.flush()


def peak_rss_kib() -> int:
    """This process's peak resident memory since it began running this program (VmHWM: getrusage's
    ru_maxrss would count the parent's memory from before the exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def self_test() -> dict[str, str]:
    """What the sandbox refuses here, each tried after the limits, the drop and the filter (run in
    a child of its own, whose results come back through a pipe: its limits forbid writing a file)."""
    import socket
    import subprocess
    import threading

    limit(512 * 2**20, 4)
    drop_root()
    results = {"seccomp": "installed" if seccomp() else "not available here"}

    def fork() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)

    def write() -> None:
        path = f"/tmp/framelane-self-test-{os.getpid()}"
        try:
            with open(path, "wb") as out:
                out.write(b"x")
                out.flush()
        finally:
            if os.path.exists(path):
                os.unlink(path)

    attempts = {
        "socket": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close(),
        "program": lambda: subprocess.run(["/bin/true"], check=True),
        "process": fork,
        "file write": write,
    }
    for name, attempt in attempts.items():
        try:
            attempt()
        except OSError as exc:
            results[name] = f"refused ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
        else:
            results[name] = "ALLOWED"
    worker = threading.Thread(target=lambda: None)
    worker.start()
    worker.join()
    results["thread"] = "allowed"
    results["user"] = str(os.geteuid())
    return results


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        import subprocess

        child = subprocess.run(
            [sys.executable, "-m", "lib.media.probe", "--self-test-child"], capture_output=True, check=False, timeout=60
        )
        print(child.stdout.decode() or child.stderr.decode(), end="")
        sys.exit(child.returncode)
    elif sys.argv[1:] == ["--self-test-child"]:
        print(json.dumps(self_test(), indent=1))
    else:
        sys.exit("lib.media.probe is started by lib/media/sandbox.py; --self-test shows what its sandbox refuses")
