"""Settings: read from the environment and validated once, when the function starts.

Terraform sets exactly the names read here but LOCAL_ONLY;
`tests/deploy/test_terraform.py` holds the two together. A missing or malformed
variable raises `ConfigError` naming the variable and why; main.py loads the
settings at import, so a bad setting stops the function from starting (the
new revision never serves) instead of failing every request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# Every environment variable the function reads, required first. Terraform's
# function resource must set exactly these (the optional ones may be omitted).
REQUIRED = ("GOOGLE_CLOUD_PROJECT", "UPLOAD_BUCKET", "STAGING_BUCKET", "CDN_BASE_URL")
# The limits' settings: set on the API function alone (terraform/limits.tf).
LIMITS = ("LIMITS_REDIS_URL", "LIMITS_REDIS_AUTH", "LIMITS_REDIS_CA_CERT", "CREATES_PER_MINUTE", "MAX_PENDING_UPLOADS")
OPTIONAL = (
    "UPLOAD_URL_TTL_SECONDS",
    "IDEMPOTENCY_TTL_SECONDS",
    "IDEMPOTENCY_LEASE_SECONDS",
    "API_KEY_CACHE_TTL_SECONDS",
    "FIRESTORE_DATABASE",
    "MAX_UPLOAD_BYTES",
    "SWEEP_SERVICE_ACCOUNT",
    "SWEEP_AUDIENCE",
    "EVENTS_SERVICE_ACCOUNT",
    "EVENTS_AUDIENCE",
    "WEBHOOKS_TOPIC",
    "WEBHOOKS_SERVICE_ACCOUNT",
    "WEBHOOKS_AUDIENCE",
    "OIDC_CERTS_URL",
    "WEBHOOK_ALLOW_PRIVATE_TARGETS",
    "REQUEST_DEADLINE_SECONDS",
    "API_LB_ADDRESS",
    *LIMITS,
)
# Set by Terraform from Secret Manager (secret_environment_variables), not as plain variables.
SECRET = ("LIMITS_REDIS_AUTH",)
# Read, but never set by Terraform: they exist so the tests and `make run` can
# verify tokens against certificates they serve themselves, and deliver
# webhooks to receivers on loopback.
LOCAL_ONLY = ("OIDC_CERTS_URL", "WEBHOOK_ALLOW_PRIVATE_TARGETS", "REQUEST_DEADLINE_SECONDS")

GIB = 1024**3
# The most a workspace's limits may be: 10,000 creates a second (its rate log then holds 600,000
# members, ~86 MB; docs/operations.md, "Limits").
MAX_CREATES_PER_MINUTE = 600_000
MAX_PENDING_UPLOADS = 1_000_000
# GCS's own ceiling for one object.
GCS_MAX_OBJECT_BYTES = 5 * 1024**4
GOOGLE_OIDC_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
# An {ROUTE}_AUDIENCE of this value: the token's audience must be the URL the request reached.
OWN_URL = "own-url"
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class FirestoreSettings:
    project: str
    database: str = "(default)"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FirestoreSettings:
        return cls(
            project=_required(env, "GOOGLE_CLOUD_PROJECT"),
            database=env.get("FIRESTORE_DATABASE", "").strip() or "(default)",
        )


@dataclass(frozen=True)
class Settings:
    firestore: FirestoreSettings
    upload_bucket: str
    # Where sessions write: an upload is served from upload_bucket only once verified (lib/uploads/settling.py).
    staging_bucket: str
    cdn_base_url: str
    upload_url_ttl_seconds: int = 3600
    idempotency_ttl_seconds: int = 24 * 3600
    # How long an in-flight claim blocks its key. Every upstream call is bounded
    # far below this (see lib/platform/clients.py), so a live request never outlives it;
    # a claim left by a crashed instance frees the key when it runs out.
    idempotency_lease_seconds: int = 30
    # How long an instance trusts a key lookup: the longest a revoked key keeps
    # working there. 0 turns the cache off.
    api_key_cache_ttl_seconds: int = 30
    # The largest `size_bytes` a client may declare.
    max_upload_bytes: int = 5 * GIB
    # Who may call POST /internal/sweep: the OIDC token's `email` and `aud`.
    # Unset, the sweep route refuses every call.
    sweep_service_account: str | None = None
    sweep_audience: str | None = None
    # Who may call POST /internal/storage-events: the Pub/Sub push
    # subscription's OIDC identity and audience. Unset, the route refuses every call.
    events_service_account: str | None = None
    events_audience: str | None = None
    # Webhooks (lib/webhooks/fanout.py): the topic their event and delivery messages
    # go through (unset: webhooks are off), and who may push them to
    # POST /internal/webhooks and /internal/webhook-dead-letters.
    webhooks_topic: str | None = None
    webhooks_service_account: str | None = None
    # A URL, or OWN_URL: the URL the push reached (https:// and its Host), which is what Pub/Sub puts
    # in the token when its audience is the function's own run.app URL (terraform/webhooks.tf).
    webhooks_audience: str | None = None
    oidc_certs_url: str = GOOGLE_OIDC_CERTS_URL
    # Deliver webhooks to loopback/private addresses and plain http (local only).
    webhook_allow_private_targets: bool = False
    # A request's line, headers and body, in all (lib/platform/server.py); the tests shorten it.
    request_deadline_seconds: int = 30
    # The API load balancer's own address (terraform/api_domain.tf), by which the client's is found in
    # X-Forwarded-For (lib/api/auth.py client_address); unset: no load balancer in front.
    api_lb_address: str | None = None
    # Limits (lib/limits/counters.py): the store every instance counts in (redis:// or, with TLS,
    # rediss://; unset: no limits), its AUTH string and its CA's PEM; the defaults a
    # workspace has until ops set its own (docs/api.md, "Limits").
    limits_redis_url: str | None = None
    limits_redis_auth: str | None = None
    limits_redis_ca_cert: str | None = None
    creates_per_minute: int = 600
    max_pending_uploads: int = 1000

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        cdn = _required(env, "CDN_BASE_URL").rstrip("/")
        parts = urlsplit(cdn)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError("CDN_BASE_URL must be an absolute http(s) URL without query or fragment")
        return cls(
            firestore=FirestoreSettings.from_env(env),
            upload_bucket=_required(env, "UPLOAD_BUCKET"),
            staging_bucket=_required(env, "STAGING_BUCKET"),
            cdn_base_url=cdn,
            upload_url_ttl_seconds=_seconds(env, "UPLOAD_URL_TTL_SECONDS", 3600),
            idempotency_ttl_seconds=_seconds(env, "IDEMPOTENCY_TTL_SECONDS", 24 * 3600),
            idempotency_lease_seconds=_seconds(env, "IDEMPOTENCY_LEASE_SECONDS", 30),
            api_key_cache_ttl_seconds=_seconds(env, "API_KEY_CACHE_TTL_SECONDS", 30, minimum=0, maximum=300),
            max_upload_bytes=_integer(env, "MAX_UPLOAD_BYTES", 5 * GIB, 1, GCS_MAX_OBJECT_BYTES, "bytes"),
            **_caller(env, "SWEEP"),
            **_caller(env, "EVENTS"),
            webhooks_topic=_topic(env, "WEBHOOKS_TOPIC"),
            **_caller(env, "WEBHOOKS"),
            oidc_certs_url=_certs_url(env),
            webhook_allow_private_targets=allow_private_targets(env),
            request_deadline_seconds=_seconds(env, "REQUEST_DEADLINE_SECONDS", 30, minimum=1, maximum=300),
            api_lb_address=env.get("API_LB_ADDRESS", "").strip() or None,
            **_limits(env),
        )


def _caller(env: Mapping[str, str], route: str) -> dict[str, Any]:
    """An internal route's allowed caller: {ROUTE}_SERVICE_ACCOUNT and {ROUTE}_AUDIENCE, both or neither."""
    account = env.get(f"{route}_SERVICE_ACCOUNT", "").strip() or None
    audience = env.get(f"{route}_AUDIENCE", "").strip() or None
    if (account is None) != (audience is None):
        raise ConfigError(f"{route}_SERVICE_ACCOUNT and {route}_AUDIENCE must be set together")
    if account is not None and not _EMAIL.fullmatch(account):
        raise ConfigError(f"{route}_SERVICE_ACCOUNT must be a service account's email, got {account!r}")
    return {f"{route.lower()}_service_account": account, f"{route.lower()}_audience": audience}


