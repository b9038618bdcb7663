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

# The sweep's query: state == "pending" and expires_at <= now, ordered by
# expires_at (lib/lifecycle.py sweep). Equality on one field with a range on
# another needs this composite index.
resource "google_firestore_index" "uploads_sweep" {
  project     = var.project_id
  database    = google_firestore_database.main.name
  collection  = "uploads"
  query_scope = "COLLECTION"

  fields {
    field_path = "state"
    order      = "ASCENDING"
  }

  fields {
    field_path = "expires_at"
    order      = "ASCENDING"
  }
}

# Upload records are read by id, and queried only on state and expires_at (the
# sweep, above). `session_url` is a long secret; no field but those two needs
# an index.
resource "google_firestore_field" "uploads_unindexed" {
  for_each = toset(["workspace_id", "mode", "object_name", "content_type", "size_bytes", "created_at", "session_url", "settled_at", "completed_at", "crc32c", "md5", "generation"])

  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "uploads"
  field      = each.value

  index_config {}
}
