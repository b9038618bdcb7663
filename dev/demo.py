"""The browser demo `make run` serves (never deployed): a page, and the small
backend a customer would run beside it.

The backend holds the API key, as a customer's backend does: the page never
sees it. The page asks `POST /api/uploads`; the backend calls the API's
`POST /v1/uploads` with `cors_origin` set to the page's own origin (the
session then accepts that browser's PUTs across origins) and hands back the
upload's id and session URL. `GET /api/uploads/{id}` relays the upload's
status. The page sends the bytes straight to the session with UpChunk
(`@mux/upchunk`, installed by `npm ci` in dev/page from its lock file).

A real backend also checks who its user is before minting an upload; this one
listens on loopback only and trusts every caller.

    python -m dev.demo --api-url http://127.0.0.1:8080 --port 8088   (key in FRAMELANE_API_KEY)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

PAGE = Path(__file__).resolve().parent / "page"
FILES = {  # path: (file, content type)
    "/": (PAGE / "index.html", "text/html; charset=utf-8"),
    "/app.js": (PAGE / "app.js", "text/javascript; charset=utf-8"),
    "/upchunk.js": (PAGE / "node_modules/@mux/upchunk/dist/upchunk.js", "text/javascript; charset=utf-8"),
}
UPLOAD_PATH = re.compile(r"/api/uploads/(upl_[0-9a-f]{32})")
FIELDS = ("filename", "content_type", "size_bytes")


class Demo:
    """The page and its backend on 127.0.0.1:`port` (0: any free port), in threads of this process."""

    def __init__(self, api_url: str, api_key: str, port: int = 0):
        self.api_url, self._key = api_url.rstrip("/"), api_key
        self.http = requests.Session()
        demo = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                if path in FILES:
                    file, content_type = FILES[path]
                    if not file.exists():
                        return self._send(
                            503,
                            {"error": {"code": "not_installed", "message": "run `npm ci` in dev/page (make run does)"}},
                        )
                    return self._send(200, file.read_bytes(), content_type)
                match = UPLOAD_PATH.fullmatch(path)
                if match:
                    return self._relay("GET", f"/v1/uploads/{match.group(1)}")
                self._send(404, {"error": {"code": "not_found", "message": "No such page."}})

            def do_POST(self):
                if self.path != "/api/uploads":
                    return self._send(404, {"error": {"code": "not_found", "message": "No such route."}})
                origin = demo.origin_for(self.headers.get("Host", ""))
                if origin is None:
                    return self._send(
                        400,
                        {
                            "error": {
                                "code": "unknown_host",
                                "message": "Open the demo at the address make run printed.",
                            }
                        },
                    )
                # Only the page itself may mint: another site's form or fetch carries its own Origin (or
                # none), and a cross-site request without a preflight can only send text/plain or a form.
                if self.headers.get("Origin") != origin:
                    return self._send(
                        403,
                        {"error": {"code": "forbidden_origin", "message": "Only the demo page may create uploads."}},
                    )
                if self.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
                    return self._send(
                        415, {"error": {"code": "unsupported_media_type", "message": "Send application/json."}}
                    )
                try:
                    asked = json.loads(self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 65536)))
                    body = {name: asked[name] for name in FIELDS if name in asked}
                except (ValueError, TypeError):
                    return self._send(400, {"error": {"code": "invalid_json", "message": "Send a JSON object."}})
                self._relay("POST", "/v1/uploads", {**body, "cors_origin": origin})

            def _relay(self, method: str, path: str, body: dict | None = None):
                try:
                    answer = demo.http.request(
                        method,
                        demo.api_url + path,
                        json=body,
                        timeout=30,
                        headers={"Authorization": f"Bearer {demo._key}"},
                    )
                except requests.RequestException as exc:
                    return self._send(502, {"error": {"code": "api_unreachable", "message": type(exc).__name__}})
                self._send(answer.status_code, answer.content, "application/json")

            def _send(self, status: int, body: bytes | dict, content_type: str = "application/json"):
                data = json.dumps(body).encode() if isinstance(body, dict) else body
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def origin_for(self, host: str) -> str | None:
        """The page's origin as the browser names it: loopback under either name, our port only."""
        if host in (f"127.0.0.1:{self.port}", f"localhost:{self.port}"):
            return f"http://{host}"
        return None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser(description="The browser upload demo and its backend.")
    parser.add_argument("--api-url", default=os.environ.get("FRAMELANE_API_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--port", type=int, default=8088)
    args = parser.parse_args()
    key = os.environ.get("FRAMELANE_API_KEY")
    if not key:
        print("error: set FRAMELANE_API_KEY (the backend's key; the page never sees it)", file=sys.stderr)
        return 2
    demo = Demo(args.api_url, key, args.port)
    print(f"Browser demo: {demo.url}  (Ctrl-C stops it)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
