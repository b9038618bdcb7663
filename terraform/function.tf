locals {
  repo_root = abspath("${path.module}/..")
  # Exactly what the function needs at runtime: the entrypoint, its package and
  # the requirements the build installs. Nothing from dev/, tests/ or terraform/.
  function_files = setunion(["main.py", "requirements.txt"], fileset(local.repo_root, "lib/**/*.py"))
  # Where the build reads the source from (iam.tf build_source): our bucket, and
  # the bucket Cloud Functions stages sources in.
  function_source_buckets = [
    google_storage_bucket.function_source.name,
    "gcf-v2-sources-${data.google_project.this.number}-${var.region}",
  ]
  # Cloud Run ties memory to CPU: vCPUs -> [least, most] MiB
  # (https://cloud.google.com/run/docs/configuring/services/memory-limits,
  # https://cloud.google.com/run/docs/configuring/services/cpu).
  memory_range_mib = {
    "1" = [128, 4096]
    "2" = [128, 8192]
    "4" = [2048, 16384]
    "6" = [4096, 24576]
    "8" = [4096, 32768]
  }
  memory_mib = tonumber(regex("^[0-9]+", var.memory)) * (endswith(var.memory, "Gi") ? 1024 : 1)
  # Exactly the settings lib/platform/config.py reads (tests/deploy/test_terraform.py holds them together), the
  # same for both functions: both run main.py, which checks them all when it starts. The API's
  # limits add theirs (limits.tf local.limits_settings and the AUTH string as a secret).
  function_settings = {
    GOOGLE_CLOUD_PROJECT      = var.project_id
    UPLOAD_BUCKET             = google_storage_bucket.uploads.name
    STAGING_BUCKET            = google_storage_bucket.staging.name
    CDN_BASE_URL              = local.cdn_base_url
    UPLOAD_URL_TTL_SECONDS    = tostring(var.upload_url_ttl_seconds)
    IDEMPOTENCY_TTL_SECONDS   = tostring(var.idempotency_ttl_seconds)
    IDEMPOTENCY_LEASE_SECONDS = tostring(var.idempotency_lease_seconds)
    API_KEY_CACHE_TTL_SECONDS = tostring(var.api_key_cache_ttl_seconds)
    FIRESTORE_DATABASE        = google_firestore_database.main.name
    MAX_UPLOAD_BYTES          = tostring(var.max_upload_bytes)
    SWEEP_SERVICE_ACCOUNT     = google_service_account.sweep.email
    SWEEP_AUDIENCE            = local.sweep_audience
    EVENTS_SERVICE_ACCOUNT    = google_service_account.events.email
    EVENTS_AUDIENCE           = local.events_audience
    WEBHOOKS_TOPIC            = google_pubsub_topic.webhooks.name
    WEBHOOKS_SERVICE_ACCOUNT  = google_service_account.webhooks.email
    WEBHOOKS_AUDIENCE         = "own-url" # the URL each push reached: webhooks.tf says why
    # The client's address is the X-Forwarded-For entry before the load balancer's own (lib/api/auth.py).
    API_LB_ADDRESS = local.api_enabled ? google_compute_global_address.api[0].address : ""
  }
}

