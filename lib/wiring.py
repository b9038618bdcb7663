"""The instance's parts, built from its settings: Firestore, Storage, the limits, Google's certificates, the announcer.

main.py's handlers ask `Wiring` for what they pass to lib; it decides nothing. Each part is the
instance's own (lib/platform/clients.py `shared`), built at first use and kept, so a warm request builds no
client.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.cloud import firestore, storage

from lib.api import create
from lib.limits import counters, quotas
from lib.platform import logs, oidc
from lib.platform.clients import Publisher, firestore_client, publisher, session_http, storage_client
from lib.platform.config import Settings
from lib.uploads import lifecycle
from lib.webhooks import fanout


@dataclass(frozen=True)
class Wiring:
    settings: Settings

    def db(self) -> firestore.Client:
        return firestore_client(self.settings.firestore)

    def gcs(self) -> storage.Client:
        return storage_client(self.settings.firestore.project)

    def publisher(self) -> Publisher:
        return publisher(self.settings.firestore.project)

    def storage(self) -> lifecycle.Storage:
        """GCS, and the limiter told of each upload that leaves `pending` (its slot is free)."""
        limiter = self.limiting().limiter
        release = None
        if limiter.enabled:

            def release(record: lifecycle.Record) -> None:
                limiter.release(record.workspace_id, record.mode, record.id)

        return lifecycle.Storage(
            self.gcs(), self.settings.upload_bucket, self.settings.staging_bucket, session_http(), release
        )

    def limiting(self) -> create.Limiting:
        settings = self.settings
        return create.Limiting(
            counters.limiter(settings.limits_redis_url, settings.limits_redis_auth, settings.limits_redis_ca_cert),
            quotas.Limits(settings.creates_per_minute, settings.max_pending_uploads),
        )

    def certs(self) -> oidc.CertCache:
        """The instance's cache of Google's certificates, for every OIDC-checked route."""
        return oidc.cert_cache(self.settings.oidc_certs_url, session_http())

    def announcer(self) -> fanout.Announcer | None:
        """Publishes each state change's webhook event (None while webhooks are off); a
        failed publish leaves the event owed, for the sweep, and this request's log says why."""
        if self.settings.webhooks_topic is None:
            return None
        return fanout.Announcer(
            self.publisher(), self.settings.webhooks_topic, lambda reason: logs.note(webhook_owed=reason)
        )
