variable "project_id" {
  type        = string
  description = "The Google Cloud project to deploy into (it must exist and have billing enabled)."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project id: 6-30 lower-case letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  type        = string
  description = "Region of the function (and of Firestore unless firestore_location is set)."
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must be a Cloud region such as us-central1 or europe-west1."
  }
}

variable "name" {
  type        = string
  description = "Prefix of every resource name (service accounts add up to 6 characters to it)."
  default     = "framelane-uploads"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,22}[a-z0-9]$", var.name))
    error_message = "name must be 4-24 lower-case letters, digits or hyphens, starting with a letter."
  }
}

variable "labels" {
  type        = map(string)
  description = "Extra labels for every resource that takes labels."
  default     = {}
}

# --- Storage ----------------------------------------------------------------

variable "upload_bucket_name" {
  type        = string
  description = "Name of the uploads bucket. Default: <project_id>-uploads."
  default     = null

  validation {
    condition     = var.upload_bucket_name == null || can(regex("^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$", var.upload_bucket_name))
    error_message = "upload_bucket_name must be 3-63 lower-case letters, digits, hyphens or underscores."
  }
}

variable "bucket_location" {
  type        = string
  description = "Location of the uploads bucket: a multi-region (US, EU, ASIA), dual- or single region."
  default     = "US"
}

variable "cors_origins" {
  type        = list(string)
  description = <<-EOT
    Origins allowed to PUT to upload URLs from a browser. The default, ["*"],
    lets any customer's web app upload: an upload URL is itself the
    credential, and each session is also bound to the Origin that asked for it.
  EOT
  default     = ["*"]

  validation {
    condition     = length(var.cors_origins) > 0 && alltrue([for o in var.cors_origins : o == "*" || can(regex("^https?://[a-z0-9.-]+(:[0-9]+)?$", o))])
    error_message = "cors_origins must be \"*\" or origins such as https://app.example.com (scheme, host, optional port)."
  }
}

variable "upload_soft_delete_days" {
  type        = number
  description = "Days a deleted or overwritten upload stays recoverable (soft delete). 0 disables; otherwise 7-90."
  default     = 7

  validation {
    condition     = var.upload_soft_delete_days == 0 || (var.upload_soft_delete_days >= 7 && var.upload_soft_delete_days <= 90)
    error_message = "upload_soft_delete_days must be 0 or 7-90."
  }
}

variable "upload_retention_days" {
  type        = number
  description = "Delete uploads this many days after they were written. 0 keeps them until deleted otherwise."
  default     = 0

  validation {
    condition     = var.upload_retention_days >= 0 && floor(var.upload_retention_days) == var.upload_retention_days
    error_message = "upload_retention_days must be a whole number, 0 or more."
  }
}

variable "staging_retention_days" {
  type        = number
  description = "Days an object stays in the staging bucket: the most a placed upload's leftover, a late object or a rejected upload's bytes (kept for support) outlive their upload."
  default     = 3

  validation {
    condition     = var.staging_retention_days >= 1 && floor(var.staging_retention_days) == var.staging_retention_days
    error_message = "staging_retention_days must be a whole number, 1 or more."
  }
}

variable "test_upload_retention_days" {
  type        = number
  description = "Delete test-mode uploads (fl_test_ keys; the test-uploads/ prefix) this many days after they were written."
  default     = 1

  validation {
    condition     = var.test_upload_retention_days >= 1 && floor(var.test_upload_retention_days) == var.test_upload_retention_days
    error_message = "test_upload_retention_days must be a whole number, 1 or more."
  }
}

# --- Firestore --------------------------------------------------------------

variable "firestore_location" {
  type        = string
  description = "Firestore location (a region, or nam5 / eur3 for multi-region). Default: var.region."
  default     = null
}

variable "firestore_database" {
  type        = string
  description = "Firestore database id. \"(default)\" unless the project's default database is used for something else."
  default     = "(default)"

  validation {
    condition     = var.firestore_database == "(default)" || can(regex("^[a-z][a-z0-9-]{2,62}$", var.firestore_database))
    error_message = "firestore_database must be \"(default)\" or 3-63 lower-case letters, digits or hyphens."
  }
}

# --- Function ---------------------------------------------------------------

variable "function_name" {
  type        = string
  description = "Name of the Cloud Function (and of the Cloud Run service behind it)."
  default     = "uploads"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,48}[a-z0-9]$", var.function_name))
    error_message = "function_name must be lower-case letters, digits or hyphens, starting with a letter."
  }
}

