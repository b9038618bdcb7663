"""The sweep's certificate cache against a certificate endpoint that is slow,
stalled, dribbling or failing: one fetch at a time, every wait bounded by the
fetch's own bound, failures remembered briefly (lib/platform/oidc.py CertCache)."""

from __future__ import annotations

import gzip
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from lib.platform.errors import ServiceUnavailable
from lib.platform.oidc import CertCache

CERTS = {"kid-1": "-----BEGIN CERTIFICATE-----\nnot checked here\n-----END CERTIFICATE-----\n"}


class CertServer:
    """Serves CERTS; `mode` is "ok", "slow" (answers after `delay`), "stall" (never
    answers until released), "dribble" (one byte a second) or "fail" (HTTP 500)."""

    def __init__(self, mode: str = "ok", delay: float = 0.5):
        self.mode, self.delay, self.fetches = mode, delay, 0
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.fetches += 1
                body = json.dumps(CERTS).encode()
                if server.mode == "fail":
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if server.mode == "slow":
                    server.release.wait(server.delay)
                if server.mode == "stall":
                    server.release.wait(30)
                    return
                if server.mode == "gzip":  # as Google's endpoint answers requests' Accept-Encoding
                    body = gzip.compress(body)
                self.send_response(200)
                if server.mode == "gzip":
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Cache-Control", "public, max-age=0" if server.mode == "stale" else "max-age=3600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.mode == "dribble":
                    for byte in body:
                        if server.release.wait(1.0):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/certs"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def cert_server(request):
    server = CertServer(*getattr(request, "param", ("ok",)))
    yield server
    server.close()


def cache_for(server: CertServer, fetch_seconds: float = 1.5, **kwargs) -> CertCache:
    cache = CertCache(server.url, requests.Session(), **kwargs)
    cache.FETCH_SECONDS = fetch_seconds
    return cache


def concurrently(n: int, call):
    """Run `call` n times at once; each result or the exception it raised."""
    barrier = threading.Barrier(n)

    def run(_):
        barrier.wait()
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - the outcome is what is asserted
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


@pytest.mark.parametrize("cert_server", [("gzip",)], indirect=True)
def test_a_compressed_answer_is_read(cert_server):
    assert cache_for(cert_server).certs_for("kid-1") == CERTS


@pytest.mark.parametrize("cert_server", [("slow", 0.5)], indirect=True)
def test_concurrent_calls_on_a_slow_endpoint_share_one_fetch(cert_server):
    cache = cache_for(cert_server)
    results = concurrently(12, lambda: cache.certs_for("kid-1"))
    assert all(result == CERTS for result in results), results
    assert cert_server.fetches == 1


@pytest.mark.parametrize("cert_server", [("stall",), ("dribble",)], indirect=True)
def test_a_stalled_or_dribbling_endpoint_costs_each_call_at_most_the_fetch_bound_then_fails_fast(cert_server):
    cache = cache_for(cert_server, fetch_seconds=1.0)
    results = concurrently(12, lambda: cache.certs_for("kid-1"))
    # Every call answered (503), none waited behind another's wait: one fetch for all twelve.
    assert all(isinstance(result, ServiceUnavailable) for result in results), results
    assert cert_server.fetches == 1
    # The failure is remembered: the next calls fail at once, without fetching.
    for _ in range(5):
        with pytest.raises(ServiceUnavailable):
            cache.certs_for("kid-1")
    assert cert_server.fetches == 1


@pytest.mark.parametrize("cert_server", [("fail",)], indirect=True)
def test_a_failure_is_remembered_only_briefly(cert_server):
    cache = cache_for(cert_server, failure_ttl=0.3)
    with pytest.raises(ServiceUnavailable):
        cache.certs_for("kid-1")
    with pytest.raises(ServiceUnavailable):
        cache.certs_for("kid-1")
    assert cert_server.fetches == 1
    cert_server.mode = "ok"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # polls the memory's end; no fixed sleep
        try:
            assert cache.certs_for("kid-1") == CERTS
            break
        except ServiceUnavailable:
            time.sleep(0.05)
    assert cert_server.fetches == 2


