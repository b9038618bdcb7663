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