variable "min_instances" {
  type        = number
  description = "Instances kept warm. 1 avoids cold starts on the first request after idle."
  default     = 1

  validation {
    condition     = var.min_instances >= 0 && var.min_instances <= 100
    error_message = "min_instances must be 0-100."
  }
}

variable "max_instances" {
  type        = number
  description = "Upper bound on instances: a cost ceiling and a cap on load on Firestore."
  default     = 20

  validation {
    condition     = var.max_instances >= 1 && var.max_instances <= 1000
    error_message = "max_instances must be 1-1000."
  }
}

variable "api_requests_per_minute_per_ip" {
  type        = number
  description = "Cloud Armor's throttle on the API's load balancer (api_domain.tf): requests one client address may make a minute before the rest of its minute is answered 429 at Google's edge. A workspace's own creates per minute are the function's (limits.tf); this bounds a flood from one address, whatever its keys."
  default     = 3000

  validation {
    condition     = var.api_requests_per_minute_per_ip >= 100 && var.api_requests_per_minute_per_ip <= 1000000
    error_message = "api_requests_per_minute_per_ip must be 100-1000000."
  }
}

variable "concurrency" {
  type        = number
  description = "Requests one instance serves at once (also functions-framework's THREADS). The code is thread-safe; a request spends ~3 ms of CPU (make bench) and most of its time waiting on GCS, so 16 keep one vCPU busy at ~50 ms upstream latency."
  default     = 16

  validation {
    condition     = var.concurrency >= 1 && var.concurrency <= 1000
    error_message = "concurrency must be 1-1000."
  }
}

variable "cpu" {
  type        = string
  description = "vCPUs per instance (concurrency above 1 needs at least 1)."
  default     = "1"

  validation {
    condition     = contains(["1", "2", "4", "6", "8"], var.cpu)
    error_message = "cpu must be one of 1, 2, 4, 6, 8."
  }
}

variable "memory" {
  type        = string
  description = "Memory per instance. Cloud Run ties it to cpu: 1 vCPU up to 4Gi, 2 up to 8Gi, 4 from 2Gi, 6 and 8 from 4Gi (checked at plan). The default leaves room for the media check: each instance decodes in at most 2 sandboxed child processes at once (lib/media/sandbox.py CHECKS_AT_ONCE), each limited to 512 MiB of address space (what the largest check took: BENCHMARKS.md (m)), beside the worker's ~100 MiB."
  default     = "1024Mi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.memory))
    error_message = "memory must look like 512Mi or 1Gi."
  }
}

variable "timeout_seconds" {
  type        = number
  description = "Request timeout. Every upstream call is bounded far below it (about 11 s worst case)."
  default     = 60

  validation {
    condition     = var.timeout_seconds >= 15 && var.timeout_seconds <= 3600
    error_message = "timeout_seconds must be 15-3600."
  }
}

variable "deliveries_function_name" {
  type        = string
  description = "Name of the webhooks function (the same source's `deliveries` entrypoint), and of its Cloud Run service."
  default     = "uploads-deliveries"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,48}[a-z0-9]$", var.deliveries_function_name))
    error_message = "deliveries_function_name must be lower-case letters, digits or hyphens, starting with a letter."
  }
}

variable "deliveries_max_instances" {
  type        = number
  description = "Upper bound on webhooks-function instances (it scales from 0): its cost ceiling, and with its concurrency the deliveries in flight at once."
  default     = 10

  validation {
    condition     = var.deliveries_max_instances >= 1 && var.deliveries_max_instances <= 1000
    error_message = "deliveries_max_instances must be 1-1000."
  }
}

variable "deliveries_concurrency" {
  type        = number
  description = "Deliveries one webhooks-function instance makes at once (also its THREADS). A delivery is ~1 ms of CPU (make bench (f)) and up to 10 s of waiting on a receiver, so many fit one vCPU."
  default     = 40

  validation {
    condition     = var.deliveries_concurrency >= 1 && var.deliveries_concurrency <= 1000
    error_message = "deliveries_concurrency must be 1-1000."
  }
}

variable "deliveries_timeout_seconds" {
  type        = number
  description = "Request timeout of the webhooks function: above one delivery's worst case (the endpoint read, the 10 s POST, the attempt's record)."
  default     = 60

  validation {
    condition     = var.deliveries_timeout_seconds >= 30 && var.deliveries_timeout_seconds <= 600
    error_message = "deliveries_timeout_seconds must be 30-600."
  }
}

# --- Behaviour (the function's optional settings) -------------------------------

variable "upload_url_ttl_seconds" {
  type        = number
  description = "expires_at of a new upload URL, in seconds from its creation (UPLOAD_URL_TTL_SECONDS)."
  default     = 3600

  validation {
    condition     = var.upload_url_ttl_seconds >= 60 && var.upload_url_ttl_seconds <= 604800
    error_message = "upload_url_ttl_seconds must be 60-604800 (a resumable session lives a week at most)."
  }
}

