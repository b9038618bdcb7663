locals {
  # Each job sweeps an equal slice of lib/uploads/lifecycle.py's 64 shards (?shards=A-B);
  # one job sweeps them all with no parameter.
  sweep_shards = 64
  sweep_slice  = local.sweep_shards / var.sweep_jobs
  # The audience the sweep's tokens are minted for and the function checks. It
  # names the sweep but cannot be the function's own run.app URL: the function's
  # settings would then depend on the function. Any string both sides agree on
  # serves; this one is fixed by the inputs alone.
  sweep_audience = "https://${var.region}-${var.project_id}.cloudfunctions.net/${var.function_name}/internal/sweep"
}

# Every few minutes: cancel the sessions of uploads still pending after their
# expires_at (POST /internal/sweep, authenticated by a Google-signed OIDC token).
resource "google_cloud_scheduler_job" "sweep" {
  count = var.sweep_jobs

  name        = var.sweep_jobs == 1 ? "${var.name}-sweep" : "${var.name}-sweep-${count.index}"
  project     = var.project_id
  region      = var.region
  description = "Expires uploads pending past expires_at: POST /internal/sweep on the uploads function."
  schedule    = var.sweep_schedule
  time_zone   = "Etc/UTC"
  # The sweep starts no work after 25 s and ends by ~45 s; the function's timeout bounds
  # it. (Scheduler allows HTTP targets 15 s to 30 minutes.)
  attempt_deadline = "${min(var.timeout_seconds, 1800)}s"

  retry_config {
    # A failed run is retried once; the next scheduled run picks up anything left.
    retry_count          = 1
    min_backoff_duration = "30s"
  }

  http_target {
    http_method = "POST"
    uri         = "${google_cloudfunctions2_function.uploads.service_config[0].uri}/internal/sweep${var.sweep_jobs == 1 ? "" : "?shards=${count.index * local.sweep_slice}-${(count.index + 1) * local.sweep_slice - 1}"}"

    oidc_token {
      service_account_email = google_service_account.sweep.email
      audience              = local.sweep_audience
    }
  }

  depends_on = [google_project_service.enabled]
}

# The job was one resource before sweep_jobs; its state moves to the first of them.
moved {
  from = google_cloud_scheduler_job.sweep
  to   = google_cloud_scheduler_job.sweep[0]
}
