"""Creating an upload (`POST /v1/uploads`): validate the request, mint its session, record it; once per Idempotency-Key.

Without a key, each request mints a session and records a pending upload.
With one, `idempotency.once` runs the mint at most once per (workspace,
mode, key) and meaning (`UploadRequest.fingerprint`): the upload's record is
created in the same commit that completes the key, so a key's completion and
its upload exist together or not at all, and a replay answers the stored body.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from google.cloud import firestore, storage

from lib.api import idempotency, models
from lib.api.auth import ApiKey
from lib.limits import counters, quotas
from lib.platform import clock, logs
from lib.platform.config import Settings
from lib.platform.errors import ApiError, UploadTooLarge
from lib.uploads import gcs_sessions, lifecycle, naming


@dataclass(frozen=True)
class Created:
    """What a create answers: the body, whether it replays a key's first answer, and the RateLimit fields."""

    body: dict[str, Any]
    replayed: bool
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Limiting:
    """The create's limits: the instance's store, and the defaults a workspace has until ops set its own."""

    limiter: counters.Limiter
    defaults: quotas.Limits


def create(
    db: firestore.Client,
    client: storage.Client,
    settings: Settings,
    limiting: Limiting,
    key: ApiKey,
    idempotency_key: str | None,
    raw: bytes,
    origin: str | None,
) -> Created:
    """Create an upload for `key`'s workspace from the request body `raw`.

    `idempotency_key` is the Idempotency-Key header and `origin` the Origin
    header, as received (both checked here).
    Every answer, an error's too, carries the RateLimit fields while limits are on.

    Raises:
        InvalidIdempotencyKey, InvalidJson, ValidationFailed, UnsupportedContentType, UploadTooLarge:
            the request is wrong (nothing is stored).
        IdempotencyKeyReused, IdempotencyKeyInUse: the key meant something else, or is in flight.
        RateLimited, QuotaExceeded: the workspace's limits (a replay is never refused for them).
        ServiceUnavailable: Firestore or Storage is down or slow.
    """
    limiter = limiting.limiter
    workspace_limits = quotas.for_workspace(db, key.workspace_id, limiting.defaults) if limiter.enabled else None
    taken: list[str] = []  # the ids this request took a slot for

    def admit(upload_id: str, expires: datetime) -> dict[str, str]:
        if workspace_limits is None:
            return {}
        fields = limiter.admit(db, key.workspace_id, key.mode, upload_id, expires, workspace_limits)
        taken.append(upload_id)
        return fields

    try:
        created = _create(db, client, settings, key, idempotency_key, raw, origin, admit)
    except BaseException as exc:
        for upload_id in taken:  # the create failed: its slot and its place in the window go back
            limiter.give_back(key.workspace_id, key.mode, upload_id)
        if isinstance(exc, ApiError) and workspace_limits is not None and "RateLimit-Policy" not in exc.headers:
            exc.headers.update(counters.headers(workspace_limits, limiter.usage(key.workspace_id, key.mode)))
        raise
    for upload_id in taken:  # its record is written: Firestore counts it from now on
        limiter.done(key.workspace_id, key.mode, upload_id)
    if workspace_limits is not None and not created.headers:  # a replay: where the window stands now
        return replace(created, headers=counters.headers(workspace_limits, limiter.usage(key.workspace_id, key.mode)))
    return created


def _create(
    db: firestore.Client,
    client: storage.Client,
    settings: Settings,
    key: ApiKey,
    idempotency_key: str | None,
    raw: bytes,
    origin: str | None,
    admit: Callable[[str, datetime], dict[str, str]],
) -> Created:
    idem_key = idempotency.parse_key(idempotency_key)
    asked = _Asked.read(settings, raw, origin)
    fields: dict[str, str] = {}  # the RateLimit fields of the admit, if one was made

    def mint() -> tuple[models.UploadOut, str, dict[str, Any]]:
        out, upload_id, record, admitted = _mint(client, settings, key, asked, admit)
        fields.update(admitted)
        logs.note(upload_id=upload_id)
        return out, upload_id, record

    if idem_key is None:
        out, upload_id, record = mint()
        lifecycle.create_record(db, upload_id, record)
        return Created(out.model_dump(), False, fields)

    def work() -> tuple[dict[str, Any], tuple[Any, dict[str, Any]]]:
        out, upload_id, record = mint()
        # One atomic commit: the upload is recorded if and only if the key completes.
        return out.model_dump(), lifecycle.creation(db, upload_id, record)

    body, replayed = idempotency.once(
        db,
        key.workspace_id,
        key.mode,
        idem_key,
        asked.upload.fingerprint(asked.content_type),
        settings.idempotency_ttl_seconds,
        settings.idempotency_lease_seconds,
        work,
        on_claim_left=lambda: logs.note(claim_left_to_lease=True),
    )
    if not replayed:
        return Created(body, False, fields)
    logs.note(idempotent_replayed=True)
    # In the model's field order (Firestore gives a map's keys back sorted).
    return Created({name: body[name] for name in models.UploadOut.model_fields if name in body}, True, fields)


@dataclass(frozen=True)
class _Asked:
    """A create's body, read and checked: what its session and record are made from."""

    upload: models.UploadRequest
    content_type: str
    extension: str
    origin: str | None  # the browser origin the session is bound to

    @classmethod
    def read(cls, settings: Settings, raw: bytes, origin: str | None) -> _Asked:
        upload = models.validate_upload_request(models.parse_json_object(raw))
        content_type = naming.normalize_content_type(upload.content_type)
        if upload.size_bytes is not None and upload.size_bytes > settings.max_upload_bytes:
            raise UploadTooLarge(settings.max_upload_bytes)
        extension = naming.choose_extension(upload.filename, content_type)
        # A backend minting for a browser names it; else a browser calling us directly is its own origin.
        return cls(upload, content_type, extension, upload.cors_origin or models.browser_origin(origin))


def _mint(
    client: storage.Client,
    settings: Settings,
    key: ApiKey,
    asked: _Asked,
    admit: Callable[[str, datetime], dict[str, str]],
) -> tuple[models.UploadOut, str, dict[str, Any], dict[str, str]]:
    """A new upload: admitted by the limits, its session minted; its answer, id, record and RateLimit fields."""
    upload = asked.upload
    upload_id, name = naming.new_upload(key.workspace_id, asked.extension, key.mode)
    created, expires = clock.lifetime(clock.now(), settings.upload_url_ttl_seconds)
    # Only a new upload is limited (a replay never reaches here); before its session exists.
    admitted = admit(upload_id, expires)
    url = gcs_sessions.mint_session(
        client,
        settings.staging_bucket,
        name,
        asked.content_type,
        asked.origin,
        upload.size_bytes,
        upload.crc32c,
        upload.md5,
    )
    out = models.UploadOut(
        id=upload_id,
        upload_url=url,
        source_url=naming.source_url(settings.cdn_base_url, name),
        expires_at=clock.rfc3339(expires),
    )
    record = lifecycle.new_fields(
        upload_id,
        key.workspace_id,
        key.mode,
        name,
        asked.content_type,
        upload.size_bytes,
        created,
        expires,
        url,
        upload.crc32c,
        upload.md5,
    )
    return out, upload_id, record, admitted