@pytest.mark.parametrize("cert_server", [("stale",)], indirect=True)
def test_when_a_refetch_fails_a_key_already_known_is_still_checked(cert_server):
    cache = cache_for(cert_server)
    assert cache.certs_for("kid-1") == CERTS  # max-age=0: stale at once
    cert_server.mode = "fail"
    assert cache.certs_for("kid-1") == CERTS  # the refetch failed; the known key still verifies
    with pytest.raises(ServiceUnavailable):
        cache.certs_for("kid-unknown")  # nothing known to fall back on
    assert cert_server.fetches == 2


def test_a_token_seen_before_skips_the_signature_check_but_not_the_others(oidc_issuer, monkeypatch):
    """The verified-token cache: the same text, verified once; audience, signer and time checked every time."""
    from dev.oidc_issuer import WEBHOOKS_AUDIENCE, WEBHOOKS_SERVICE_ACCOUNT
    from lib.platform import oidc
    from lib.platform.clients import session_http
    from lib.platform.errors import Forbidden, InvalidToken

    certs = oidc.cert_cache(oidc_issuer.certs_url, session_http())
    decodes = []
    real_decode = oidc.jwt.decode
    monkeypatch.setattr(oidc.jwt, "decode", lambda *a, **k: decodes.append(1) or real_decode(*a, **k))
    now = int(time.time())
    token = oidc_issuer.webhooks_token(iat=now, exp=now + 3600)
    for _ in range(3):
        oidc.verify(f"Bearer {token}", WEBHOOKS_AUDIENCE, WEBHOOKS_SERVICE_ACCOUNT, certs, route="webhooks")
    assert len(decodes) == 1
    with pytest.raises(InvalidToken):  # another route's audience: refused, cached or not
        oidc.verify(f"Bearer {token}", "https://other/audience", WEBHOOKS_SERVICE_ACCOUNT, certs)
    with pytest.raises(Forbidden):
        oidc.verify(f"Bearer {token}", WEBHOOKS_AUDIENCE, "other@example.iam.gserviceaccount.com", certs)
    # Time passes: a cached token past its exp is decoded again, and refused as expired.
    later = now + 3600 + oidc.CLOCK_SKEW_SECONDS + 5
    monkeypatch.setattr(oidc.time, "time", lambda: later)
    import datetime

    monkeypatch.setattr(
        oidc.jwt._helpers, "utcnow", lambda: datetime.datetime.fromtimestamp(later, datetime.UTC).replace(tzinfo=None)
    )
    with pytest.raises(InvalidToken, match="token"):
        oidc.verify(f"Bearer {token}", WEBHOOKS_AUDIENCE, WEBHOOKS_SERVICE_ACCOUNT, certs, route="webhooks")
    assert len(decodes) == 2


def test_a_refused_token_is_told_apart_by_its_own_claims_never_by_the_librarys_words(oidc_issuer):
    """Issue 34: the reason came from substrings of google-auth's messages; it now comes from the
    token's claims, and says no more than what kind of failure it was (never the token)."""
    from dev.oidc_issuer import AUDIENCE, SERVICE_ACCOUNT
    from lib.platform import oidc
    from lib.platform.clients import session_http
    from lib.platform.errors import InvalidToken

    certs = oidc.cert_cache(oidc_issuer.certs_url, session_http())
    now = int(time.time())
    good = oidc_issuer.token(iat=now, exp=now + 600)
    head, payload, signature = good.split(".")
    forged = f"{head}.{payload}.{signature[:-4]}{'BBBB' if signature.endswith('AAAA') else 'AAAA'}"
    cases = {
        oidc_issuer.token(iat=now - 7200, exp=now - 3600): "token expired or not yet valid",
        oidc_issuer.token(iat=now + 3600, exp=now + 7200): "token expired or not yet valid",
        oidc_issuer.token(iat=now, exp=None): "token lacks iat or exp",
        forged: "bad token signature",
    }
    for token, reason in cases.items():
        with pytest.raises(InvalidToken) as caught:
            oidc.verify(f"Bearer {token}", AUDIENCE, SERVICE_ACCOUNT, certs)
        assert caught.value.reason == reason, (reason, caught.value.reason)
