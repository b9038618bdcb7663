resource "google_firestore_database" "main" {
  project     = var.project_id
  name        = var.firestore_database
  location_id = local.firestore_location
  type        = "FIRESTORE_NATIVE"

  concurrency_mode                  = "OPTIMISTIC"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = "DELETE_PROTECTION_ENABLED"
  # `terraform destroy` leaves the database (and its keys) in place.
  deletion_policy = "ABANDON"

  depends_on = [google_project_service.enabled]
}

# Firestore deletes idempotency records once their expires_at has passed (the
# code already treats them as absent; TTL deletion can lag by a day).
resource "google_firestore_field" "idempotency_ttl" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "idempotency_keys"
  field      = "expires_at"

  ttl_config {}

  # Records are only ever read by id: no single-field index on this field.
  index_config {}
}

# Idempotency records are only ever read by id, so indexing their fields is pure
# write cost (and `response` holds long URLs). Exempt every field the code writes;
# expires_at is exempted above, with its TTL.
resource "google_firestore_field" "idempotency_unindexed" {
  for_each = toset(["workspace_id", "mode", "fingerprint", "state", "claim_token", "response", "created_at", "lease_expires_at"])

  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "idempotency_keys"
  field      = each.value

  index_config {}
}

# The sweep's query, one per shard: sweep_shard == s, state == "pending",
# expires_at <= now, ordered by expires_at (lib/uploads/lifecycle.py sweep). The shard
# leads so that the index's entries, whose expires_at increases with time, fall
# in SWEEP_SHARDS ranges instead of one: Firestore takes about 500 writes a
# second to a sequentially increasing index range
# (https://firebase.google.com/docs/firestore/solutions/shard-timestamp).
# Migration from the unsharded index: docs/operations.md, "Capacity".
#
# And the sweep's republishing of owed webhook events, one query per shard:
# sweep_shard == s, webhook_owed_at <= now - 10 min, ordered by webhook_owed_at
# (lib/webhooks/fanout.py owed). Sharded for the same reason.
locals {
  upload_indexes = {
    sweep = ["sweep_shard", "state", "expires_at"]
    owed  = ["sweep_shard", "webhook_owed_at"]
    # A workspace's pending uploads, counted for ops (lib/uploads/lifecycle.py pending_count,
    # `python -m lib.admin limits`); no sequential field, so no hotspot.
    pending = ["workspace_id", "mode", "state"]
  }
}

resource "google_firestore_index" "uploads" {
  for_each = local.upload_indexes

  project     = var.project_id
  database    = google_firestore_database.main.name
  collection  = "uploads"
  query_scope = "COLLECTION"

  dynamic "fields" {
    for_each = each.value
    content {
      field_path = fields.value
      order      = "ASCENDING"
    }
  }
}

# Upload records are read by id and queried only through the composite
# indexes above. No single-field index is needed but state's (the shard
# backfill pages through pending records with it); expires_at and
# webhook_owed_at in particular must not have one, or their sequential values
# would cap writes at ~500 a second whatever the composites do.
# `session_url` is a long secret.
resource "google_firestore_field" "uploads_unindexed" {
  for_each = toset(["workspace_id", "mode", "object_name", "content_type", "size_bytes", "created_at", "expires_at", "session_url", "settled_at", "completed_at", "crc32c", "md5", "generation", "webhook_owed_at", "sweep_shard", "declared_crc32c", "declared_md5", "rejection_code", "rejection_message", "staged", "media", "media_bytes_read"])

  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "uploads"
  field      = each.value

  index_config {}
}

# --- Webhooks (lib/webhooks/fanout.py) ---------------------------------------------------

# Delivery attempts are kept 7 days: Firestore deletes each once its expire_at has
# passed (TTL deletion can lag by a day). Only ever compared by TTL: no index.
resource "google_firestore_field" "webhook_deliveries_ttl" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "webhook_deliveries"
  field      = "expire_at"

  ttl_config {}

  index_config {}
}

# `webhook-deliveries --workspace WS`: workspace_id == WS, newest first.
resource "google_firestore_index" "webhook_deliveries_recent" {
  project     = var.project_id
  database    = google_firestore_database.main.name
  collection  = "webhook_deliveries"
  query_scope = "COLLECTION"

  fields {
    field_path = "workspace_id"
    order      = "ASCENDING"
  }

  fields {
    field_path = "at"
    order      = "DESCENDING"
  }
}

# Attempt documents are queried only on workspace_id and at (above); their
# attempts are one JSON string (lib/webhooks/attempts.py write_rows), up to 500 of them:
# never worth an index entry.
resource "google_firestore_field" "webhook_deliveries_unindexed" {
  for_each = toset(["attempts"])

  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "webhook_deliveries"
  field      = each.value

  index_config {}
}

# The fan-out's query: an upload's workspace_id and mode, both equalities
# (lib/webhooks/endpoints.py list_endpoints). list-webhooks filters on workspace_id alone,
# which its single-field index serves.
resource "google_firestore_index" "webhook_endpoints_by_workspace_mode" {
  project     = var.project_id
  database    = google_firestore_database.main.name
  collection  = "webhook_endpoints"
  query_scope = "COLLECTION"

  fields {
    field_path = "workspace_id"
    order      = "ASCENDING"
  }

  fields {
    field_path = "mode"
    order      = "ASCENDING"
  }
}

# Endpoints are read by id and queried only as above. The signing secrets must
# never sit in an index.
resource "google_firestore_field" "webhook_endpoints_unindexed" {
  for_each = toset(["url", "secret", "previous_secret", "previous_secret_expires_at", "created_at", "rotated_at"])

  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "webhook_endpoints"
  field      = each.value

  index_config {}
}
