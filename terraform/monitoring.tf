# Monitoring from the first apply: log-based metrics from the function's
# request log line (main.py _log_request), alert policies that say what to do,
# an uptime check, and a dashboard. docs: docs/operations.md, "Monitoring and alerts".
#
# The log line is one JSON object on stdout. Cloud Run reads `severity`,
# `httpRequest` and `logging.googleapis.com/trace` from it and puts the other
# fields in jsonPayload (https://cloud.google.com/logging/docs/structured-logging).
# Every filter below names `jsonPayload.route`, which only our line carries, so
# Cloud Run's own request log (it has an httpRequest too) is never counted
# twice. tests/deploy/test_terraform.py evaluates each filter against the lines a
# served function really writes.
#
# A 2nd-gen function runs as a Cloud Run service (main.tf: local.api_service
# and local.deliveries_service, read from the function's serviceConfig.service):
# its logs and metrics carry resource.type "cloud_run_revision" and
# resource.labels.service_name = that service's name (https://cloud.google.com/run/docs/logging).
# Metric types: https://cloud.google.com/monitoring/api/metrics_gcp_p_z
# (pubsub.googleapis.com/subscription/oldest_unacked_message_age and
# num_undelivered_messages; run.googleapis.com/container/instance_count).

locals {
  # Both functions write the request line: the API's and the deliveries' (function.tf). The
  # logging filter's `field = ("a" OR "b")` is documented in the query language's reference
  # (https://cloud.google.com/logging/docs/view/logging-query-language).
  service_filter = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=(\"${local.api_service}\" OR \"${local.deliveries_service}\")"
  # Our request line: the only entries with a route field.
  request_lines = "${local.service_filter} AND jsonPayload.route:*"
  log_metric    = "logging.googleapis.com/user"
  channels      = [for channel in google_monitoring_notification_channel.email : channel.id]
  run_resource  = "resource.type = \"cloud_run_revision\" AND resource.labels.service_name = one_of(\"${local.api_service}\", \"${local.deliveries_service}\")"
  # The API function alone (its instance cap is var.max_instances).
  api_resource = "resource.type = \"cloud_run_revision\" AND resource.labels.service_name = \"${local.api_service}\""
  runbook      = "Runbook: docs/operations.md, \"Monitoring and alerts\"."

  failure_metrics = {
    storage_event_failures = {
      description = "Storage-event pushes the function failed (5xx): Pub/Sub redelivers them."
      condition   = "jsonPayload.route=\"/internal/storage-events\" AND httpRequest.status>=500"
    }
    webhook_delivery_failures = {
      description = "Webhook delivery attempts that failed (the endpoint refused, failed or timed out): Pub/Sub retries them."
      condition   = "jsonPayload.route=\"/internal/webhooks\" AND jsonPayload.error_code=\"webhook_delivery_failed\""
    }
    limiter_unavailable = {
      description = "Creates decided without the limits' shared store, which did not answer: the instance kept the limits alone (lib/limits/counters.py)."
      condition   = "jsonPayload.route=\"/v1/uploads\" AND jsonPayload.limiter=\"unavailable\""
    }
    webhook_dead_letters = {
      description = "Webhook deliveries given up after the last attempt and recorded as dead-lettered."
      condition   = "jsonPayload.route=\"/internal/webhook-dead-letters\" AND httpRequest.status<300"
    }
    # GCS itself refuses bytes of another length than the session declared, or other checksums
    # (lib/uploads/gcs_sessions.py), so such a rejection is never a client's doing: each one is worth a look.
    # content_mismatch and unreadable_media are clients' files, and are not counted here.
    integrity_rejections = {
      description = "Uploads the service rejected for their size or checksum (size_mismatch, checksum_mismatch), which GCS should have refused at the PUT."
      condition   = "jsonPayload.rejection_code=(\"size_mismatch\" OR \"checksum_mismatch\")"
    }
    webhook_deliveries_deferred = {
      description = "Webhook deliveries put off because their endpoint already had its share in flight on the instance (a slow receiver): Pub/Sub retries them."
      condition   = "jsonPayload.route=\"/internal/webhooks\" AND jsonPayload.error_code=\"delivery_deferred\""
    }
    webhook_endpoints_disabled = {
      description = "Webhook endpoints disabled by this delivery's failure: every delivery to them failed for days."
      condition   = "jsonPayload.route=\"/internal/webhooks\" AND jsonPayload.endpoint_disabled:*"
    }
  }
}

# --- Log-based metrics ---------------------------------------------------------

resource "google_logging_metric" "requests" {
  project     = var.project_id
  name        = "${var.name}/requests"
  description = "Requests the uploads function answered, by route template, method, status and error code."
  filter      = local.request_lines

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"

    labels {
      key         = "route"
      value_type  = "STRING"
      description = "The route's template (/v1/uploads/{upload_id}); (none) when no route matched."
    }
    labels {
      key         = "method"
      value_type  = "STRING"
      description = "The HTTP method."
    }
    labels {
      key         = "status"
      value_type  = "STRING"
      description = "The HTTP status code."
    }
    labels {
      key         = "error_code"
      value_type  = "STRING"
      description = "The error envelope's code; empty on success."
    }
  }

  label_extractors = {
    route      = "EXTRACT(jsonPayload.route)"
    method     = "EXTRACT(httpRequest.requestMethod)"
    status     = "EXTRACT(httpRequest.status)"
    error_code = "EXTRACT(jsonPayload.error_code)"
  }

  depends_on = [google_project_service.enabled]
}