def _limits(env: Mapping[str, str]) -> dict[str, Any]:
    url = env.get("LIMITS_REDIS_URL", "").strip() or None
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname or parts.password or parts.query:
            raise ConfigError(
                "LIMITS_REDIS_URL must be redis://HOST:PORT or rediss://HOST:PORT "
                "(the AUTH string goes in LIMITS_REDIS_AUTH)"
            )
    ca = env.get("LIMITS_REDIS_CA_CERT", "").strip() or None
    if url is not None and url.startswith("rediss://") and ca is None:
        raise ConfigError("LIMITS_REDIS_CA_CERT must hold the server CA's PEM when LIMITS_REDIS_URL is rediss://")
    creates_per_minute, max_pending_uploads = limits_defaults(env)
    return {
        "limits_redis_url": url,
        "limits_redis_auth": env.get("LIMITS_REDIS_AUTH", "").strip() or None,
        "limits_redis_ca_cert": ca,
        "creates_per_minute": creates_per_minute,
        "max_pending_uploads": max_pending_uploads,
    }


def limits_defaults(env: Mapping[str, str]) -> tuple[int, int]:
    """CREATES_PER_MINUTE and MAX_PENDING_UPLOADS: a workspace's figures until ops set its own."""
    return (
        _integer(env, "CREATES_PER_MINUTE", 600, 1, MAX_CREATES_PER_MINUTE, "creates"),
        _integer(env, "MAX_PENDING_UPLOADS", 1000, 1, MAX_PENDING_UPLOADS, "uploads"),
    )


