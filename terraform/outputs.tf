output "function_url" {
  description = "The function's own HTTPS URL: POST <function_url>/v1/uploads."
  value       = google_cloudfunctions2_function.uploads.url
}

output "cdn_ip_address" {
  description = "Point an A record for cdn_domain at this address (and wait for the managed certificate)."
  value       = google_compute_global_address.cdn.address
}

output "cdn_base_url" {
  description = "The CDN_BASE_URL given to the function: source_url = this + / + object name."
  value       = local.cdn_base_url
}

output "api_ip_address" {
  description = "With api_domain set: point an A record for it at this address. Otherwise null."
  value       = local.api_enabled ? google_compute_global_address.api[0].address : null
}

output "dns_records" {
  description = "The DNS records to create by hand."
  value = merge(
    { (var.cdn_domain) = "A ${google_compute_global_address.cdn.address}" },
    local.api_enabled ? { (var.api_domain) = "A ${google_compute_global_address.api[0].address}" } : {},
  )
}

output "upload_bucket" {
  description = "The private bucket the CDN serves verified uploads from."
  value       = google_storage_bucket.uploads.name
}

output "staging_bucket" {
  description = "The private bucket upload sessions write to; never served. Rejected uploads' bytes stay here for staging_retention_days."
  value       = google_storage_bucket.staging.name
}

output "function_source_bucket" {
  description = "The bucket holding the function's source archives."
  value       = google_storage_bucket.function_source.name
}

output "runtime_service_account" {
  description = "The function's identity."
  value       = google_service_account.runtime.email
}

output "build_service_account" {
  description = "The identity Cloud Build builds the function as."
  value       = google_service_account.build.email
}

output "firestore_database" {
  description = "The Firestore database id (FIRESTORE_DATABASE for the key CLI)."
  value       = google_firestore_database.main.name
}

output "sweep_jobs" {
  description = "The Cloud Scheduler jobs that expire uploads (run one now: gcloud scheduler jobs run NAME --location REGION)."
  value       = google_cloud_scheduler_job.sweep[*].name
}

output "events_service_account" {
  description = "The identity storage events are pushed as (EVENTS_SERVICE_ACCOUNT)."
  value       = google_service_account.events.email
}

output "dead_letter_subscription" {
  description = "Storage events Pub/Sub gave up on: gcloud pubsub subscriptions pull NAME --auto-ack."
  value       = google_pubsub_subscription.storage_events_dead.name
}

output "sweep_service_account" {
  description = "The identity the sweep's OIDC tokens are signed as (SWEEP_SERVICE_ACCOUNT)."
  value       = google_service_account.sweep.email
}

output "webhooks_service_account" {
  description = "The identity webhook messages are pushed to the function as (WEBHOOKS_SERVICE_ACCOUNT)."
  value       = google_service_account.webhooks.email
}

output "webhooks_topic" {
  description = "The topic webhook event and delivery messages go through (its subscription's backlog is the retry queue)."
  value       = google_pubsub_topic.webhooks.name
}
