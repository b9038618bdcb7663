"""A stand-in for Google's OIDC signer, served on loopback (dev/ and tests; never deployed).

It holds RSA keys with self-signed certificates, serves them at `/certs` in
the format Google's https://www.googleapis.com/oauth2/v1/certs uses
(`{key id: PEM certificate}`), and signs ID tokens shaped like the ones Cloud
Scheduler and Pub/Sub push send. The function is pointed at it by
OIDC_CERTS_URL, so token verification runs offline, for real: in the tests,
and in `make run`, where the push relay (dev/relay.py) signs with its key.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

AUDIENCE = "https://uploads.test/internal/sweep"
SERVICE_ACCOUNT = "framelane-sweep@framelane-test.iam.gserviceaccount.com"
# The storage events' push subscription: another identity, another audience.
EVENTS_AUDIENCE = "https://uploads.test/internal/storage-events"
EVENTS_SERVICE_ACCOUNT = "framelane-events@framelane-test.iam.gserviceaccount.com"
WEBHOOKS_AUDIENCE = "https://uploads.test/internal/webhooks"
WEBHOOKS_SERVICE_ACCOUNT = "framelane-webhooks@framelane-test.iam.gserviceaccount.com"
# Each push route's (audience, service account), by the name dev/emulators.py start_relay takes.
CALLERS = {
    "events": (EVENTS_AUDIENCE, EVENTS_SERVICE_ACCOUNT),
    "webhooks": (WEBHOOKS_AUDIENCE, WEBHOOKS_SERVICE_ACCOUNT),
}


class SigningKey:
    def __init__(self) -> None:
        self.kid = secrets.token_hex(20)
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "framelane-test-oidc")])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=2))
            .sign(self._private, hashes.SHA256())
        )
        self.certificate_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        self.private_key_pem = self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.signer = crypt.RSASigner.from_string(self.private_key_pem, key_id=self.kid)


class Issuer:
    """`key` is published at /certs; `other_key` signs tokens with the same kid but is not."""

    def __init__(self, port: int = 0) -> None:
        self.key = SigningKey()
        self.other_key = SigningKey()
        self.cert_fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/certs":
                    self.send_error(404)
                    return
                issuer.cert_fetches += 1
                body = json.dumps({issuer.key.kid: issuer.key.certificate_pem}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=3600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.certs_url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def claims(self, **overrides) -> dict:
        now = int(time.time())
        claims = {
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "azp": "1234567890",
            "sub": "1234567890",
            "email": SERVICE_ACCOUNT,
            "email_verified": True,
            "iat": now,
            "exp": now + 3600,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self, signer: crypt.RSASigner | None = None, header: dict | None = None, key_id: str | None = None, **overrides
    ) -> str:
        """A signed ID token; claims given as None are left out."""
        return jwt.encode(signer or self.key.signer, self.claims(**overrides), header=header, key_id=key_id).decode()

    def env(self) -> dict[str, str]:
        """The function's settings that trust this issuer."""
        return {
            "SWEEP_AUDIENCE": AUDIENCE,
            "SWEEP_SERVICE_ACCOUNT": SERVICE_ACCOUNT,
            "EVENTS_AUDIENCE": EVENTS_AUDIENCE,
            "EVENTS_SERVICE_ACCOUNT": EVENTS_SERVICE_ACCOUNT,
            "WEBHOOKS_AUDIENCE": WEBHOOKS_AUDIENCE,
            "WEBHOOKS_SERVICE_ACCOUNT": WEBHOOKS_SERVICE_ACCOUNT,
            "OIDC_CERTS_URL": self.certs_url,
        }

    def write_key(self, path) -> None:
        """The published key, for another local process to sign with (the push relay)."""
        path.write_bytes(self.key.private_key_pem)
        path.chmod(0o600)

    def events_token(self, **overrides) -> str:
        """A token as the storage events' push subscription sends it."""
        return self.token(**{"aud": EVENTS_AUDIENCE, "email": EVENTS_SERVICE_ACCOUNT, **overrides})

    def webhooks_token(self, **overrides) -> str:
        """A token as the webhooks' push subscriptions send it."""
        return self.token(**{"aud": WEBHOOKS_AUDIENCE, "email": WEBHOOKS_SERVICE_ACCOUNT, **overrides})
