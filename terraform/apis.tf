locals {
  services = toset([
    "artifactregistry.googleapis.com",     # the function's container image
    "cloudbuild.googleapis.com",           # builds the function from source
    "cloudfunctions.googleapis.com",       # the function
    "cloudresourcemanager.googleapis.com", # project IAM bindings
    "cloudscheduler.googleapis.com",       # the sweep that enforces upload expiry
    "compute.googleapis.com",              # load balancers, Cloud CDN, certificates
    "firestore.googleapis.com",            # API keys and idempotency records
    "iam.googleapis.com",                  # service accounts
    "logging.googleapis.com",              # build and request logs, log-based metrics
    "monitoring.googleapis.com",           # alert policies, uptime check, dashboard (monitoring.tf)
    "pubsub.googleapis.com",               # storage events (events.tf)
    "redis.googleapis.com",                # Memorystore for Redis: the limits' store (limits.tf)
    "secretmanager.googleapis.com",        # the limits store's AUTH string (limits.tf)
    "run.googleapis.com",                  # the Cloud Run service behind a 2nd-gen function
    "storage.googleapis.com",              # the buckets
  ])
}

resource "google_project_service" "enabled" {
  for_each = local.services

  project = var.project_id
  service = each.value
  # Other things in the project may use these APIs: never turn them off on destroy.
  disable_on_destroy = false
}
