"""A proxy in front of fake-gcs-server that keeps the two generation preconditions it ignores (1.54).

GCS refuses, with 412 conditionNotMet, a rewrite with `ifGenerationMatch=0` whose destination exists and a
DELETE with `ifGenerationMatch=N` of any other generation
(https://cloud.google.com/storage/docs/request-preconditions); fake-gcs-server overwrites and deletes
regardless. The service relies on both (lib/uploads/gcs_sessions.py `place`, `delete_object`), so where settlers race
(bench/chaos.py) the stand-in must keep them, or its gap would show as a defect the service does not have.
Each such request is checked against the object's metadata and forwarded under one lock, so no other
conditional request falls between the check and the act; everything else passes straight through.

    proxy = Preconditions(storage_url); ...; proxy.url; ...; proxy.stop()
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_REWRITE = re.compile(r"/storage/v1/b/[^/]+/o/[^/]+/(?:rewriteTo|copyTo)/b/([^/]+)/o/([^/]+)")
_OBJECT = re.compile(r"/storage/v1/b/([^/]+)/o/([^/]+)")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
_NOT_MET = json.dumps(
    {
        "error": {
            "code": 412,
            "message": "At least one of the pre-conditions you specified did not hold.",
            "errors": [{"reason": "conditionNotMet", "domain": "global", "message": "Precondition Failed"}],
        }
    }
).encode()


class Preconditions:
    def __init__(self, upstream_url: str):
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path, query = urlsplit(self.path).path, parse_qs(urlsplit(self.path).query)
                wanted = query.get("ifGenerationMatch", [None])[0]
                rewrite, target = _REWRITE.fullmatch(path), _OBJECT.fullmatch(path)
                conditional = wanted is not None and (
                    (self.command == "POST" and rewrite is not None) or (self.command == "DELETE" and target)
                )
                if not conditional:
                    self._answer(*proxy.forward(self.command, self.path, self.headers, body))
                    return
                bucket, name = (rewrite or target).groups()  # type: ignore[union-attr]  # one of them matched
                with proxy.lock:
                    status, _, meta = proxy.forward("GET", f"/storage/v1/b/{bucket}/o/{name}", {}, b"")
                    current = json.loads(meta).get("generation") if status == 200 else None
                    if (rewrite is not None and wanted == "0" and current is not None) or (
                        self.command == "DELETE" and current is not None and str(current) != wanted
                    ):
                        self._answer(412, [("Content-Type", "application/json")], _NOT_MET)
                        return
                    self._answer(*proxy.forward(self.command, self.path, self.headers, body))

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _any

            def log_message(self, *_args) -> None:
                pass

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except OSError:
                    self.close_connection = True  # the caller gave up (its own timeout): nothing to tell it

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def forward(self, method: str, path: str, headers, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            sent = {
                name: value
                for name, value in dict(headers).items()
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length"
            }
            connection.request(method, path, body=body or None, headers=sent)
            resp = connection.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            connection.close()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