resource "google_logging_metric" "latency" {
  project     = var.project_id
  name        = "${var.name}/request_latencies"
  description = "Time from the request's arrival in our code to its answer, by route template and method."
  filter      = local.request_lines

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "s"

    labels {
      key         = "route"
      value_type  = "STRING"
      description = "The route's template."
    }
    labels {
      key         = "method"
      value_type  = "STRING"
      description = "The HTTP method."
    }
  }

  # httpRequest.latency is a Duration ("0.042187s"); a value extractor converts
  # the field to a string first, so the number is taken out of it
  # (https://cloud.google.com/logging/docs/logs-based-metrics/distribution-metrics).
  value_extractor = "REGEXP_EXTRACT(httpRequest.latency, \"([0-9.]+)s\")"
  label_extractors = {
    route  = "EXTRACT(jsonPayload.route)"
    method = "EXTRACT(httpRequest.requestMethod)"
  }

  bucket_options {
    # 5 ms to ~80 s in 24 buckets, each 1.5 times the last.
    exponential_buckets {
      num_finite_buckets = 24
      growth_factor      = 1.5
      scale              = 0.005
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_logging_metric" "sweep_failures" {
  project     = var.project_id
  name        = "${var.name}/sweep_failures"
  description = "Sweep runs that failed (5xx): uploads left pending past expires_at. By the slice of shards the job sweeps."
  filter      = "${local.request_lines} AND jsonPayload.route=\"/internal/sweep\" AND httpRequest.status>=500"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"

    labels {
      key         = "shards"
      value_type  = "STRING"
      description = "The slice of shards (A-B) the failed run swept: one per scheduler job."
    }
  }

  label_extractors = {
    shards = "EXTRACT(jsonPayload.sweep_shards)"
  }

  depends_on = [google_project_service.enabled]
}

# Counters of what failed, one metric each, so each alert reads one series.
resource "google_logging_metric" "failures" {
  for_each = local.failure_metrics

  project     = var.project_id
  name        = "${var.name}/${each.key}"
  description = each.value.description
  filter      = "${local.request_lines} AND ${each.value.condition}"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }

  depends_on = [google_project_service.enabled]
}

# A new log-based metric is not at once a metric Monitoring knows: an alert policy naming it in
# the same apply fails, "Error 404: Cannot find metric(s) that match type = \"logging.googleapis.com/user/...\".
# If a metric was created recently, it could take up to 10 minutes to become available" (the API's
# own answer, in https://github.com/hashicorp/terraform-provider-google/issues/11102, open; the
# provider does not retry it). References already order the policies after the metrics, so what is
# missing is time: this wait starts once every metric exists, and every policy and the dashboard
# that reads a log-based metric waits for it (`depends_on`). Its triggers are the metrics' ids, so
# an apply that adds or replaces a metric waits again, and one that changes none waits not at all
# (https://registry.terraform.io/providers/hashicorp/time/latest/docs/resources/sleep: "triggers -
# Arbitrary map of values that, when changed, will run any creation or destroy delays again").
# The wait overlaps the functions' builds and Memorystore's creation, which the policies wait for
# anyway (they name the functions' services and the instance).
resource "time_sleep" "log_metrics" {
  create_duration = "${var.log_metrics_wait_seconds}s"

  triggers = merge(
    {
      requests       = google_logging_metric.requests.id
      latency        = google_logging_metric.latency.id
      sweep_failures = google_logging_metric.sweep_failures.id
    },
    { for key, metric in google_logging_metric.failures : key => metric.id },
  )
}

