"""`python -m client`: upload a file to Framelane, resumably; look one up; cancel one.

    python -m client upload FILE [--content-type T] [--json] [--quiet]
    python -m client status ID
    python -m client cancel ID

The key comes from FRAMELANE_API_KEY and the API from FRAMELANE_API_URL (or
--api-key / --api-url). Exit statuses are EXIT_* below, and in docs/clients.md.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import mimetypes
import os
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests

from client import state
from client.resumable import CHUNK_QUANTUM, Finalized, Misbehaved, Refused, SessionGone, Uploader
from client.transport import GaveUp, Retry, session
from lib.media.mediatypes import ALIASES, EXTENSIONS

EXIT_OK = 0
EXIT_REFUSED = 1  # the API or storage said no: `code: message` on stderr
EXIT_USAGE = 2  # bad arguments, no key or URL, unreadable file, unknown type
EXIT_FILE_CHANGED = 3  # the file changed since its upload was interrupted
EXIT_GAVE_UP = 4  # retries ran out (network or service down); rerun to resume
EXIT_NOT_THE_FILE = 5  # what landed is not the file (storage or the service says so); rerun to upload anew
EXIT_NOT_MEDIA = 6  # the service read the file: it is not the content type declared; a rerun will not help
EXIT_INTERRUPTED = 130  # Ctrl-C; rerun to resume

# What a session says, as the command goes on from it: an offset to send from, its final
# answer (finalized), or None (an earlier run finished it; the session is gone).
Answer = int | Finalized | None

USER_AGENT = "framelane-upload/1"
DEFAULT_CHUNK = 8 * 1024 * 1024


class Failure(Exception):
    """Ends the command with `message` on stderr and `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ApiError(Failure):
    def __init__(self, response: requests.Response):
        try:
            error = response.json()["error"]
            code, message = error["code"], error["message"]
        except (ValueError, KeyError, TypeError):
            code, message = f"http_{response.status_code}", " ".join(response.text[:200].split()) or "no message"
        super().__init__(EXIT_REFUSED, f"{code}: {message}")
        self.code = code


class Api:
    def __init__(self, http: requests.Session, url: str, key: str, retry: Retry, timeout: float):
        self.http, self.url, self.key, self.retry, self.timeout = http, url.rstrip("/"), key, retry, timeout

    def call(
        self,
        method: str,
        path: str,
        *,
        body: dict | None = None,
        headers: dict | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> requests.Response:
        while True:
            try:
                response = self.http.request(
                    method,
                    self.url + path,
                    json=body,
                    allow_redirects=False,
                    timeout=(10, self.timeout),
                    headers={"Authorization": f"Bearer {self.key}", **(headers or {})},
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                outcome: requests.Response | Exception = exc
            else:
                if response.status_code in ok:
                    self.retry.progress()
                    return response
                if not Retry.transient(response):
                    raise ApiError(response)
                outcome = response
            self.retry.wait(outcome)


def guess_content_type(path: str) -> str | None:
    """Our type for the file's extension (EXTENSIONS' order decides `.mp4`:
    video), else what `mimetypes` says if we take it under that name or an alias."""
    suffix = os.path.splitext(path)[1].lstrip(".").lower()
    for name, extensions in EXTENSIONS.items():
        if suffix in extensions:
            return name
    guessed, _ = mimetypes.guess_type(path, strict=False)
    guessed = ALIASES.get(guessed or "", guessed)
    return guessed if guessed in EXTENSIONS else None


def crc32c_of(fd: int, size: int) -> str:
    """Base64 of the big-endian CRC32C, as GCS reports it (1 MiB reads)."""
    import base64

    import google_crc32c

    checksum, at = google_crc32c.Checksum(), 0
    while at < size:
        block = os.pread(fd, min(1 << 20, size - at), at)
        if not block:
            break
        checksum.update(block)
        at += len(block)
    return base64.b64encode(checksum.digest()).decode()


def idempotency_key(file: state.FileId, body: dict[str, Any], previous: str | None) -> str:
    """The same file (path, inode, size, mtime) sent as the same request (`body`: its type, name,
    size and crc32c) gives the same key, so a rerun after a crash before the state was saved gets
    the same session back; anything else the create says (another --content-type) is another
    request, so another key (the service refuses a key reused for other contents).
    `previous` is an upload of it that ended unfinished: then a new one."""
    identity = json.dumps(
        [file.path, file.device, file.inode, file.size, file.mtime_ns, body, previous], sort_keys=True
    )
    return "cli-" + hashlib.sha256(identity.encode()).hexdigest()


def parse_size(text: str) -> int:
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    lowered = text.strip().lower()
    for unit, factor in units.items():
        if lowered.endswith(unit) and lowered[: -len(unit)].strip().isdigit():
            value = int(lowered[: -len(unit)]) * factor
            break
    else:
        if not lowered.isdigit():
            raise argparse.ArgumentTypeError(f"not a size: {text!r} (bytes, or with KiB/MiB/GiB)")
        value = int(lowered)
    if value <= 0 or value % CHUNK_QUANTUM:
        raise argparse.ArgumentTypeError(f"chunk size must be a positive multiple of 256 KiB, not {text!r}")
    return value


def _described(facts: dict) -> str:
    """ "1.0 s, 64x48, h264 + aac": what the service read of the bytes (the parts their format states)."""
    parts = []
    if facts.get("duration_seconds") is not None:
        parts.append(f"{facts['duration_seconds']} s")
    if facts.get("width") is not None:
        parts.append(f"{facts['width']}x{facts['height']}")
    if facts.get("codecs"):
        parts.append(" + ".join(facts["codecs"]))
    return ", ".join(parts) or "-"


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class Progress:
    """A tqdm bar on stderr, or nothing (not a terminal, or --quiet)."""

    def __init__(self, enabled: bool, total: int, name: str, initial: int = 0):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            # `initial`: what a resumed session already holds, so the rate counts only what we send.
            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=name,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                dynamic_ncols=True,
                leave=True,
            )

    def show(self, n: int) -> None:
        if self.bar is not None and n != self.bar.n:
            self.bar.update(n - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Command:
    def __init__(self, args: argparse.Namespace, out: Callable[[str], None], note: Callable[[str], None]):
        self.args, self.out, self.note = args, out, note
        self.retry = Retry(note=note)
        self.http = session(USER_AGENT)
        self.api = Api(self.http, args.api_url, args.api_key, self.retry, args.timeout)

    # --- upload ---

    def upload(self) -> int:
        args = self.args
        try:
            file = state.FileId.of(args.file)
            fd = os.open(file.path, os.O_RDONLY)
        except OSError as exc:
            raise Failure(EXIT_USAGE, f"cannot read {args.file}: {exc.strerror}") from None
        try:
            return self._upload(file, fd)
        finally:
            os.close(fd)

    def _upload(self, file: state.FileId, fd: int) -> int:
        args = self.args
        content_type = args.content_type or guess_content_type(file.path)
        if content_type is None:
            supported = ", ".join(sorted(EXTENSIONS))
            raise Failure(
                EXIT_USAGE,
                f"cannot tell the content type of {args.file} from its name; pass --content-type (one of: {supported})",
            )
        where = state.path_for(args.api_url, args.api_key, file)
        saved, answer = self._resume(where, file, fd)
        if saved is None:
            saved, answer = self._begin(where, file, fd, content_type)
        offset = answer if isinstance(answer, int) else None
        bar = offset is not None and not args.quiet and sys.stdout.isatty() and sys.stderr.isatty()
        progress = Progress(bar, file.size, os.path.basename(file.path), offset or 0)
        try:
            if offset is not None:
                self._check_unchanged(file)
                answer = self._uploader(saved, fd, progress.show).send(offset)
        except SessionGone:
            state.remove(where)
            raise Failure(
                EXIT_REFUSED,
                f"upload {saved.upload_id} was cancelled or has expired; run the command again to start a new one",
            ) from None
        except Refused as exc:
            # Bytes other than the declared ones (size, CRC32C): the file changed under us.
            state.remove(where)
            raise Failure(EXIT_REFUSED, f"{exc}; upload {saved.upload_id} was not completed") from None
        except Misbehaved as exc:
            # Nothing more is sent to that session, now or on a rerun (which starts a new upload).
            state.remove(where)
            raise Failure(
                EXIT_REFUSED,
                f"{exc}; upload {saved.upload_id} was not completed; run the command again to start a new one",
            ) from None
        finally:
            progress.close()
        state.remove(where)
        upload = self._confirm(saved, answer if isinstance(answer, Finalized) else None)  # send() finalized
        self._done(file, saved, upload.get("media") if upload.get("status") == "completed" else None)
        return EXIT_OK

    def _done(self, file: state.FileId, saved: state.Saved, facts: dict | None) -> None:
        """Say what was uploaded: where it is served, and what the service found it holds."""
        if self.args.json:
            self.out(
                json.dumps(
                    {"id": saved.upload_id, "source_url": saved.source_url, "size_bytes": file.size, "media": facts}
                )
            )
            return
        self.out(
            f"uploaded {os.path.basename(file.path)} ({_human(file.size)})\n"
            f"id          {saved.upload_id}\nsource_url  {saved.source_url}"
            + (f"\nmedia       {_described(facts)}" if facts else "")
        )

    def _confirm(self, saved: state.Saved, final: Finalized | None) -> dict:
        """That what landed is the file, as storage's final answer says (its
        size and crc32c) and as the service records the upload, read once
        (which also makes the service settle it, if nothing had yet). At least
        one of the two must vouch for it, and neither may say otherwise.
        Returns the upload as the service showed it.

        Raises:
            Failure: the service read the file and it is not the type declared (EXIT_NOT_MEDIA); it
                is not the file, or cannot be shown to be (EXIT_NOT_THE_FILE).
        """
        size, crc32c = saved.file.size, saved.crc32c
        problems: list[str] = []
        vouched = final is not None and final.facts is not None
        differs = final.differs(size, crc32c) if final is not None else None
        if differs:
            problems.append(differs)
        upload = self.api.call("GET", f"/v1/uploads/{saved.upload_id}").json()
        status = upload.get("status")
        if status == "rejected":
            rejection = upload.get("rejection") or {}
            if rejection.get("code") in ("content_mismatch", "unreadable_media"):
                raise Failure(
                    EXIT_NOT_MEDIA,
                    f"upload {saved.upload_id}: the service read {self.args.file} and "
                    f"refused it as {upload.get('content_type')}: {rejection.get('code')}: "
                    f"{rejection.get('message')} (pass --content-type with its real "
                    "type, or convert it)",
                )
            problems.append(f"the service rejected it: {rejection.get('code')}: {rejection.get('message')}")
        elif status == "completed":
            if (upload.get("size_bytes"), upload.get("crc32c")) == (size, crc32c):
                vouched = True
            else:
                problems.append(f"the service recorded {upload.get('size_bytes')} bytes, crc32c {upload.get('crc32c')}")
        elif status != "pending":
            problems.append(f"the upload is {status}")
        if not problems and not vouched:
            problems.append("neither storage's final answer nor the service says what the object holds")
        if problems:
            raise Failure(
                EXIT_NOT_THE_FILE,
                f"upload {saved.upload_id} does not hold {self.args.file} "
                f"({'; '.join(problems)}). "
                "Run the same command again to upload the file anew.",
            )
        return upload

    def _check_unchanged(self, file: state.FileId) -> None:
        try:
            now = state.FileId.of(file.path)
        except OSError:
            now = None
        if now != file:
            raise Failure(
                EXIT_FILE_CHANGED,
                f"{self.args.file} changed while it was being uploaded; "
                "run the command again to upload it as it is now",
            )

    def _resume(self, where, file: state.FileId, fd: int) -> tuple[state.Saved | None, Answer]:
        """The saved upload of this file and what its session says (`_ask_session`),
        or (None, None) when there is nothing to resume."""
        saved = state.load(where)
        if saved is None:
            return None, None
        if saved.file != file:
            if not self.args.restart:
                raise Failure(
                    EXIT_FILE_CHANGED,
                    f"{self.args.file} changed since upload {saved.upload_id} of it was interrupted "
                    f"(it was {saved.file.size} bytes, modified at {saved.file.mtime_ns} ns; "
                    f"it is {file.size} bytes, {file.mtime_ns} ns). Rerun with --restart to cancel "
                    "that upload and upload the file as it is now.",
                )
            self._cancel_quietly(saved.upload_id)
            state.remove(where)
            return None, None
        return self._ask_session(where, saved, fd)

    def _uploader(self, saved: state.Saved, fd: int, shown: Callable[[int], None] = lambda n: None) -> Uploader:
        return Uploader(
            self.http,
            saved.upload_url,
            fd,
            saved.file.size,
            chunk=self.args.chunk_size,
            retry=self.retry,
            timeout=self.args.timeout,
            shown=shown,
        )

    def _ask_session(self, where, saved: state.Saved, fd: int) -> tuple[state.Saved | None, Answer]:
        """(saved, what its session holds or its final answer), (saved, None)
        if the session is gone and the upload completed, or (None, None) if it
        ended otherwise (its state removed)."""
        try:
            answer = self._uploader(saved, fd).holds()
        except SessionGone:
            state.remove(where)
            status = self._status(saved.upload_id)
            if status == "completed":
                return saved, None
            self.note(f"upload {saved.upload_id} was {status}; starting a new one")
            return None, None
        except Misbehaved as exc:
            state.remove(where)
            self._cancel_quietly(saved.upload_id)
            self.note(f"upload {saved.upload_id}: {exc}; starting a new one")
            return None, None
        if isinstance(answer, int) and answer:
            self.note(f"resuming upload {saved.upload_id} at {_human(answer)} of {_human(saved.file.size)}")
        return saved, answer

    def _begin(self, where, file: state.FileId, fd: int, content_type: str) -> tuple[state.Saved, Answer]:
        crc32c = crc32c_of(fd, file.size)
        self._check_unchanged(file)
        body: dict[str, Any] = {"content_type": content_type, "filename": os.path.basename(file.path), "crc32c": crc32c}
        if file.size:
            body["size_bytes"] = file.size
        previous = None
        for _ in range(3):
            response = self.api.call(
                "POST",
                "/v1/uploads",
                body=body,
                ok=(200, 201),
                headers={"Idempotency-Key": idempotency_key(file, body, previous)},
            )
            created = response.json()
            check_upload_url(self.args.api_url, created["upload_url"])
            saved = state.Saved(created["id"], created["upload_url"], created["source_url"], crc32c, file)
            state.save(where, saved)
            if response.status_code == 201:
                return saved, 0
            # A replay: an earlier run made this upload; its session says how far it got.
            standing, answer = self._ask_session(where, saved, fd)
            if isinstance(answer, Finalized) and (
                answer.differs(file.size, crc32c) or self._status(saved.upload_id) != "completed"
            ):
                # Finalized, but not as the file (the earlier run said so): a new upload.
                state.remove(where)
                self.note(f"upload {saved.upload_id} does not hold the file; starting a new one")
                standing = None
            if standing is not None:
                return standing, answer
            previous = saved.upload_id
        raise Failure(EXIT_REFUSED, "every upload session made for this file ended before it was used")

    def _status(self, upload_id: str) -> str:
        """The upload's status, when its session no longer answers: a session
        is forgotten some time after it finalized the object (and a run killed
        after the last chunk never removed its state)."""
        return self.api.call("GET", f"/v1/uploads/{upload_id}").json()["status"]

    def _cancel_quietly(self, upload_id: str) -> None:
        try:
            self.api.call("POST", f"/v1/uploads/{upload_id}/cancel")
        except ApiError as exc:
            if exc.code not in ("upload_not_found", "upload_completed"):
                raise

    # --- status, cancel ---

    def status(self) -> int:
        self.out(json.dumps(self.api.call("GET", f"/v1/uploads/{self.args.id}").json(), indent=2))
        return EXIT_OK

    def cancel(self) -> int:
        response = self.api.call("POST", f"/v1/uploads/{self.args.id}/cancel")
        for path, saved in state.every():
            if saved.upload_id == self.args.id:
                state.remove(path)
        self.out(json.dumps(response.json(), indent=2))
        return EXIT_OK


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--api-url",
        default=os.environ.get("FRAMELANE_API_URL"),
        help="the API's base URL (default: $FRAMELANE_API_URL)",
    )
    common.add_argument(
        "--api-key",
        default=os.environ.get("FRAMELANE_API_KEY"),
        help="the API key (default: $FRAMELANE_API_KEY, which keeps it out of `ps`)",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for any one answer before retrying (default 60)",
    )

    top = argparse.ArgumentParser(prog="python -m client", description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    up = commands.add_parser("upload", parents=[common], help="upload a file; rerun to resume")
    up.add_argument("file")
    up.add_argument("--content-type", help="the file's media type (default: guessed from its name)")
    up.add_argument("--json", action="store_true", help="print {id, source_url, size_bytes} as JSON")
    up.add_argument("--quiet", action="store_true", help="no progress bar and no notes")
    up.add_argument(
        "--chunk-size",
        type=parse_size,
        default=DEFAULT_CHUNK,
        metavar="SIZE",
        help="bytes per PUT, a multiple of 256 KiB (default 8MiB)",
    )
    up.add_argument(
        "--restart",
        action="store_true",
        help="if the file changed since its upload was interrupted, cancel that upload and start anew",
    )
    for name, text in (("status", "show an upload"), ("cancel", "cancel a pending upload")):
        sub = commands.add_parser(name, parents=[common], help=text)
        sub.add_argument("id")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def out(text: str) -> None:
        print(text, flush=True)

    def note(text: str) -> None:
        if not getattr(args, "quiet", False):
            print(text, file=sys.stderr, flush=True)

    if not args.api_url:
        return _fail(EXIT_USAGE, "error: no API URL: set FRAMELANE_API_URL or pass --api-url")
    if not args.api_key:
        return _fail(EXIT_USAGE, "error: no API key: set FRAMELANE_API_KEY or pass --api-key")
    try:
        command = Command(args, out, note)
        return getattr(command, args.command)()
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "error: interrupted; run the same command again to resume")
    except Exception as exc:  # noqa: BLE001 - every ending is a clean line and an exit status (_ending)
        return _fail(*_ending(exc))


def _fail(status: int, message: str) -> int:
    print(message, file=sys.stderr, flush=True)
    return status


def _ending(exc: Exception) -> tuple[int, str]:
    """The exit status and the one line a command that raised `exc` ends with: never a traceback, which could
    hold the upload's session URL."""
    if isinstance(exc, ApiError):
        return exc.status, str(exc)
    if isinstance(exc, Failure):
        return exc.status, f"error: {exc}"
    if isinstance(exc, GaveUp):
        return EXIT_GAVE_UP, f"error: gave up ({exc.last}); run the same command again to resume"
    return (
        EXIT_REFUSED,
        f"error: unexpected {type(exc).__name__} (its details are not shown: they may "
        "hold the upload's session URL); run the same command again to resume",
    )


def check_upload_url(api_url: str, upload_url: str) -> None:
    """An upload URL is a bearer secret and carries the file: https only, unless the
    API itself is on this machine (a local stack, whose storage is plain http).

    Raises:
        Failure: it is not (EXIT_REFUSED); nothing was sent.
    """
    scheme = urlsplit(upload_url).scheme
    if scheme == "https" or (scheme == "http" and _on_loopback(api_url)):
        return
    raise Failure(
        EXIT_REFUSED, f"the API returned an upload URL over {scheme or '(no scheme)'}, not https; the file was not sent"
    )


def _on_loopback(url: str) -> bool:
    """Whether `url`'s host is this machine (localhost or a loopback address)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
