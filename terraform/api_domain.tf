# Optional (var.api_domain): https://<api_domain>/v1/uploads through a global
# external Application Load Balancer with a serverless NEG in front of the
# function. Off by default: the function's own URL works without it.

locals {
  api_enabled = var.api_domain != ""
}

resource "google_compute_region_network_endpoint_group" "api" {
  count = local.api_enabled ? 1 : 0

  project               = var.project_id
  name                  = "${var.name}-api"
  region                = var.region
  network_endpoint_type = "SERVERLESS"

  cloud_function {
    function = google_cloudfunctions2_function.uploads.name
  }
}

resource "google_compute_backend_service" "api" {
  count = local.api_enabled ? 1 : 0

  project               = var.project_id
  name                  = "${var.name}-api"
  protocol              = "HTTPS"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  enable_cdn            = false # responses hold bearer URLs: never cache them

  backend {
    group = google_compute_region_network_endpoint_group.api[0].id
  }

  security_policy = google_compute_security_policy.api[0].id

  log_config {
    enable      = true
    sample_rate = 1
  }
}

resource "google_compute_url_map" "api" {
  count = local.api_enabled ? 1 : 0

  project         = var.project_id
  name            = "${var.name}-api"
  default_service = google_compute_backend_service.api[0].id
}

resource "google_compute_managed_ssl_certificate" "api" {
  count = local.api_enabled ? 1 : 0

  project = var.project_id
  name    = "${var.name}-api"

  managed {
    domains = [var.api_domain]
  }
}

resource "google_compute_target_https_proxy" "api" {
  count = local.api_enabled ? 1 : 0

  project          = var.project_id
  name             = "${var.name}-api"
  url_map          = google_compute_url_map.api[0].id
  ssl_certificates = [google_compute_managed_ssl_certificate.api[0].id]
  ssl_policy       = google_compute_ssl_policy.modern.id
}

resource "google_compute_global_address" "api" {
  count = local.api_enabled ? 1 : 0

  project = var.project_id
  name    = "${var.name}-api"
}

resource "google_compute_global_forwarding_rule" "api_https" {
  count = local.api_enabled ? 1 : 0

  project               = var.project_id
  name                  = "${var.name}-api-https"
  target                = google_compute_target_https_proxy.api[0].id
  ip_address            = google_compute_global_address.api[0].id
  port_range            = "443"
  load_balancing_scheme = "EXTERNAL_MANAGED"
}

# Cloud Armor on the API's backend: floods stop at Google's edge before they cost an instance or a
# Firestore read. The function refuses an address's unknown keys past 30 a minute itself (lib/limits/counters.py
# AuthGuard); this is the volume backstop in front of it, and the API's own URL (ingress ALLOW_ALL) has
# only the function's. Rules are evaluated lowest priority number first, the first match wins
# (https://cloud.google.com/armor/docs/security-policy-overview). A refusal here is Cloud Armor's own
# answer, not the API's JSON envelope.
resource "google_compute_security_policy" "api" {
  count = local.api_enabled ? 1 : 0

  project     = var.project_id
  name        = "${var.name}-api"
  description = "Framelane uploads API: preconfigured WAF rules that fit a JSON API, and a per-address throttle."
  type        = "CLOUD_ARMOR"

  # Google's preconfigured WAF rules that apply to a JSON API whatever its bodies hold
  # (https://cloud.google.com/armor/docs/waf-rules, tuned as https://cloud.google.com/armor/docs/rule-tuning
  # shows): request smuggling and splitting (protocolattack), scanners' signatures (scannerdetection),
  # methods other than GET, HEAD, POST, OPTIONS (methodenforcement), each at sensitivity 1, the
  # signatures least likely to refuse a real client. The SQL, script and file-inclusion sets are left
  # out: a JSON body's filename may hold any text, which they would take for an attack.
  rule {
    action      = "deny(403)"
    priority    = 1000
    description = "Preconfigured WAF: protocol attacks, scanners, methods."
    match {
      expr {
        expression = "evaluatePreconfiguredWaf('protocolattack-v33-stable', {'sensitivity': 1}) || evaluatePreconfiguredWaf('scannerdetection-v33-stable', {'sensitivity': 1}) || evaluatePreconfiguredWaf('methodenforcement-v33-stable', {'sensitivity': 1})"
      }
    }
  }

  # Log4j's JNDI lookups (CVE-2021-44228), Google's rule for them (https://cloud.google.com/armor/docs/waf-rules).
  rule {
    action      = "deny(403)"
    priority    = 1100
    description = "Preconfigured WAF: Log4j lookups."
    match {
      expr {
        expression = "evaluatePreconfiguredWaf('cve-canary')"
      }
    }
  }

  # A throttle per client address (https://cloud.google.com/armor/docs/rate-limiting-overview,
  # https://cloud.google.com/armor/docs/configure-rate-limiting): past var.api_requests_per_minute_per_ip
  # in a minute, an address's requests are answered 429 by Cloud Armor until its rate falls back under.
  rule {
    action      = "throttle"
    priority    = 2000
    description = "Per client address: at most api_requests_per_minute_per_ip requests a minute."
    match {
      versioned_expr = "SRC_IPS_V1"
      config {
        src_ip_ranges = ["*"]
      }
    }
    rate_limit_options {
      conform_action = "allow"
      exceed_action  = "deny(429)"
      enforce_on_key = "IP"
      rate_limit_threshold {
        count        = var.api_requests_per_minute_per_ip
        interval_sec = 60
      }
    }
  }

  rule {
    action      = "allow"
    priority    = 2147483647
    description = "Everything else: the API checks it."
    match {
      versioned_expr = "SRC_IPS_V1"
      config {
        src_ip_ranges = ["*"]
      }
    }
  }
}
