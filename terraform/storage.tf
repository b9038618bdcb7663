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

  # Browsers PUT to resumable session URLs (and preflight them) from customers' apps.
  cors {
    origin          = var.cors_origins
    method          = ["PUT", "POST", "OPTIONS"]
    response_header = ["Content-Type", "Content-Range", "Range", "Location", "X-Goog-Upload-Status", "X-Goog-Upload-Chunk-Granularity", "X-Goog-Upload-Size-Received", "X-GUploader-UploadID"]
    max_age_seconds = 3600
  }

  soft_delete_policy {
    retention_duration_seconds = var.upload_soft_delete_days * 86400
  }

  # Test-mode traffic never lingers: lib/uploads.py PREFIXES["test"].
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
