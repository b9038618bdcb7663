# Webhooks: each state change of an upload is pushed, signed, to the endpoints
# of its workspace and mode (lib/webhooks/fanout.py). One topic carries both steps:
#
#   state change --event message--> topic --push, OIDC--> POST <deliveries>/internal/webhooks  (fan-out:
#                                     ^                     one delivery message per endpoint)
#                                     \---delivery messages--/ --push--> same route: sign, POST to the endpoint
#   after max_delivery_attempts --> dead-letter topic --push, OIDC--> POST <deliveries>/internal/webhook-dead-letters
#                                                                     (recorded: webhook-deliveries shows it)
#
# Each (event, endpoint) pair is its own message, so Pub/Sub retries a failing
# endpoint's deliveries alone. Retries: exponential backoff from 10 s to 600 s
# (the most a retry policy allows), for var.webhook_max_delivery_attempts
# attempts: at 100, if each wait doubles until the cap, 10+20+40+80+160+320 s
# and then 93 x 600 s, some 16 hours, over the 12 the product promises. Google
# documents the backoff as exponential between the bounds without stating the
# factor (a slower growth only reaches the cap later, so 80 attempts stay near
# 12 hours), and calls both the backoff and the attempt count best effort.
#
# Google's pages this follows:
# - Retry policy: https://cloud.google.com/pubsub/docs/subscription-retry-policy
#   (minimum_backoff and maximum_backoff 0-600 s; exponential between them).
# - Dead-letter topics: https://cloud.google.com/pubsub/docs/handling-failures
#   (max_delivery_attempts 5-100; the Pub/Sub service agent publishes to the
#   dead-letter topic and acknowledges on the source subscription).
# - Push subscriptions: https://cloud.google.com/pubsub/docs/push (the envelope's
#   deliveryAttempt; a non-2xx answer is a negative acknowledgement; Pub/Sub
#   adjusts its push rate to the rate of successes, so many failing endpoints
#   slow every endpoint's deliveries: see docs/api.md, "Webhooks").
# - Push authentication: https://cloud.google.com/pubsub/docs/authenticate-push-subscriptions

# Only Pub/Sub reaches the deliveries function: Cloud Run refuses every request whose token is not
# Google's, for its URL, from an account holding roles/run.invoker on it (deliveries_push below,
# the only grant). "Clients that call an Identity and Access Management-protected Cloud Run service
# must provide a valid ID token that includes an audience (aud) claim matching the receiving
# service's *.run.app URL" (https://cloud.google.com/run/docs/configuring/custom-audiences), and a
# push subscription's token carries the audience it is given
# (https://cloud.google.com/pubsub/docs/authenticate-push-subscriptions): so the pushes' audience is
# the function's own run.app URL (service_config.uri). The function checks the token again itself
# (lib/platform/push.py), for the URL the push reached (WEBHOOKS_AUDIENCE = own-url): its own URL cannot be
# in its own settings, which Terraform must know before the function, and so its URL, exists.
locals {
  webhooks_audience = google_cloudfunctions2_function.deliveries.service_config[0].uri
}

resource "google_pubsub_topic" "webhooks" {
  #checkov:skip=CKV_GCP_83:Messages hold upload metadata and endpoint ids, no secrets; Google-managed encryption is enough.
  project = var.project_id
  name    = "${var.name}-webhooks"

  depends_on = [google_project_service.enabled]
}

# The API function publishes event messages (on each state change, and the sweep's republishing).
resource "google_pubsub_topic_iam_member" "runtime_publishes_webhooks" {
  project = var.project_id
  topic   = google_pubsub_topic.webhooks.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${google_service_account.runtime.email}"
}

# The deliveries function publishes delivery messages (fan-out).
resource "google_pubsub_topic_iam_member" "deliveries_publish_webhooks" {
  project = var.project_id
  topic   = google_pubsub_topic.webhooks.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${google_service_account.deliveries.email}"
}

# The identity Pub/Sub signs the webhook pushes' OIDC tokens as (WEBHOOKS_SERVICE_ACCOUNT).
resource "google_service_account" "webhooks" {
  project      = var.project_id
  account_id   = "${var.name}-webhooks"
  display_name = "Framelane uploads webhooks (Pub/Sub push)"
}

resource "google_service_account_iam_member" "pubsub_mints_webhook_tokens" {
  service_account_id = google_service_account.webhooks.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${local.pubsub_agent}"
}

resource "google_pubsub_topic" "webhooks_dead" {
  #checkov:skip=CKV_GCP_83:Messages hold upload metadata and endpoint ids, no secrets; Google-managed encryption is enough.
  project = var.project_id
  name    = "${var.name}-webhooks-dead"

  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_subscription" "webhooks" {
  project = var.project_id
  name    = "${var.name}-webhooks"
  topic   = google_pubsub_topic.webhooks.id

  # Above the function's worst case for one delivery: the endpoint read (~7 s),
  # the lookup (3 s), the POST (10 s), the attempt's record (~7 s).
  ack_deadline_seconds = 60
  # Longer than the whole retry schedule (~16 h), with room to spare.
  message_retention_duration = "172800s"

  push_config {
    push_endpoint = "${google_cloudfunctions2_function.deliveries.service_config[0].uri}/internal/webhooks"

    oidc_token {
      service_account_email = google_service_account.webhooks.email
      audience              = local.webhooks_audience
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.webhooks_dead.id
    max_delivery_attempts = var.webhook_max_delivery_attempts
  }

  expiration_policy {
    ttl = "" # never expires, however quiet the workspaces
  }

  depends_on = [google_service_account_iam_member.pubsub_mints_webhook_tokens, google_project_iam_member.pubsub_agent]
}

resource "google_pubsub_topic_iam_member" "pubsub_dead_letters_webhooks" {
  project = var.project_id
  topic   = google_pubsub_topic.webhooks_dead.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${local.pubsub_agent}"
}

resource "google_pubsub_subscription_iam_member" "pubsub_forwards_webhooks" {
  project      = var.project_id
  subscription = google_pubsub_subscription.webhooks.name
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${local.pubsub_agent}"
}

# Dead-lettered deliveries are pushed back to the function, which records them
# (`webhook-deliveries` shows "dead-lettered"); a fan-out that was dead-lettered
# stays owed on its upload and the sweep publishes it again. Pub/Sub's page says
# it forwards the message with attributes added that name the source
# subscription (https://cloud.google.com/pubsub/docs/handling-failures), not
# in so many words that the original attributes are kept; so the route does not
# rest on them (lib/webhooks/messages.py Message.dead_lettered). It reads our attributes
# when they are there, and otherwise the data: an event message's is its upload
# id, a delivery's is the event body (the upload and the event type, hence the
# event id). Only the endpoint is then unknown, and the row says so.
resource "google_pubsub_subscription" "webhooks_dead" {
  project                    = var.project_id
  name                       = "${var.name}-webhooks-dead"
  topic                      = google_pubsub_topic.webhooks_dead.id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"

  push_config {
    push_endpoint = "${google_cloudfunctions2_function.deliveries.service_config[0].uri}/internal/webhook-dead-letters"

    oidc_token {
      service_account_email = google_service_account.webhooks.email
      audience              = local.webhooks_audience
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [google_service_account_iam_member.pubsub_mints_webhook_tokens, google_project_iam_member.pubsub_agent]
}
