"""What an upload record is: its states, its fields (read through the typed `Record`), and how a pending one
ends (`Settlement`: complete, reject, cancel, expire). lib/uploads/lifecycle.py stores and reads them; nothing
else touches a record's document.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from lib.uploads.gcs_sessions import StoredObject

PENDING, COMPLETED, REJECTED, CANCELLED, EXPIRED = "pending", "completed", "rejected", "cancelled", "expired"
State = Literal["pending", "completed", "rejected", "cancelled", "expired"]
# Fields the record holds. Queried: (sweep_shard, state, expires_at) by the sweep, (sweep_shard,
# webhook_owed_at) by its republishing of owed events, (workspace_id, mode, state) by `pending_count`.
FIELDS = (
    "workspace_id",
    "mode",
    "object_name",
    "content_type",
    "size_bytes",
    "created_at",
    "expires_at",
    "state",
    "session_url",
    "settled_at",
    "completed_at",
    "crc32c",
    "md5",
    "generation",
    "webhook_owed_at",
    "sweep_shard",
    "declared_crc32c",
    "declared_md5",
    "rejection_code",
    "rejection_message",
    "staged",
    "media",
    "media_bytes_read",
)
# expires_at and webhook_owed_at increase with time. A collection with a
# sequentially increasing indexed field takes about 500 writes a second
# (https://firebase.google.com/docs/firestore/solutions/shard-timestamp, which
# lifts it as here: a shard field leading the composite index, one query per
# shard, the timestamp itself left out of single-field indexing). Every upload
# writes the sweep's index twice (created pending, then settled): with
# SWEEP_SHARDS ranges, 64 x 500 / 2 = 16,000 uploads a second.
SHARD_FIELD = "sweep_shard"
SWEEP_SHARDS = 64


# Set with every state change while webhooks are on, cleared once the event is fanned out
# to the workspace's endpoints (`clear_owed`); the sweep publishes again what stays owed (`owed`).
OWED_FIELD = "webhook_owed_at"


def shard_of(upload_id: str) -> int:
    """The record's shard: from the id's random hex, so it is as even as the ids."""
    return int(upload_id[-4:], 16) % SWEEP_SHARDS


@dataclass(frozen=True)
class Record:
    """One upload as stored: its fields read through the typed properties below (this module alone reads or
    writes `_doc`, the document's map), and changed only by `transition` with a `Settlement`."""

    id: str
    _doc: dict[str, Any]
    update_time: Any
    # True on the record `transition` returns when its own write stored the
    # change (False: another request settled it first, or nothing was written).
    ours: bool = False

    @classmethod
    def of(cls, snap: Any) -> Record:
        """The record a snapshot of an existing upload document holds."""
        return cls(snap.id, snap.to_dict() or {}, snap.update_time)

    @property
    def state(self) -> State:
        return cast(State, self._doc["state"])

    @property
    def workspace_id(self) -> str:
        return str(self._doc["workspace_id"])

    @property
    def mode(self) -> str:
        return str(self._doc["mode"])

    @property
    def object_name(self) -> str:
        return str(self._doc["object_name"])

    @property
    def content_type(self) -> str:
        return str(self._doc["content_type"])

    @property
    def session_url(self) -> str:
        return str(self._doc["session_url"])

    @property
    def staged(self) -> bool:
        """Its session writes to the staging bucket (False: a record from before staging, written in place)."""
        return bool(self._doc.get("staged"))

    @property
    def size_bytes(self) -> int | None:
        """Declared while pending (None: not declared); what landed once completed."""
        return self._doc.get("size_bytes")

    @property
    def declared(self) -> dict[str, Any]:
        """What the client declared, for settling to check: size_bytes, declared_crc32c, declared_md5."""
        return {name: self._doc.get(name) for name in ("size_bytes", "declared_crc32c", "declared_md5")}

    @property
    def created_at(self) -> datetime:
        return self._time("created_at")

    @property
    def expires_at(self) -> datetime:
        return self._time("expires_at")

    @property
    def settled_at(self) -> datetime:
        return self._time("settled_at")

    @property
    def completed_at(self) -> datetime | None:
        return self._doc.get("completed_at")

    @property
    def crc32c(self) -> str | None:
        return self._doc.get("crc32c")

    @property
    def md5(self) -> str | None:
        return self._doc.get("md5")

    @property
    def generation(self) -> int | None:
        """The object it completed with (served), or the one refused."""
        return self._doc.get("generation")

    @property
    def rejection(self) -> tuple[str, str] | None:
        """(code, message) of a rejected upload."""
        if self.state != REJECTED:
            return None
        return str(self._doc["rejection_code"]), str(self._doc["rejection_message"])

    @property
    def media(self) -> dict[str, Any] | None:
        """ffprobe's facts of a completed upload's bytes (None: none recorded)."""
        return self._doc.get("media") if self.state == COMPLETED else None

    @property
    def owed(self) -> bool:
        """Its webhook event is owed (not yet fanned out)."""
        return self._doc.get(OWED_FIELD) is not None

    def settled_by(self, settlement: Settlement, update_time: Any, owed: bool) -> Record:
        """This record once `settlement` is stored over it at `update_time` (with the webhook event owed if
        `owed`): its session URL forgotten, `settled_at` the write's time."""
        doc = {k: v for k, v in self._doc.items() if k != "session_url"}
        doc.update(settlement.changes(), settled_at=update_time)
        if owed:
            doc[OWED_FIELD] = update_time
        return Record(self.id, doc, update_time, ours=True)

    def _time(self, name: str) -> datetime:
        value = self._doc[name]
        assert isinstance(value, datetime), name  # Firestore gives timestamps back as datetimes
        return value


@dataclass(frozen=True)
class Settlement:
    """How a pending upload ends, as its record will say: `complete`, `reject`, `cancel`, `expire`. Only the
    fields an ending sets are written (`changes`)."""

    state: str
    generation: int | None = None  # the object completed with, or refused
    size_bytes: int | None = None
    crc32c: str | None = None
    md5: str | None = None
    completed_at: datetime | None = None
    rejection_code: str | None = None
    rejection_message: str | None = None
    media: dict[str, Any] | None = None  # the media check's facts (completed)
    media_bytes_read: int | None = None  # what the media check read (completed or rejected by it)

    @classmethod
    def complete(cls, obj: StoredObject, media: dict[str, Any] | None = None) -> Settlement:
        """Completed by `obj`: its size, checksums, generation and finalization time recorded."""
        return cls(COMPLETED, obj.generation, obj.size, obj.crc32c, obj.md5, obj.created, media=media)

    @classmethod
    def reject(cls, obj: StoredObject, code: str, message: str) -> Settlement:
        """Rejected: `size_bytes` keeps what was declared, `generation` names the object refused."""
        return cls(REJECTED, obj.generation, rejection_code=code, rejection_message=message)

    @classmethod
    def cancel(cls) -> Settlement:
        return cls(CANCELLED)

    @classmethod
    def expire(cls) -> Settlement:
        return cls(EXPIRED)

    def changes(self) -> dict[str, Any]:
        """The fields this ending writes."""
        changes: dict[str, Any] = {"state": self.state}
        if self.state == COMPLETED:
            changes.update(
                size_bytes=self.size_bytes,
                crc32c=self.crc32c,
                md5=self.md5,
                generation=self.generation,
                completed_at=self.completed_at,
            )
        elif self.state == REJECTED:
            changes.update(
                rejection_code=self.rejection_code, rejection_message=self.rejection_message, generation=self.generation
            )
        if self.media is not None:
            changes["media"] = self.media
        if self.media_bytes_read is not None:
            changes["media_bytes_read"] = self.media_bytes_read
        return changes


def new_fields(
    upload_id: str,
    workspace_id: str,
    mode: str,
    object_name: str,
    content_type: str,
    size_bytes: int | None,
    created_at: datetime,
    expires_at: datetime,
    session_url: str,
    crc32c: str | None = None,
    md5: str | None = None,
) -> dict[str, Any]:
    """A new pending record, its session writing to the staging bucket (`staged`). `size_bytes`,
    `crc32c` and `md5` are what the client declared (None: not declared): what lands is checked
    against them."""
    return {
        SHARD_FIELD: shard_of(upload_id),
        "workspace_id": workspace_id,
        "mode": mode,
        "object_name": object_name,
        "content_type": content_type,
        "size_bytes": size_bytes,
        "created_at": created_at,
        "expires_at": expires_at,
        "state": PENDING,
        "session_url": session_url,
        "declared_crc32c": crc32c,
        "declared_md5": md5,
        "staged": True,
    }