# --- Who is told ---------------------------------------------------------------

resource "google_monitoring_notification_channel" "email" {
  for_each = toset(var.alert_emails)

  project      = var.project_id
  display_name = "${var.name} alerts: ${each.value}"
  type         = "email"
  labels = {
    email_address = each.value
  }

  depends_on = [google_project_service.enabled]
}

# --- Alert policies --------------------------------------------------------------

resource "google_monitoring_alert_policy" "error_ratio" {
  project               = var.project_id
  display_name          = "${var.name}: 5xx above 1% of requests"
  combiner              = "OR"
  notification_channels = local.channels
  # It names a log-based metric: created after the wait above.
  depends_on = [time_sleep.log_metrics]

  conditions {
    display_name = "5xx / all requests > 1% for 5 minutes"
    condition_threshold {
      filter             = "metric.type = \"${local.log_metric}/${google_logging_metric.requests.name}\" AND ${local.run_resource} AND metric.label.status = monitoring.regex.full_match(\"5[0-9][0-9]\")"
      denominator_filter = "metric.type = \"${local.log_metric}/${google_logging_metric.requests.name}\" AND ${local.run_resource}"
      comparison         = "COMPARISON_GT"
      threshold_value    = 0.01
      duration           = "300s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_RATE"
        cross_series_reducer = "REDUCE_SUM"
      }
      denominator_aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_RATE"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      More than 1% of requests answered 5xx for 5 minutes.
      1. The dashboard "${var.name}" splits requests by route and error_code: 503 service_unavailable means Firestore, Storage or Google's certificates were slow or down (check status.cloud.google.com and the log lines' `reason`); 500 internal_error is a bug or a missing setting (the log line has the stack trace).
      2. If it began with a deploy, roll back (docs/operations.md, "Rolling out and rolling back").
      3. If instances are at max_instances too, see that alert: raise max_instances.
      ${local.runbook}
    EOT
  }
}