variable "idempotency_ttl_seconds" {
  type        = number
  description = "How long an Idempotency-Key is remembered (IDEMPOTENCY_TTL_SECONDS)."
  default     = 86400

  validation {
    condition     = var.idempotency_ttl_seconds >= 3600 && var.idempotency_ttl_seconds <= 604800
    error_message = "idempotency_ttl_seconds must be 3600-604800."
  }
}

variable "idempotency_lease_seconds" {
  type        = number
  description = "How long a crashed request's claim blocks its Idempotency-Key (IDEMPOTENCY_LEASE_SECONDS)."
  default     = 30

  validation {
    condition     = var.idempotency_lease_seconds >= 15 && var.idempotency_lease_seconds <= 600
    error_message = "idempotency_lease_seconds must be 15-600 (above the worst-case request time)."
  }
}

variable "api_key_cache_ttl_seconds" {
  type        = number
  description = "How long an instance trusts an API key lookup: the longest a revoked key keeps working (API_KEY_CACHE_TTL_SECONDS). 0 turns the cache off."
  default     = 30

  validation {
    condition     = var.api_key_cache_ttl_seconds >= 0 && var.api_key_cache_ttl_seconds <= 300
    error_message = "api_key_cache_ttl_seconds must be 0-300."
  }
}

variable "max_upload_bytes" {
  type        = number
  description = "The largest size_bytes a client may declare (MAX_UPLOAD_BYTES). Default 5 GiB; GCS's own limit is 5 TiB."
  default     = 5368709120

  validation {
    condition     = var.max_upload_bytes >= 1 && var.max_upload_bytes <= 5497558138880 && floor(var.max_upload_bytes) == var.max_upload_bytes
    error_message = "max_upload_bytes must be a whole number of bytes, 1 to 5497558138880 (5 TiB)."
  }
}

# --- Expiry sweep ---------------------------------------------------------------

variable "sweep_schedule" {
  type        = string
  description = "Cron schedule (UTC) of the sweep that cancels the sessions of uploads pending past expires_at. The longest an expired URL keeps working is about this period."
  default     = "*/5 * * * *"

  validation {
    condition     = length(split(" ", var.sweep_schedule)) == 5
    error_message = "sweep_schedule must be a five-field cron expression, e.g. \"*/5 * * * *\"."
  }
}

variable "sweep_jobs" {
  type        = number
  description = "Scheduler jobs that share the sweep, each over an equal slice of its 64 shards (docs/operations.md, \"Capacity\"): raise it when a run ends with more=true."
  default     = 1

  validation {
    condition     = contains([1, 2, 4, 8, 16, 32, 64], var.sweep_jobs)
    error_message = "sweep_jobs must divide the 64 shards evenly: 1, 2, 4, 8, 16, 32 or 64."
  }
}

# --- Storage events -------------------------------------------------------------

variable "event_max_delivery_attempts" {
  type        = number
  description = "Deliveries of one storage event before Pub/Sub sets it aside on the dead-letter topic (5-100)."
  default     = 10

  validation {
    condition     = var.event_max_delivery_attempts >= 5 && var.event_max_delivery_attempts <= 100
    error_message = "event_max_delivery_attempts must be 5-100 (Pub/Sub's range)."
  }
}

# --- Webhooks -------------------------------------------------------------------

variable "webhook_max_delivery_attempts" {
  type        = number
  description = "Deliveries of one webhook to one endpoint before Pub/Sub dead-letters it. With the 10-600 s backoff, 80 attempts span about 12 hours and 100 about 16 (terraform/webhooks.tf)."
  default     = 100

  validation {
    condition     = var.webhook_max_delivery_attempts >= 80 && var.webhook_max_delivery_attempts <= 100
    error_message = "webhook_max_delivery_attempts must be 80-100: fewer would give up on an endpoint before 12 hours (Pub/Sub allows at most 100)."
  }
}

# --- CDN and domains ------------------------------------------------------------

variable "cdn_domain" {
  type        = string
  description = "Host name that serves uploads through Cloud CDN, e.g. cdn-user.framelane.io. source_url is https://<cdn_domain>/<object>."

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,}$", var.cdn_domain))
    error_message = "cdn_domain must be a lower-case DNS name such as cdn-user.framelane.io."
  }
}

