"""What a rerun needs to resume an upload, kept in the user's cache directory.

One JSON file per (API, key, file): the upload id, its session URL (a secret:
it lets anyone write the object), and the file's identity when the upload
began. The directory is 0700 and each file 0600, written whole by rename, and
removed when the upload ends. The API key itself is never written: only a
fingerprint of it goes into the file's name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import platformdirs

VERSION = 1


@dataclass(frozen=True)
class FileId:
    """A file as `stat` sees it: if any of these changed, so may its bytes."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> FileId:
        real = os.path.realpath(path)
        st = os.stat(real)
        return cls(real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Saved:
    upload_id: str
    upload_url: str
    source_url: str
    crc32c: str | None
    file: FileId

    def to_json(self) -> str:
        return json.dumps({"version": VERSION, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> Saved:
        data = json.loads(text)
        if data.pop("version", None) != VERSION:
            raise ValueError("unknown version")
        return cls(**{**data, "file": FileId(**data["file"])})


def directory() -> Path:
    # $XDG_CACHE_HOME/framelane/uploads on Linux, ~/Library/Caches/... on macOS.
    return platformdirs.user_cache_path("framelane", appauthor=False) / "uploads"


def path_for(api_url: str, api_key: str, file: FileId) -> Path:
    fingerprint = hashlib.sha256(api_key.encode()).hexdigest()
    name = hashlib.sha256("\0".join((api_url.rstrip("/"), fingerprint, file.path)).encode()).hexdigest()
    return directory() / f"{name[:40]}.json"


def load(path: Path) -> Saved | None:
    """The saved state, or None if there is none (or it is unreadable, which
    is said on stderr by the caller: then the upload starts afresh)."""
    try:
        return Saved.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError):
        path.unlink(missing_ok=True)
        return None


def save(path: Path, saved: Saved) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, saved.to_json().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def every() -> Iterator[tuple[Path, Saved]]:
    """Every saved upload of this user (for `cancel`, which knows only the id)."""
    for path in sorted(directory().glob("*.json")):
        saved = load(path)
        if saved is not None:
            yield path, saved
