locals {
  repo_root = abspath("${path.module}/..")
  # Exactly what the function needs at runtime: the entrypoint, its package and
  # the requirements the build installs. Nothing from dev/, tests/ or terraform/.
  function_files = setunion(["main.py", "requirements.txt"], fileset(local.repo_root, "lib/*.py"))
}

data "archive_file" "function" {
  type        = "zip"
  output_path = "${path.module}/.build/function-source.zip"

  dynamic "source" {
    for_each = local.function_files
    content {
      content  = file("${local.repo_root}/${source.value}")
      filename = source.value
    }
  }
}

# Named by the archive's hash: a code change is a new object, which redeploys.
resource "google_storage_bucket_object" "function_source" {
  name   = "${var.function_name}-${data.archive_file.function.output_sha256}.zip"
  bucket = google_storage_bucket.function_source.name
  source = data.archive_file.function.output_path
}

resource "google_cloudfunctions2_function" "uploads" {
  #checkov:skip=CKV_GCP_124:Public API: clients call it from anywhere; every request is authenticated by API key.
  name        = var.function_name
  project     = var.project_id
  location    = var.region
  description = "POST /v1/uploads: mints GCS resumable upload sessions for API clients."

  build_config {
    runtime         = "python311" # the Python that CI runs the tests on
    entry_point     = "uploads"
    service_account = google_service_account.build.id

    source {
      storage_source {
        bucket = google_storage_bucket.function_source.name
        object = google_storage_bucket_object.function_source.name
      }
    }
  }

  service_config {
    min_instance_count               = var.min_instances
    max_instance_count               = var.max_instances
    max_instance_request_concurrency = var.concurrency
    available_cpu                    = var.cpu
    available_memory                 = var.memory
    timeout_seconds                  = var.timeout_seconds
    service_account_email            = google_service_account.runtime.email
    ingress_settings                 = "ALLOW_ALL"
    all_traffic_on_latest_revision   = true

    # Exactly the settings lib/config.py reads (tests/test_terraform.py holds them
    # together), plus THREADS for functions-framework: it serves with gunicorn
    # threads = THREADS, else 4 per vCPU, which would cap the concurrency below.
    environment_variables = {
      THREADS                   = tostring(var.concurrency)
      GOOGLE_CLOUD_PROJECT      = var.project_id
      UPLOAD_BUCKET             = google_storage_bucket.uploads.name
      CDN_BASE_URL              = local.cdn_base_url
      UPLOAD_URL_TTL_SECONDS    = tostring(var.upload_url_ttl_seconds)
      IDEMPOTENCY_TTL_SECONDS   = tostring(var.idempotency_ttl_seconds)
      IDEMPOTENCY_LEASE_SECONDS = tostring(var.idempotency_lease_seconds)
      API_KEY_CACHE_TTL_SECONDS = tostring(var.api_key_cache_ttl_seconds)
      FIRESTORE_DATABASE        = google_firestore_database.main.name
      MAX_UPLOAD_BYTES          = tostring(var.max_upload_bytes)
      SWEEP_SERVICE_ACCOUNT     = google_service_account.sweep.email
      SWEEP_AUDIENCE            = local.sweep_audience
    }
  }

  depends_on = [
    google_project_service.enabled,
    google_project_iam_member.build,
    google_project_iam_member.runtime_firestore,
    google_storage_bucket_iam_member.runtime_uploads,
    google_storage_bucket_iam_member.runtime_uploads_read,
  ]
}

# Anyone may invoke it: the function itself authenticates every request by API key.
resource "google_cloud_run_service_iam_member" "public" {
  #checkov:skip=CKV_GCP_102:Public by design: a public API; the function authenticates every request by its API key.
  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.uploads.name # a 2nd-gen function runs as the Cloud Run service of its name
  role     = "roles/run.invoker"
  member   = "allUsers"
}
