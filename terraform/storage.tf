locals {
  # Browsers PUT to resumable session URLs (and preflight them) from customers' apps.
  session_cors = {
    origin          = var.cors_origins
    method          = ["PUT", "POST", "OPTIONS"]
    response_header = ["Content-Type", "Content-Range", "Range", "Location", "X-Goog-Upload-Status", "X-Goog-Upload-Chunk-Granularity", "X-Goog-Upload-Size-Received", "X-GUploader-UploadID"]
    max_age_seconds = 3600
  }
}

resource "google_storage_bucket" "uploads" {
  #checkov:skip=CKV_GCP_78:Versioning adds nothing: sessions use if_generation_match=0, so no object is ever overwritten; soft delete covers deletions.
  #checkov:skip=CKV_GCP_62:Usage and storage logs are superseded by Cloud Audit Logs (data access) and Cloud CDN request logs on the load balancer.
  name     = local.upload_bucket
  project  = var.project_id
  location = var.bucket_location

  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  # Sessions write to the staging bucket now; this serves browsers' sessions minted before the
  # upgrade (for UPLOAD_URL_TTL_SECONDS after it), and may go in the release after.
  dynamic "cors" {
    for_each = [local.session_cors]
    content {
      origin          = cors.value.origin
      method          = cors.value.method
      response_header = cors.value.response_header
      max_age_seconds = cors.value.max_age_seconds
    }
  }

  soft_delete_policy {
    retention_duration_seconds = var.upload_soft_delete_days * 86400
  }

  # Test-mode traffic never lingers: lib/uploads/naming.py PREFIXES["test"].
  lifecycle_rule {
    action {
      type = "Delete"
    }
    condition {
      age            = var.test_upload_retention_days
      matches_prefix = ["test-uploads/"]
    }
  }

  dynamic "lifecycle_rule" {
    for_each = var.upload_retention_days > 0 ? [var.upload_retention_days] : []
    content {
      action {
        type = "Delete"
      }
      condition {
        age            = lifecycle_rule.value
        matches_prefix = ["uploads/"]
      }
    }
  }

  depends_on = [google_project_service.enabled]
}

# Where upload sessions write (lib/uploads/settling.py): an object is served from the uploads bucket only
# once it is checked, placed there by a rewrite. This bucket has no CDN backend and no reader but
# the function, so nothing in it is ever served.
# - Same location and storage class as the uploads bucket: a rewrite between them then completes in
#   a single request, the rewrite page says, in a dual-region once the object has replicated (or with
#   turbo replication); otherwise the function follows the rewrite's token (docs/design-media.md
#   quotes the page). No Autoclass, and its only lifecycle rule deletes (one that changed the class
#   would break the condition).
# - No soft delete (https://cloud.google.com/storage/docs/soft-delete: it is per bucket and keeps
#   every deleted object for at least 7 days): each upload's staging object is deleted the moment
#   it is placed, and keeping those would bill every upload's bytes a second time for a week.
# - Rejected uploads' bytes stay here, for support, until the lifecycle rule deletes them
#   (var.staging_retention_days); so do objects the function could not delete.
resource "google_storage_bucket" "staging" {
  #checkov:skip=CKV_GCP_78:Versioning adds nothing: sessions use if_generation_match=0, and every object here is transient by design.
  #checkov:skip=CKV_GCP_62:Usage and storage logs are superseded by Cloud Audit Logs (data access).
  name     = "${local.upload_bucket}-staging"
  project  = var.project_id
  location = google_storage_bucket.uploads.location

  storage_class               = google_storage_bucket.uploads.storage_class
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  dynamic "cors" {
    for_each = [local.session_cors]
    content {
      origin          = cors.value.origin
      method          = cors.value.method
      response_header = cors.value.response_header
      max_age_seconds = cors.value.max_age_seconds
    }
  }

  soft_delete_policy {
    retention_duration_seconds = 0
  }

  lifecycle_rule {
    action {
      type = "Delete"
    }
    condition {
      age = var.staging_retention_days
    }
  }

  depends_on = [google_project_service.enabled]
}

# The function's zipped source, one object per content hash.
resource "google_storage_bucket" "function_source" {
  #checkov:skip=CKV_GCP_62:Holds only build inputs; access is recorded by Cloud Audit Logs.
  name     = "${local.upload_bucket}-fn-source"
  project  = var.project_id
  location = var.bucket_location

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  versioning {
    enabled = true
  }

  # No age-based deletion: a redeploy (even of settings only) rebuilds from the
  # current archive, and old ones are what a rollback needs. They are a few KB.

  depends_on = [google_project_service.enabled]
}