resource "google_monitoring_alert_policy" "create_latency" {
  project               = var.project_id
  display_name          = "${var.name}: POST /v1/uploads p95 above 1 s"
  combiner              = "OR"
  notification_channels = local.channels
  # It names a log-based metric: created after the wait above.
  depends_on = [time_sleep.log_metrics]

  conditions {
    display_name = "p95 latency of POST /v1/uploads > 1 s for 10 minutes"
    condition_threshold {
      filter          = "metric.type = \"${local.log_metric}/${google_logging_metric.latency.name}\" AND ${local.run_resource} AND metric.label.route = \"/v1/uploads\" AND metric.label.method = \"POST\""
      comparison      = "COMPARISON_GT"
      threshold_value = 1
      duration        = "600s"
      aggregations {
        # Each series' 95th percentile per minute; the worst series (a rollout
        # has two revisions) decides.
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_PERCENTILE_95"
        cross_series_reducer = "REDUCE_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      Creating an upload took over 1 s at the 95th percentile for 10 minutes. Each create is one GCS session initiation and one Firestore commit.
      1. Check Firestore and Cloud Storage on status.cloud.google.com, and Firestore's latency in the console (a hot-spotted index shows as write latency: see docs/operations.md, "Capacity").
      2. Check the instance count: at max_instances requests queue; raise max_instances.
      3. If it began with a deploy, roll back.
      ${local.runbook}
    EOT
  }
}

resource "google_monitoring_alert_policy" "sweep_failing" {
  project               = var.project_id
  display_name          = "${var.name}: the sweep failed twice in a row"
  combiner              = "OR"
  notification_channels = local.channels
  # It names a log-based metric: created after the wait above.
  depends_on = [time_sleep.log_metrics]

  conditions {
    display_name = "3+ failed sweep calls in 10 minutes"
    condition_threshold {
      # Each scheduled run may be tried twice (scheduler.tf retry_count = 1), so
      # three failures within two 5-minute periods means two runs failed.
      filter          = "metric.type = \"${local.log_metric}/${google_logging_metric.sweep_failures.name}\" AND ${local.run_resource}"
      comparison      = "COMPARISON_GT"
      threshold_value = 2
      duration        = "0s"
      aggregations {
        # Per scheduler job (its slice of shards), so failures of different jobs do not add up.
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.shards"]
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      The expiry sweep (POST /internal/sweep from Cloud Scheduler) failed in two runs in a row: uploads stay pending past expires_at and their sessions still take bytes.
      1. The sweep's log line says why (`reason`, and `details.sweep` counts). 503 with Firestore or Storage down clears by itself; nothing is lost, the next run picks up what is left.
      2. 401/403 (not counted here, but visible on the dashboard) means the scheduler's token no longer matches SWEEP_SERVICE_ACCOUNT/SWEEP_AUDIENCE: re-apply Terraform.
      3. Run it by hand: gcloud scheduler jobs run ${google_cloud_scheduler_job.sweep[0].name} --location ${var.region} (with sweep_jobs > 1, each job sweeps a slice; the log line's sweep_shards says which).
      4. If runs end with "more": true, the backlog outgrows a run: raise sweep_jobs (docs/operations.md, "Capacity").
      ${local.runbook}
    EOT
  }
}

resource "google_monitoring_alert_policy" "pubsub_backlog" {
  project               = var.project_id
  display_name          = "${var.name}: Pub/Sub backlog older than 15 minutes"
  combiner              = "OR"
  notification_channels = local.channels

  conditions {
    display_name = "oldest unacked message > 15 minutes"
    condition_threshold {
      filter          = "metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" AND resource.type = \"pubsub_subscription\" AND resource.label.subscription_id = one_of(\"${google_pubsub_subscription.storage_events.name}\", \"${google_pubsub_subscription.webhooks.name}\", \"${google_pubsub_subscription.webhooks_dead.name}\")"
      comparison      = "COMPARISON_GT"
      threshold_value = 900
      duration        = "60s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      A push subscription has held a message for over 15 minutes: the function keeps failing it.
      - ${google_pubsub_subscription.storage_events.name}: storage events are not completing uploads (GETs and the sweep still do, later). See the storage_event_failures metric and the log lines of /internal/storage-events.
      - ${google_pubsub_subscription.webhooks.name}: a webhook endpoint keeps failing (it is retried for hours, then dead-lettered). List attempts: python -m lib.admin webhook-deliveries --workspace WS
      - ${google_pubsub_subscription.webhooks_dead.name}: dead letters are not being recorded (/internal/webhook-dead-letters failing).
      ${local.runbook}
    EOT
  }
}

resource "google_monitoring_alert_policy" "dead_letters" {
  project               = var.project_id
  display_name          = "${var.name}: messages dead-lettered"
  combiner              = "OR"
  notification_channels = local.channels
  # It names a log-based metric: created after the wait above.
  depends_on = [time_sleep.log_metrics]

  conditions {
    display_name = "a storage event waits in the dead-letter subscription"
    condition_threshold {
      filter          = "metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.type = \"pubsub_subscription\" AND resource.label.subscription_id = \"${google_pubsub_subscription.storage_events_dead.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  conditions {
    display_name = "a webhook delivery was dead-lettered"
    condition_threshold {
      filter          = "metric.type = \"${local.log_metric}/${google_logging_metric.failures["webhook_dead_letters"].name}\" AND ${local.run_resource}"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      Something was given up after every retry.
      - A storage event: its upload completes at the next GET or sweep anyway. Read it: gcloud pubsub subscriptions pull ${google_pubsub_subscription.storage_events_dead.name} --limit 10 ; fix the cause (the function's log for /internal/storage-events), then ack it.
      - A webhook delivery: the customer's endpoint failed for the whole retry schedule. python -m lib.admin webhook-deliveries --workspace WS shows it as dead-lettered; tell the customer.
      ${local.runbook}
    EOT
  }
}





# Alerts that read one failure counter (local.failure_metrics): above 0 in each 5-minute window for
# `duration`, on the API function alone or both. One resource for them all, each with its own words.
locals {
  counter_alerts = {
    # In every 5-minute window for 10 minutes: a new instance's first minute (Direct VPC egress may
    # take that long to connect, https://cloud.google.com/run/docs/configuring/vpc-direct-vpc) does
    # not page, and a quiet deployment's outage still does (one create in 5 minutes is enough).
    limiter_unavailable = {
      metric    = "limiter_unavailable"
      title     = "limits store unreachable"
      condition = "creates were decided without the store in every 5 minutes for 10 minutes"
      duration  = "600s"
      api_only  = true
      content   = <<-EOT
        The limits' store (Memorystore for Redis ${google_redis_instance.limits.name}) is not answering the API function, so each instance keeps the per-workspace limits on its own: creates per minute per instance, pending uploads counted from Firestore (docs/operations.md, "When the store is down"). The request lines say limiter=unavailable and limiter_error why.
        1. Is the instance up? gcloud redis instances describe ${google_redis_instance.limits.name} --region ${var.region} (state READY; a BASIC instance is one node, down while it restarts).
        2. If it is up, the function's Direct VPC egress or the AUTH secret is wrong: limiter_error ConnectionError/TimeoutError points at the network, AuthenticationError at the secret.
        3. When it answers again, each workspace's pending count is rebuilt from Firestore on its next create (limiter_rebuilt on the line); nothing to do.
      EOT
    }
    integrity_rejections = {
      metric    = "integrity_rejections"
      title     = "an upload rejected for its size or checksum"
      condition = "a size_mismatch or checksum_mismatch rejection"
      duration  = "0s"
      api_only  = true
      content   = <<-EOT
        An upload was rejected because the bytes that landed were not the size or checksum its create declared. GCS refuses such bytes at the PUT (the session carries the declared length and checksums), so this should never happen: either the session was created without them, or Storage accepted what it should have refused.
        1. Find the line: jsonPayload.rejection_code="size_mismatch" OR "checksum_mismatch"; it names the upload_id. GET the upload (its rejection.message says what landed and what was declared).
        2. The bytes are kept in the staging bucket for support until its lifecycle rule deletes them (docs/operations.md, "Verifying media"): compare them with the declaration.
        3. If it began with a deploy, roll back: the create no longer passes the declared values to the session.
      EOT
    }
    webhooks_deferred = {
      metric    = "webhook_deliveries_deferred"
      title     = "webhook deliveries deferred for 30 minutes"
      condition = "deliveries were deferred in every 5 minutes for 30 minutes"
      duration  = "1800s"
      api_only  = false
      content   = <<-EOT
        For 30 minutes, webhook deliveries have been put off because their endpoint already had its share in flight on an instance: a receiver answers slowly (up to the 10 s timeout) while events keep coming. Nothing is lost (Pub/Sub retries each one with its backoff), but that endpoint's events arrive late, and Pub/Sub slows pushes for every endpoint as failures rise.
        1. Which endpoint: the /internal/webhooks lines with error_code "delivery_deferred" name its endpoint_id (and the event_id and attempt).
        2. Its attempts and latency: python -m lib.admin webhook-deliveries --workspace WS.
        3. Tell the customer their endpoint is slow; past 5 days of failures it is disabled by itself.
      EOT
    }
    webhook_endpoint_disabled = {
      metric    = "webhook_endpoints_disabled"
      title     = "a webhook endpoint was disabled"
      condition = "an endpoint was disabled after failing every delivery for days"
      duration  = "0s"
      api_only  = false
      content   = <<-EOT
        A webhook endpoint failed every delivery for days and was disabled: it gets nothing more until it is enabled again.
        1. Which: the /internal/webhooks line with endpoint_disabled names its endpoint_id; python -m lib.admin list-webhooks --workspace WS shows it "disabled".
        2. Tell the customer. Once their endpoint answers 2xx again: python -m lib.admin enable-webhook ENDPOINT_ID (events from while it was disabled are not sent).
      EOT
    }
  }
}

resource "google_monitoring_alert_policy" "counters" {
  for_each = local.counter_alerts

  project               = var.project_id
  display_name          = "${var.name}: ${each.value.title}"
  combiner              = "OR"
  notification_channels = local.channels
  # It names a log-based metric: created after the wait above.
  depends_on = [time_sleep.log_metrics]

  conditions {
    display_name = each.value.condition
    condition_threshold {
      filter          = "metric.type = \"${local.log_metric}/${google_logging_metric.failures[each.value.metric].name}\" AND ${each.value.api_only ? local.api_resource : local.run_resource}"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = each.value.duration
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "${each.value.content}${local.runbook}" # the content ends with its newline
  }
}

# Deployments from before the alerts were one resource keep their policy.
moved {
  from = google_monitoring_alert_policy.limiter_unavailable
  to   = google_monitoring_alert_policy.counters["limiter_unavailable"]
}

resource "google_monitoring_alert_policy" "instances_near_max" {
  project               = var.project_id
  display_name          = "${var.name}: instances near max_instances"
  combiner              = "OR"
  notification_channels = local.channels

  conditions {
    display_name = "instances > 80% of max_instances (${var.max_instances}) for 5 minutes"
    condition_threshold {
      filter     = "metric.type = \"run.googleapis.com/container/instance_count\" AND ${local.api_resource}"
      comparison = "COMPARISON_GT"
      # 80% of the cap, but never below 1 or min_instances (an idle function would be "near" a small
      # cap for ever: floor(0.8) is 0) and never above the cap (at max_instances = min_instances
      # there is nothing to scale, so it does not fire).
      threshold_value = min(max(floor(var.max_instances * 0.8), var.min_instances, 1), var.max_instances)
      duration        = "300s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_MAX"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      The function is running over 80% of max_instances (${var.max_instances}). At the cap, requests queue and then fail with 429/503.
      1. If the traffic is real, raise max_instances (and check docs/operations.md, "Capacity": Firestore and GCS ramp up gradually).
      2. If latency rose first (see that alert), instances are piling up behind a slow backend: fix that instead.
      ${local.runbook}
    EOT
  }
}

# --- Uptime ------------------------------------------------------------------------

resource "google_monitoring_uptime_check_config" "health" {
  project      = var.project_id
  display_name = "${var.name} /health"
  timeout      = "10s"
  period       = "60s"

  http_check {
    # Not /healthz: Cloud Run reserves some paths ending in "z" and advises
    # avoiding them all (https://cloud.google.com/run/docs/known-issues,
    # "Reserved URL paths").
    path         = "/health"
    port         = 443
    use_ssl      = true
    validate_ssl = true
    accepted_response_status_codes {
      status_value = 200
    }
  }

  content_matchers {
    content = "\"status\":\"ok\""
    matcher = "CONTAINS_STRING"
  }

  monitored_resource {
    type = "uptime_url"
    labels = {
      project_id = var.project_id
      host       = trimprefix(google_cloudfunctions2_function.uploads.service_config[0].uri, "https://")
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_monitoring_alert_policy" "uptime" {
  project               = var.project_id
  display_name          = "${var.name}: /health failing"
  combiner              = "OR"
  notification_channels = local.channels

  conditions {
    display_name = "uptime check failing from 2+ locations for 5 minutes"
    condition_threshold {
      filter          = "metric.type = \"monitoring.googleapis.com/uptime_check/check_passed\" AND resource.type = \"uptime_url\" AND metric.label.check_id = \"${google_monitoring_uptime_check_config.health.uptime_check_id}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 1
      duration        = "300s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_NEXT_OLDER"
        cross_series_reducer = "REDUCE_COUNT_FALSE"
        group_by_fields      = ["resource.label.host"]
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      GET /health on the function's URL is failing from several places: the function is down or unreachable. /health calls nothing upstream, so this is the function or Cloud Run itself, not Firestore or Storage.
      1. Cloud Run's page for the service "${local.api_service}": is a revision serving? Did the last deploy fail to start (the build or the container log says why)?
      2. Roll back to the last good revision (docs/operations.md, "Rolling out and rolling back").
      ${local.runbook}
    EOT
  }
}

# --- Dashboard -------------------------------------------------------------------

resource "google_monitoring_dashboard" "uploads" {
  project = var.project_id
  # Every subscription is named "<name>-...": the backlog chart takes them all.
  dashboard_json = templatefile("${path.module}/dashboard.json.tftpl", {
    name            = var.name
    requests_metric = "${local.log_metric}/${google_logging_metric.requests.name}"
    latency_metric  = "${local.log_metric}/${google_logging_metric.latency.name}"
    service         = local.api_service
    max_instances   = var.max_instances
  })

  depends_on = [google_project_service.enabled, time_sleep.log_metrics]
}
