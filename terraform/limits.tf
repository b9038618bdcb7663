# The store every API instance counts each workspace's limits in (lib/limits/counters.py): Memorystore for
# Redis 7.0, the version Debian's redis-server is locally, private to a network of its own, with TLS
# and AUTH. Why Redis and what it costs: docs/operations.md, "Limits".
#
# The API function reaches it over Direct VPC egress, which Google recommends for Cloud Run
# functions to Memorystore (https://cloud.google.com/memorystore/docs/redis/connect-redis-instance-functions):
# an interface in this network's subnet, and only private ranges routed through it
# (https://cloud.google.com/functions/docs/running/direct-vpc), so Google APIs are reached as before.
# That page asks for two grants. The function's service account needs roles/run.invoker (iam.tf
# runtime_direct_vpc, made before the function). The Cloud Run service agent needs the network: by
# default its roles/run.serviceAgent role carries the permissions, in the same project.

resource "google_compute_network" "limits" {
  project                 = var.project_id
  name                    = "${var.name}-limits"
  auto_create_subnetworks = false

  depends_on = [google_project_service.enabled]
}

# Nothing is served inside this network: every connection into it is refused, as the network's
# implied rule already does, here said explicitly. Replies to the function's own connections
# still arrive: the firewall tracks the state of connections an allow rule let out (the implied
# egress rule), "Tracking state for response traffic created when request traffic goes through
# allow firewall rule" (https://cloud.google.com/dotnet/docs/reference/Google.Cloud.NetworkManagement.V1/2.9.0/Google.Cloud.NetworkManagement.V1.FirewallInfo.Types.FirewallRuleType).
resource "google_compute_firewall" "limits_no_ingress" {
  project   = var.project_id
  name      = "${var.name}-limits-no-ingress"
  network   = google_compute_network.limits.id
  direction = "INGRESS"
  priority  = 65534

  deny {
    protocol = "all"
  }
  source_ranges = ["0.0.0.0/0"]
}

# Cloud Run takes 2 addresses per instance at steady state and reserves them 16 at a time, and
# asks for a /26 or larger (https://cloud.google.com/run/docs/configuring/vpc-direct-vpc,
# "IP address allocation"). The page does not say how soon an instance that scaled down, or a
# replaced revision, gives its addresses back, and during a rollout both revisions' instances hold
# theirs; so function.tf's precondition asks room for two revisions at max_instances:
# 4 x max_instances + 16 addresses, with a margin of 4. The default /24 holds max_instances up to
# 59; a larger cap needs a larger subnet, and the plan says so before anything is changed.
resource "google_compute_subnetwork" "functions" {
  #checkov:skip=CKV_GCP_26:Only the function's egress to the limits store crosses it; VPC flow logs cost more than they tell here.
  #checkov:skip=CKV_GCP_76:No IPv6 in this network.
  project                  = var.project_id
  name                     = "${var.name}-functions"
  region                   = var.region
  network                  = google_compute_network.limits.id
  ip_cidr_range            = var.limits_subnet_cidr
  private_ip_google_access = true
}

resource "google_redis_instance" "limits" {
  #checkov:skip=CKV_GCP_95:AUTH is on (auth_enabled); checkov's rule predates transit encryption being checked separately.
  project        = var.project_id
  name           = "${var.name}-limits"
  region         = var.region
  tier           = var.limits_redis_tier
  memory_size_gb = var.limits_redis_memory_gb
  redis_version  = "REDIS_7_0"
  display_name   = "Framelane uploads: per-workspace limits"

  # Direct peering with our network: the instance gets an address in a range Google reserves
  # and peers with it, reachable from the function's subnet.
  authorized_network = google_compute_network.limits.id
  connect_mode       = "DIRECT_PEERING"

  # Clients authenticate with the instance's AUTH string (a UUID, https://cloud.google.com/memorystore/docs/redis/auth-overview),
  # over TLS that the instance's own CA signs (https://cloud.google.com/memorystore/docs/redis/in-transit-encryption).
  auth_enabled            = true
  transit_encryption_mode = "SERVER_AUTHENTICATION"

  # Said here rather than left to the provider's default (true in 8.x): `terraform destroy` and any
  # change that replaces the instance fail while it is on. `tier` is one: Memorystore updates only
  # displayName, labels, memorySizeGb, redisConfig and replicaCount in place
  # (https://cloud.google.com/memorystore/docs/redis/reference/rest/v1/projects.locations.instances/patch),
  # so a new tier is a new instance. docs/operations.md, "Changing the store's tier", is the operation.
  deletion_protection = var.limits_redis_deletion_protection

  depends_on = [google_project_service.enabled]
}

# The AUTH string reaches the function as a secret environment variable, never a plain one.
resource "google_secret_manager_secret" "limits_redis_auth" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption is enough for a store reachable only from our own network.
  project   = var.project_id
  secret_id = "${var.name}-limits-redis-auth"

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}

resource "google_secret_manager_secret_version" "limits_redis_auth" {
  secret      = google_secret_manager_secret.limits_redis_auth.id
  secret_data = google_redis_instance.limits.auth_string
}

resource "google_secret_manager_secret_iam_member" "runtime_reads_limits_auth" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.limits_redis_auth.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.runtime.email}"
}

locals {
  # What the API function reads for its limits (lib/platform/config.py); the deliveries function settles no
  # upload and creates none, so it is given none of them.
  limits_settings = {
    LIMITS_REDIS_URL     = "rediss://${google_redis_instance.limits.host}:${google_redis_instance.limits.port}"
    LIMITS_REDIS_CA_CERT = join("", [for ca in google_redis_instance.limits.server_ca_certs : ca.cert])
    CREATES_PER_MINUTE   = tostring(var.creates_per_minute)
    MAX_PENDING_UPLOADS  = tostring(var.max_pending_uploads)
  }
}