def allow_private_targets(env: Mapping[str, str]) -> bool:
    """WEBHOOK_ALLOW_PRIVATE_TARGETS: `true` or `false` (the default)."""
    raw = env.get("WEBHOOK_ALLOW_PRIVATE_TARGETS", "").strip().lower()
    if raw not in ("", "true", "false"):
        raise ConfigError(f"WEBHOOK_ALLOW_PRIVATE_TARGETS must be true or false, got {raw!r}")
    return raw == "true"


_TOPIC = re.compile(r"[A-Za-z][A-Za-z0-9._~%+-]{2,254}")


def _topic(env: Mapping[str, str], name: str) -> str | None:
    """A Pub/Sub topic id in the function's project (not `goog`-prefixed, 3-255 characters)."""
    value = env.get(name, "").strip() or None
    if value is not None and (not _TOPIC.fullmatch(value) or value.lower().startswith("goog")):
        raise ConfigError(f"{name} must be a Pub/Sub topic id (not a path), got {value!r}")
    return value


def _certs_url(env: Mapping[str, str]) -> str:
    certs = env.get("OIDC_CERTS_URL", "").strip() or GOOGLE_OIDC_CERTS_URL
    if urlsplit(certs).scheme not in ("https", "http") or not urlsplit(certs).netloc:
        raise ConfigError("OIDC_CERTS_URL must be an absolute http(s) URL")
    return certs


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"missing required environment variable {name}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: int, minimum: int = 1, maximum: int = 7 * 24 * 3600) -> int:
    return _integer(env, name, default, minimum, maximum, "seconds")


def _integer(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int, unit: str) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number of {unit}, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum} {unit}, got {value}")
    return value


def load(env: Mapping[str, str] | None = None) -> Settings:
    """The function's settings, from `env` (the process environment by default).

    Raises:
        ConfigError: a setting is missing or malformed; the message names it and says why.
    """
    return Settings.from_env(os.environ if env is None else env)
