"""Verifying the OIDC tokens Google sends to the internal routes: Cloud
Scheduler's with each sweep call, Pub/Sub's with each push (storage events,
webhook messages and their dead letters; lib/platform/push.py).

The token is a Google-signed ID token (RS256 JWT). It is accepted only when
its signature checks out against Google's published certificates, it is
within its validity (30 s of clock skew), its issuer is Google, its audience
is the route's (`SWEEP_AUDIENCE`, `EVENTS_AUDIENCE`, `WEBHOOKS_AUDIENCE`) and
its signer is the route's service account (`SWEEP_SERVICE_ACCOUNT`,
`EVENTS_SERVICE_ACCOUNT`, `WEBHOOKS_SERVICE_ACCOUNT`, verified email). Certificates are fetched from
`OIDC_CERTS_URL` (Google's by default; tests serve their own) and cached by
their Cache-Control max-age, refetched early at most every 30 s when a token
names a key id not yet seen (Google rotates keys).

A token whose signature checked out is remembered (its exact text, until
its `exp`, at most VERIFIED_MAX_ENTRIES of them), so the same token presented
again costs no RSA check; its validity, issuer, audience and signer are
checked every time.

Failure reasons go to the log as fixed phrases, never the token or a library
message that might quote it.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests
from google.auth import exceptions as auth_exc
from google.auth import jwt

from lib.platform.clients import TtlLru, shared, upstream
from lib.platform.errors import Forbidden, InvalidToken, ServiceUnavailable

GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
CLOCK_SKEW_SECONDS = 30
_MAX_AGE = re.compile(r"max-age=(\d+)")
VERIFIED_MAX_ENTRIES = 1000
VERIFIED_MAX_SECONDS = 3600.0
_verified: TtlLru[dict[str, Any]] = TtlLru(VERIFIED_MAX_SECONDS, VERIFIED_MAX_ENTRIES)
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class CertCache:
    """Google's signing certificates ({key id: PEM}), fetched and kept per instance.

    One fetch at a time, run by the request that found the cache stale; other
    requests wait for it at most FETCH_SECONDS (the fetch's own bound), never
    in a queue behind one another. A failed fetch is remembered for
    `failure_ttl` seconds: meanwhile calls that need a fetch answer 503 at
    once, and a token whose key is still in the (stale) cache is checked
    against it, since Google keeps publishing a key well after it stops
    signing with it.
    """

    # The whole fetch (connect, answer, body; + one 2 s read at most), and the most of a body we read.
    FETCH_SECONDS = 5.0
    MAX_BYTES = 256 * 1024

    def __init__(
        self,
        url: str,
        http: requests.Session,
        default_ttl: float = 3600,
        max_ttl: float = 6 * 3600,
        min_refetch: float = 30,
        failure_ttl: float = 10,
    ):
        self.url = url
        self._http = http
        self._default_ttl, self._max_ttl, self._min_refetch = default_ttl, max_ttl, min_refetch
        self._failure_ttl = failure_ttl
        self._certs: dict[str, str] = {}
        self._fresh_until = 0.0
        self._fetched_at = float("-inf")
        self._failed_until = float("-inf")
        self._failure: ServiceUnavailable | None = None
        self._fetching: threading.Event | None = None
        self._lock = threading.Lock()

    def certs_for(self, key_id: str) -> Mapping[str, str]:
        """The certificates, refetched if stale, or if `key_id` is unknown and
        the last fetch is older than the minimum interval.

        Raises:
            ServiceUnavailable: a needed fetch failed (now or within `failure_ttl`).
        """
        with self._lock:
            now = time.monotonic()
            stale = now >= self._fresh_until
            unknown = key_id not in self._certs and now - self._fetched_at >= self._min_refetch
            if not (stale or unknown):
                return self._certs
            if now < self._failed_until:
                return self._fallback(key_id)
            done = self._fetching
            leader = done is None
            if done is None:
                done = self._fetching = threading.Event()
        if leader:
            self._fetch_and_publish(done)
        elif not done.wait(self.FETCH_SECONDS + 1):
            raise ServiceUnavailable(reason="OIDC certificates: waited out another request's fetch")
        with self._lock:
            if self._fetched_at >= now:  # fetched since this call began
                return self._certs
            return self._fallback(key_id)

    def _fallback(self, key_id: str) -> Mapping[str, str]:
        # Called with the lock held, after a failed fetch.
        if key_id in self._certs:
            return self._certs
        raise self._failure or ServiceUnavailable(reason="OIDC certificates: fetch failed")

    def _fetch_and_publish(self, done: threading.Event) -> None:
        try:
            certs, ttl = self._fetch()
        except Exception as exc:  # noqa: BLE001 - remembered, and raised to the waiting calls as a 503
            failure = (
                exc
                if isinstance(exc, ServiceUnavailable)
                else ServiceUnavailable(reason=f"OIDC certificates: {type(exc).__name__}")
            )
            with self._lock:
                self._failure, self._failed_until = failure, time.monotonic() + self._failure_ttl
                self._fetching = None
            done.set()
            return
        with self._lock:
            now = time.monotonic()
            self._certs, self._fetched_at, self._fresh_until = certs, now, now + ttl
            self._failure, self._failed_until, self._fetching = None, float("-inf"), None
        done.set()

    def _fetch(self) -> tuple[dict[str, str], float]:
        """Google's certificates and how long to keep them, within FETCH_SECONDS in all."""
        deadline = time.monotonic() + self.FETCH_SECONDS
        with upstream(), self._http.get(self.url, timeout=(2.0, 2.0), stream=True) as response:
            if response.status_code >= 500 or response.status_code == 429:
                raise ServiceUnavailable(reason=f"OIDC certificates: HTTP {response.status_code}")
            response.raise_for_status()
            body = bytearray()
            # read1: whatever one socket read brings (each within the 2 s read
            # timeout), so a server dribbling bytes cannot hold us past the deadline.
            while chunk := response.raw.read1(16384, decode_content=True):
                body += chunk
                if len(body) > self.MAX_BYTES:
                    raise RuntimeError("OIDC certificates: answer too large")
                if time.monotonic() > deadline:
                    raise TimeoutError("OIDC certificates: fetch took too long")
            cache_control = response.headers.get("Cache-Control", "")
        certs = json.loads(bytes(body))
        if not isinstance(certs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in certs.items()):
            raise RuntimeError("OIDC certificates: expected a JSON object of key id -> PEM certificate")
        match = _MAX_AGE.search(cache_control)
        return certs, (min(float(match.group(1)), self._max_ttl) if match else self._default_ttl)


def cert_cache(url: str, http: requests.Session) -> CertCache:
    """The instance's certificate cache for `url`."""
    return shared(("oidc_certs", url), lambda: CertCache(url, http))


def verify(
    authorization: str | None, audience: str | None, service_account: str | None, certs: CertCache, route: str = "sweep"
) -> dict[str, Any]:
    """The token's claims, if it is Google's, for `audience`, from `service_account`.

    `route` names the caller's settings in the log's reasons ("sweep" -> SWEEP_*).

    Raises:
        Forbidden: the route is not configured, or a valid token from another identity.
        InvalidToken: missing, malformed, badly signed, expired, or for another audience or issuer.
        ServiceUnavailable: Google's certificates could not be fetched.
    """
    if not audience or not service_account:
        raise Forbidden(f"{route} not configured ({route.upper()}_AUDIENCE, {route.upper()}_SERVICE_ACCOUNT)")
    token = _bearer(authorization)
    claims = _signed_claims(token, certs)
    if claims.get("iss") not in GOOGLE_ISSUERS:
        raise InvalidToken("token not issued by Google")
    if claims.get("aud") != audience:
        raise InvalidToken("token is for another audience")
    if claims.get("email") != service_account or claims.get("email_verified") is not True:
        raise Forbidden(f"token is not from the {route}'s service account")
    return claims


def _signed_claims(token: str, certs: CertCache) -> dict[str, Any]:
    """The claims of a token signed by one of Google's current keys, within its time (remembered per token)."""
    key_id = _key_id(token)
    known = certs.certs_for(key_id)
    if key_id not in known:
        raise InvalidToken("token signed by an unknown key")
    claims = _verified.get(token)
    now = time.time()
    if claims is not None and not claims["iat"] - CLOCK_SKEW_SECONDS <= now <= claims["exp"] + CLOCK_SKEW_SECONDS:
        claims = None  # its signature checked out, its time is up: decode() says why
    if claims is None:
        try:
            claims = jwt.decode(
                token, certs={key_id: known[key_id]}, audience=None, clock_skew_in_seconds=CLOCK_SKEW_SECONDS
            )
        except (auth_exc.GoogleAuthError, ValueError, TypeError):  # TypeError: an `exp` that is a string
            raise InvalidToken(_decode_failure(token)) from None
        if not all(isinstance(claims.get(name), int) for name in ("iat", "exp")):
            raise InvalidToken("token's iat or exp is not a whole number")
        _verified.put(token, claims)
    return claims


def _key_id(token: str) -> str:
    """The id of the key that signed `token`, from its header (RS256 only)."""
    try:
        header = jwt.decode_header(token)
    except (auth_exc.GoogleAuthError, ValueError):  # not base64url JSON, or not an object
        raise InvalidToken("malformed token") from None
    if header.get("alg") != "RS256":
        raise InvalidToken("token not signed with RS256")
    key_id = header.get("kid")
    if not isinstance(key_id, str):
        raise InvalidToken("token has no key id")
    return key_id


def bearer(authorization: str | None, error: Callable[[str], Exception]) -> str:
    """The credentials of an `Authorization: Bearer <credentials>` header (a Google
    OIDC token here, an API key in lib/api/auth.py).

    Raises:
        `error(reason)`: no header, or another scheme.
    """
    if not authorization:
        raise error("missing Authorization header")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer":
        raise error("Authorization scheme is not Bearer")
    return credentials.strip()


def _bearer(authorization: str | None) -> str:
    token = bearer(authorization, InvalidToken)
    if not _JWT.fullmatch(token):
        raise InvalidToken("credentials are not a JWT")
    return token


def _decode_failure(token: str) -> str:
    """Why a token failed google-auth's checks, told from its own claims: the library's errors differ
    only in their messages (which may quote the token), so this looks at the token instead."""
    part = token.split(".")[1]
    try:  # the payload as it stands (google-auth reads it only while verifying): no signature, no times
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except ValueError:  # not base64url, or not JSON (UnicodeDecodeError is a ValueError)
        return "malformed token"
    if not isinstance(claims, dict):
        return "malformed token"
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int) or not isinstance(exp, int):
        return "token lacks iat or exp"
    if not iat - CLOCK_SKEW_SECONDS <= time.time() <= exp + CLOCK_SKEW_SECONDS:
        return "token expired or not yet valid"
    return "bad token signature"
