"""The browser demo in a real headless Chromium (Debian's `chromium`, driven by
Playwright pointed at that binary: nothing is downloaded).

The page is served by dev/demo.py on one origin; its backend mints the upload
through a recording proxy in front of the served function (so the test sees
`cors_origin`); the browser PUTs the file in chunks, cross-origin, to
fake-gcs-server. The bytes in the bucket must equal the file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import requests

from dev.demo import FILES, Demo
from tests.helpers import RecordingProxy, padded_mp4

CHROMIUM = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or "/usr/bin/chromium"
# As root, with no network beyond loopback: no sandbox, and none of Chromium's own calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium where it may "
            "(apt-get as root); elsewhere install it or set CHROMIUM_BIN"
        )
    if not FILES["/upchunk.js"][0].exists():
        pytest.skip("dev/page/node_modules is missing: `make test` runs `npm ci` there")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def demo(served_default, make_key):
    key, _workspace = make_key()
    with RecordingProxy(served_default.url) as api:
        demo = Demo(api.url, key)
        yield demo, api, key
        demo.stop()


def test_the_page_uploads_cross_origin_in_chunks_with_pause_and_resume(browser, demo, backends, tmp_path):
    demo, api, key = demo
    storage = backends["storage"].url
    data = padded_mp4(16 * MIB + 123, seed=int.from_bytes(os.urandom(8), "big"))
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)

    page = browser.new_page()
    puts: list[dict] = []
    page.on(
        "requestfinished",
        lambda r: (
            puts.append({"url": r.url, "status": r.response().status, "headers": r.headers})
            if r.method == "PUT"
            else None
        ),
    )
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{demo.url}/?chunk_kib=256")
    page.set_input_files("#file", str(path))
    page.click("#start")

    # Pause once some bytes are across: the chunk in flight finishes, then nothing more goes.
    page.wait_for_function("document.getElementById('progress').value > 0", timeout=30_000)
    page.click("#pause")
    page.wait_for_function("document.getElementById('status').textContent === 'Paused.'")
    upload_id = page.text_content("#upload-id")
    assert upload_id.startswith("upl_")
    shown = requests.get(
        f"{api.url}/v1/uploads/{upload_id}", headers={"Authorization": f"Bearer {key}"}, timeout=30
    ).json()
    assert shown["status"] == "pending"  # paused part-way: the object is not there yet
    progress_at_pause = float(page.eval_on_selector("#progress", "p => p.value"))
    assert 0 < progress_at_pause < 100

    page.click("#resume")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')", timeout=120_000)
    assert page.text_content("#status") == "Done: completed."
    assert page.text_content("#upload-status") == "completed"
    assert page.text_content("#media") == "1 s, 64x48, h264"  # what the service read of the bytes
    source_url = page.text_content("#source")
    assert errors == []

    # The page's backend, not the browser, minted it, naming the page's origin.
    [minted] = [r for r in api.requests if r["method"] == "POST"]
    sent = json.loads(minted["body"])
    assert sent == {
        "filename": "clip.mp4",
        "content_type": "video/mp4",
        "size_bytes": len(data),
        "cors_origin": demo.url,
    }
    assert not any("authorization" in p["headers"] for p in puts)  # the key stays server-side

    # The browser sent the bytes itself, in 256 KiB chunks, to storage on another origin.
    assert len(puts) >= len(data) // (256 * 1024)
    assert all(p["url"].startswith(storage) for p in puts)
    assert all(p["status"] in (200, 201, 308) for p in puts)
    assert requests.get(source_url, timeout=30).content == data
    page.close()


def test_the_page_says_why_when_the_bytes_are_not_the_type_declared(browser, demo, tmp_path):
    """A page saved as clip.mp4: the browser declares video/mp4 (by the name), the service reads
    the bytes, refuses them, and never serves them."""
    demo, _api, _key = demo
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"<!doctype html><title>not a video</title>" + b"<p>x</p>" * 1000)
    page = browser.new_page()
    page.goto(f"{demo.url}/")
    page.set_input_files("#file", str(path))
    page.click("#start")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('The upload is')", timeout=60_000)
    assert page.text_content("#status").startswith("The upload is rejected (content_mismatch: ")
    assert page.text_content("#upload-status") == "rejected"
    assert page.text_content("#source") == ""
    page.close()


def test_the_backend_refuses_a_host_it_does_not_serve_and_never_shows_its_key(demo):
    demo, api, key = demo
    wrong = requests.post(
        f"{demo.url}/api/uploads", json={"content_type": "video/mp4"}, headers={"Host": "evil.example:80"}, timeout=30
    )
    assert wrong.status_code == 400
    assert wrong.json()["error"]["code"] == "unknown_host"
    assert not [r for r in api.requests if r["method"] == "POST"]
    page = requests.get(demo.url + "/", timeout=30).text + requests.get(demo.url + "/app.js", timeout=30).text
    assert key not in page
    refused = requests.post(
        f"{demo.url}/api/uploads", json={"content_type": "text/html"}, headers={"Origin": demo.url}, timeout=30
    )
    # As the API said:
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "unsupported_content_type"


def test_the_backend_mints_only_for_its_own_page_and_only_from_json(demo):
    """Another site cannot make a visitor's browser mint uploads with the demo's key: a cross-site
    form or simple fetch (text/plain, no preflight) carries a foreign Origin, or no JSON."""
    demo, api, _ = demo
    body = json.dumps({"content_type": "video/mp4"})
    for headers, status in (
        ({"Origin": "https://evil.example", "Content-Type": "application/json"}, 403),
        ({"Content-Type": "application/json"}, 403),
        ({"Origin": demo.url, "Content-Type": "text/plain"}, 415),
        ({"Origin": demo.url, "Content-Type": "application/x-www-form-urlencoded"}, 415),
    ):
        resp = requests.post(f"{demo.url}/api/uploads", data=body, headers=headers, timeout=30)
        assert resp.status_code == status, headers
    assert not [r for r in api.requests if r["method"] == "POST"]
    minted = requests.post(
        f"{demo.url}/api/uploads",
        data=body,
        timeout=30,
        headers={"Origin": demo.url, "Content-Type": "application/json"},
    )
    assert minted.status_code == 201
