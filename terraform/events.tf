# Storage events: the moment an upload's object is finalized, GCS tells the
# function, which records the upload completed (lib/uploads/storage_events.py).
#
#   uploads bucket --OBJECT_FINALIZE (JSON_API_V1)--> topic --push, OIDC--> POST <function>/internal/storage-events
#                                                       \--after max_delivery_attempts--> dead-letter topic --> pull subscription (kept 7 days)
#
# Google's pages this follows:
# - Pub/Sub notifications for Cloud Storage: https://cloud.google.com/storage/docs/pubsub-notifications
#   (the project's Cloud Storage service agent publishes, so it needs roles/pubsub.publisher on the topic).
# - Push authentication: https://cloud.google.com/pubsub/docs/authenticate-push-subscriptions
#   (the deployer needs iam.serviceAccounts.actAs on the push account; projects
#   made before 2021-04-08 also need the Pub/Sub service agent to hold
#   roles/iam.serviceAccountTokenCreator, granted below on this account only).
# - Dead-letter topics: https://cloud.google.com/pubsub/docs/handling-failures
#   (the Pub/Sub service agent publishes to the dead-letter topic and acknowledges
#   on the source subscription; a dead-letter topic without a subscription loses messages).

locals {
  # As for the sweep (scheduler.tf): a string both sides agree on, fixed by the inputs alone.
  events_audience = "https://${var.region}-${var.project_id}.cloudfunctions.net/${var.function_name}/internal/storage-events"
  # service-<project number>@gcp-sa-pubsub.iam.gserviceaccount.com, created first (below).
  pubsub_agent = google_project_service_identity.pubsub.email
}

# The Pub/Sub service agent, asked for before anything grants it a role. Google
# creates service agents "as you enable and use" a service, and "if a service
# agent hasn't been created yet, then you can't grant roles to the service
# agent"; asking for it first is the documented way, and the page names
# Terraform as the case for it (https://cloud.google.com/iam/docs/create-service-agents;
# `gcloud beta services identity create --service=pubsub.googleapis.com` is the
# same request by hand). On a project whose agent already exists it returns
# that agent. Every grant to it here and in webhooks.tf goes through
# local.pubsub_agent, so none is attempted before it exists: one apply works
# from an empty project.
resource "google_project_service_identity" "pubsub" {
  provider = google-beta
  project  = var.project_id
  service  = "pubsub.googleapis.com"

  depends_on = [google_project_service.enabled]
}

# Google grants an agent it creates on its own the role it needs, but not one created on request:
# "After you trigger service agent creation, you must grant the service agents the roles that they
# are typically granted automatically ... service agents that are created at a user's request aren't
# automatically granted roles" (https://cloud.google.com/iam/docs/create-service-agents). Pub/Sub's is
# Cloud Pub/Sub Service Agent (roles/pubsub.serviceAgent, "Grants Cloud Pub/Sub Service Account
# access to manage resources", https://cloud.google.com/iam/docs/roles-permissions/pubsub; the role
# per agent: https://cloud.google.com/iam/docs/service-agents), granted before any subscription.
resource "google_project_iam_member" "pubsub_agent" {
  #checkov:skip=CKV_GCP_49:Google's own agent, given the role Google gives it on the project when it creates the agent itself (the pages cited above).
  project = var.project_id
  role    = "roles/pubsub.serviceAgent"
  member  = "serviceAccount:${local.pubsub_agent}"
}

data "google_storage_project_service_account" "gcs" {
  project = var.project_id
}

resource "google_pubsub_topic" "storage_events" {
  #checkov:skip=CKV_GCP_83:Messages hold object names and sizes, no content; Google-managed encryption is enough.
  project = var.project_id
  name    = "${var.name}-storage-events"

  # Kept a day for redelivery while the function is down.
  message_retention_duration = "86400s"

  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_topic_iam_member" "gcs_publishes" {
  project = var.project_id
  topic   = google_pubsub_topic.storage_events.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

# One notification per upload prefix (lib/uploads/naming.py PREFIXES): a notification takes one prefix.
# On the staging bucket, where sessions write: the uploads bucket's objects are the function's own
# placements of uploads it has already settled, so it has no notification.
resource "google_storage_notification" "finalize" {
  for_each = toset(["uploads/", "test-uploads/"])

  bucket             = google_storage_bucket.staging.name
  topic              = google_pubsub_topic.storage_events.id
  payload_format     = "JSON_API_V1"
  event_types        = ["OBJECT_FINALIZE"]
  object_name_prefix = each.value

  depends_on = [google_pubsub_topic_iam_member.gcs_publishes]
}

# The identity Pub/Sub signs the pushes' OIDC tokens as. It needs no role: the
# function is publicly invocable and checks the token itself (EVENTS_SERVICE_ACCOUNT).
resource "google_service_account" "events" {
  project      = var.project_id
  account_id   = "${var.name}-events"
  display_name = "Framelane uploads storage events (Pub/Sub push)"
}

resource "google_service_account_iam_member" "pubsub_mints_event_tokens" {
  service_account_id = google_service_account.events.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${local.pubsub_agent}"
}

resource "google_pubsub_topic" "storage_events_dead" {
  #checkov:skip=CKV_GCP_83:Messages hold object names and sizes, no content; Google-managed encryption is enough.
  project = var.project_id
  name    = "${var.name}-storage-events-dead"

  depends_on = [google_project_service.enabled]
}

# Where dead-lettered events wait for an operator (gcloud pubsub subscriptions pull).
resource "google_pubsub_subscription" "storage_events_dead" {
  project                    = var.project_id
  name                       = "${var.name}-storage-events-dead"
  topic                      = google_pubsub_topic.storage_events_dead.id
  message_retention_duration = "604800s"
  ack_deadline_seconds       = 60

  expiration_policy {
    ttl = "" # never expires
  }
}

resource "google_pubsub_subscription" "storage_events" {
  project = var.project_id
  name    = "${var.name}-storage-events"
  topic   = google_pubsub_topic.storage_events.id

  # How long Pub/Sub waits for the push's answer: above the function's worst
  # case for one event (a Firestore read and write, a Storage delete: ~30 s).
  ack_deadline_seconds       = 60
  message_retention_duration = "86400s"

  push_config {
    push_endpoint = "${google_cloudfunctions2_function.uploads.service_config[0].uri}/internal/storage-events"

    oidc_token {
      service_account_email = google_service_account.events.email
      audience              = local.events_audience
    }
  }

  # A 503 (Firestore or Storage down) is retried with backoff.
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  # A 400 (not an event we can read) is retried a few times, then set aside.
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.storage_events_dead.id
    max_delivery_attempts = var.event_max_delivery_attempts
  }

  expiration_policy {
    ttl = "" # never expires, however quiet the bucket
  }

  depends_on = [google_service_account_iam_member.pubsub_mints_event_tokens, google_project_iam_member.pubsub_agent]
}

resource "google_pubsub_topic_iam_member" "pubsub_dead_letters" {
  project = var.project_id
  topic   = google_pubsub_topic.storage_events_dead.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${local.pubsub_agent}"
}

resource "google_pubsub_subscription_iam_member" "pubsub_forwards" {
  project      = var.project_id
  subscription = google_pubsub_subscription.storage_events.name
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${local.pubsub_agent}"
}