# The function's images, in a repository of its own so the build account can
# be granted it alone (rather than Artifact Registry writer on the project).
resource "google_artifact_registry_repository" "function" {
  #checkov:skip=CKV_GCP_84:Build images of public source; Google-managed encryption is enough.
  project       = var.project_id
  location      = var.region
  repository_id = "${var.name}-fn"
  format        = "DOCKER"
  description   = "Images of the uploads function, built by Cloud Build."

  depends_on = [google_project_service.enabled]
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
    runtime           = "python311" # the Python that CI runs the tests on
    entry_point       = "uploads"
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.function.id

    source {
      storage_source {
        bucket = google_storage_bucket.function_source.name
        object = google_storage_bucket_object.function_source.name
      }
    }
  }

  # The media check decodes uploaded bytes (FFmpeg, Pillow, fontTools) in this function, but in a child
  # process per check that holds nothing of the function's: no environment, no client, no token; a
  # seccomp filter refuses it sockets (so the metadata server's credentials too), programs and new
  # processes; it runs as nobody where the function runs as root, limited in memory, CPU time and file
  # writes (lib/media/probe.py; docs/design-media.md, "Hostile bytes"). Not a function of its own:
  # every settling path (storage event, GET, cancel, sweep) checks in-line, and a second service would
  # add a network hop, an identity and a cold start to each without taking anything from the child
  # that it can reach. `available_memory` leaves room for two such children (variables.tf).
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

    # THREADS for functions-framework: it serves with gunicorn threads = THREADS,
    # else 4 x os.cpu_count() (the CPUs the instance's machine reports, not its
    # vCPU limit), which need not match the concurrency above. The limits' settings
    # (limits.tf) are the API's alone.
    environment_variables = merge(local.function_settings, local.limits_settings, { THREADS = tostring(var.concurrency) })

    secret_environment_variables {
      key        = "LIMITS_REDIS_AUTH"
      project_id = var.project_id
      secret     = google_secret_manager_secret.limits_redis_auth.secret_id
      version    = "latest"
    }

    # To the limits store (limits.tf): only private ranges go through the network.
    # Names, as the Cloud Functions API documents both fields ("The name of the VPC network",
    # "The name of the VPC subnetwork": https://cloud.google.com/functions/docs/reference/rest/v2/projects.locations.functions#DirectVpcNetworkInterface),
    # so what the API stores is what the plan compares with, and no apply redeploys for a spelling.
    direct_vpc_network_interface {
      network    = google_compute_network.limits.name
      subnetwork = google_compute_subnetwork.functions.name
    }
    direct_vpc_egress = "VPC_EGRESS_PRIVATE_RANGES_ONLY"
  }

  lifecycle {
    precondition {
      condition     = local.memory_mib >= local.memory_range_mib[var.cpu][0] && local.memory_mib <= local.memory_range_mib[var.cpu][1]
      error_message = "memory ${var.memory} does not fit cpu ${var.cpu}: Cloud Run allows ${local.memory_range_mib[var.cpu][0]}-${local.memory_range_mib[var.cpu][1]} MiB with ${var.cpu} vCPU."
    }
    # Direct VPC egress takes 2 addresses per instance and reserves 16 at a time; room for two
    # revisions at max_instances (a rollout), with a margin of 4 (limits.tf).
    precondition {
      condition     = 2 * 2 * var.max_instances + 16 <= pow(2, 32 - tonumber(split("/", var.limits_subnet_cidr)[1])) - 4
      error_message = "limits_subnet_cidr ${var.limits_subnet_cidr} is too small for max_instances ${var.max_instances}: Direct VPC egress needs 2 addresses per instance, for two revisions during a rollout, and 16 spare."
    }
  }

  depends_on = [
    google_project_service.enabled,
    google_project_iam_member.build_logs,
    google_project_iam_member.build_source,
    google_artifact_registry_repository_iam_member.build_images,
    google_project_iam_member.runtime_firestore,
    google_project_iam_member.runtime_direct_vpc,
    google_storage_bucket_iam_member.runtime_uploads,
    google_storage_bucket_iam_member.runtime_staging,
    google_pubsub_topic_iam_member.runtime_publishes_webhooks,
    google_secret_manager_secret_iam_member.runtime_reads_limits_auth,
    google_secret_manager_secret_version.limits_redis_auth,
  ]
}

# Anyone may invoke it: the function itself authenticates every request by API key.
resource "google_cloud_run_service_iam_member" "public" {
  #checkov:skip=CKV_GCP_102:Public by design: a public API; the function authenticates every request by its API key.
  project  = var.project_id
  location = var.region
  service  = local.api_service # the Cloud Run service the 2nd-gen function runs as (main.tf)
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# The webhooks function: the same source's `deliveries` entrypoint, serving only the webhook
# pushes (fan-out, deliveries, dead letters). Apart from the API so that a receiver that answers
# slowly holds a thread of these instances, never one of the API's (docs/operations.md, "Two
# functions"): its own concurrency, instance cap, timeout and identity.
resource "google_cloudfunctions2_function" "deliveries" {
  #checkov:skip=CKV_GCP_124:Pub/Sub pushes reach it from Google's network; Cloud Run's IAM check admits only the webhooks push identity (deliveries_push).
  name        = var.deliveries_function_name
  project     = var.project_id
  location    = var.region
  description = "Webhook fan-out and deliveries for the uploads API, pushed by Pub/Sub."

  build_config {
    runtime           = "python311"
    entry_point       = "deliveries"
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.function.id

    source {
      storage_source {
        bucket = google_storage_bucket.function_source.name
        object = google_storage_bucket_object.function_source.name
      }
    }
  }

  service_config {
    min_instance_count               = 0
    max_instance_count               = var.deliveries_max_instances
    max_instance_request_concurrency = var.deliveries_concurrency
    available_cpu                    = var.cpu
    available_memory                 = var.memory
    timeout_seconds                  = var.deliveries_timeout_seconds
    service_account_email            = google_service_account.deliveries.email
    ingress_settings                 = "ALLOW_ALL"
    all_traffic_on_latest_revision   = true
    environment_variables            = merge(local.function_settings, { THREADS = tostring(var.deliveries_concurrency) })
  }

  depends_on = [
    google_project_service.enabled,
    google_project_iam_member.build_logs,
    google_project_iam_member.build_source,
    google_artifact_registry_repository_iam_member.build_images,
    google_project_iam_member.deliveries_firestore,
    google_pubsub_topic_iam_member.deliveries_publish_webhooks,
  ]
}

# Only the webhooks' push identity may invoke it (webhooks.tf says how Cloud Run checks its token);
# the function checks each push's token again (lib/platform/push.py: Google's signature, the URL it reached,
# WEBHOOKS_SERVICE_ACCOUNT).
resource "google_cloud_run_service_iam_member" "deliveries_push" {
  project  = var.project_id
  location = var.region
  service  = local.deliveries_service
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.webhooks.email}"
}