variable "cdn_default_ttl_seconds" {
  type        = number
  description = "How long the CDN caches an upload. Objects are immutable (random names, never overwritten), so long is safe."
  default     = 2592000

  validation {
    condition     = var.cdn_default_ttl_seconds >= 60 && var.cdn_default_ttl_seconds <= 31622400
    error_message = "cdn_default_ttl_seconds must be 60-31622400."
  }
}

variable "cdn_grant_condition" {
  type        = bool
  description = "Put an IAM condition on the CDN's read grants: object names under the upload prefixes only, so the load balancer's agent can neither list a bucket nor read outside them. Off by default, because no Google page says the load balancer honours a conditioned grant (if it does not, every source_url answers 404). Turn it on only if `make smoke` passes with it; the URL map keeps listings out either way (terraform/cdn.tf, \"Which protects what\")."
  default     = false
}

variable "api_domain" {
  type        = string
  description = "Optional: also serve the function at https://<api_domain>/v1/uploads through a load balancer (e.g. api.framelane.io). Empty: off."
  default     = ""

  validation {
    condition     = var.api_domain == "" || can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,}$", var.api_domain))
    error_message = "api_domain must be empty or a lower-case DNS name such as api.framelane.io."
  }
}

# --- Monitoring ---------------------------------------------------------------

variable "alert_emails" {
  type        = list(string)
  description = "E-mail addresses the alert policies notify (monitoring.tf). Empty: the alerts exist and show in the console, but notify nobody."
  default     = []

  validation {
    condition     = alltrue([for e in var.alert_emails : can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", e))])
    error_message = "alert_emails must be e-mail addresses."
  }
}

variable "log_metrics_wait_seconds" {
  type        = number
  description = "How long an apply that creates or replaces a log-based metric waits before the alert policies that read it (monitoring.tf time_sleep.log_metrics). The Monitoring API says a new metric may take up to 10 minutes to become available; a policy created before then fails the apply."
  default     = 600

  validation {
    condition     = var.log_metrics_wait_seconds >= 0 && var.log_metrics_wait_seconds <= 1800
    error_message = "log_metrics_wait_seconds must be 0-1800."
  }
}

# --- Limits (limits.tf; docs/api.md, "Limits") -----------------------------------

variable "creates_per_minute" {
  type        = number
  description = "Uploads a workspace may create in any 60 s, test and live counted apart, until ops set its own (python -m lib.admin set-limits)."
  default     = 600

  validation {
    condition     = var.creates_per_minute >= 1 && var.creates_per_minute <= 600000
    error_message = "creates_per_minute must be 1-600000 (lib/platform/config.py MAX_CREATES_PER_MINUTE)."
  }
}

variable "max_pending_uploads" {
  type        = number
  description = "Uploads a workspace may have pending at once, test and live counted apart, until ops set its own."
  default     = 1000

  validation {
    condition     = var.max_pending_uploads >= 1 && var.max_pending_uploads <= 1000000
    error_message = "max_pending_uploads must be 1-1000000 (lib/platform/config.py MAX_PENDING_UPLOADS)."
  }
}

variable "limits_redis_tier" {
  type        = string
  description = "Memorystore tier of the limits' store: BASIC (one node; while it is down or restarting, each API instance keeps the limits on its own) or STANDARD_HA (a replica it fails over to, about twice the price). Changing it replaces the instance: docs/operations.md, \"Changing the store's tier\"."
  default     = "BASIC"

  validation {
    condition     = contains(["BASIC", "STANDARD_HA"], var.limits_redis_tier)
    error_message = "limits_redis_tier must be BASIC or STANDARD_HA."
  }
}

variable "limits_redis_memory_gb" {
  type        = number
  description = "The limits' store's size. 1 GB (the least) holds the counts of tens of thousands of busy workspaces (docs/operations.md, \"Limits\")."
  default     = 1

  validation {
    condition     = var.limits_redis_memory_gb >= 1 && var.limits_redis_memory_gb <= 300
    error_message = "limits_redis_memory_gb must be 1-300."
  }
}

variable "limits_redis_deletion_protection" {
  type        = bool
  description = "Whether Terraform refuses to delete the limits' store: on, destroy and a tier change fail. Turned off for one apply to change limits_redis_tier (docs/operations.md, \"Changing the store's tier\")."
  default     = true
}

variable "limits_subnet_cidr" {
  type        = string
  description = "The subnet the API function's Direct VPC egress takes addresses from (2 per instance; Cloud Run asks for a /26 or larger)."
  default     = "10.8.0.0/24"

  validation {
    condition     = can(cidrnetmask(var.limits_subnet_cidr)) && tonumber(split("/", var.limits_subnet_cidr)[1]) <= 26
    error_message = "limits_subnet_cidr must be an IPv4 CIDR of /26 or larger."
  }
}
