# https://<cdn_domain>/<object> → Cloud CDN → the private uploads bucket.

resource "google_compute_global_address" "cdn" {
  project = var.project_id
  name    = "${var.name}-cdn"

  depends_on = [google_project_service.enabled]
}

resource "google_compute_backend_bucket" "uploads" {
  project          = var.project_id
  name             = "${var.name}-cdn"
  description      = "Uploaded media, served through Cloud CDN."
  bucket_name      = google_storage_bucket.uploads.name
  enable_cdn       = true
  compression_mode = "DISABLED" # media is compressed already

  cdn_policy {
    # Objects have random names and are never overwritten: cache everything, long.
    cache_mode        = "FORCE_CACHE_ALL"
    default_ttl       = var.cdn_default_ttl_seconds
    client_ttl        = var.cdn_default_ttl_seconds
    serve_while_stale = 86400
    # A source_url fetched before its upload finished must not stay a 404 for long.
    negative_caching = true
    negative_caching_policy {
      code = 404
      ttl  = 10
    }
    request_coalescing = true
  }
}

# Test-mode objects (test-uploads/, deleted a day after upload) through a
# backend of their own that caches for an hour, so the edge cannot keep serving
# them for the main backend's 30 days after the bucket has dropped them.
resource "google_compute_backend_bucket" "uploads_test" {
  project          = var.project_id
  name             = "${var.name}-cdn-test"
  description      = "Test-mode uploads (test-uploads/), cached briefly."
  bucket_name      = google_storage_bucket.uploads.name
  enable_cdn       = true
  compression_mode = "DISABLED"

  cdn_policy {
    cache_mode        = "FORCE_CACHE_ALL"
    default_ttl       = 3600
    client_ttl        = 3600
    serve_while_stale = 0
    negative_caching  = true
    negative_caching_policy {
      code = 404
      ttl  = 10
    }
    request_coalescing = true
  }
}

# The bucket stays private. Cloud CDN fills from it as the project's
# cloud-cdn-fill service account, which Google creates when a backend bucket
# first gets a signed URL key. The key signs nothing: Cloud CDN still serves
# unsigned requests; it exists so that account exists.
resource "random_id" "cdn_signing_key" {
  byte_length = 16
}

resource "google_compute_backend_bucket_signed_url_key" "cdn_fill" {
  project        = var.project_id
  name           = "${var.name}-cdn-fill"
  backend_bucket = google_compute_backend_bucket.uploads.name
  key_value      = random_id.cdn_signing_key.b64_url
}

resource "google_storage_bucket_iam_member" "cdn_fill_reader" {
  bucket = google_storage_bucket.uploads.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${local.cdn_fill_account}"

  depends_on = [google_compute_backend_bucket_signed_url_key.cdn_fill]
}

resource "google_compute_url_map" "cdn" {
  project         = var.project_id
  name            = "${var.name}-cdn"
  default_service = google_compute_backend_bucket.uploads.id

  host_rule {
    hosts        = ["*"]
    path_matcher = "media"
  }

  path_matcher {
    name            = "media"
    default_service = google_compute_backend_bucket.uploads.id

    # lib/uploads.py PREFIXES["test"]
    path_rule {
      paths   = ["/test-uploads/*"]
      service = google_compute_backend_bucket.uploads_test.id
    }
  }
}

resource "google_compute_managed_ssl_certificate" "cdn" {
  project = var.project_id
  name    = "${var.name}-cdn"

  managed {
    domains = [var.cdn_domain]
  }

  depends_on = [google_project_service.enabled]
}

resource "google_compute_ssl_policy" "modern" {
  project         = var.project_id
  name            = "${var.name}-tls"
  profile         = "MODERN"
  min_tls_version = "TLS_1_2"
}

resource "google_compute_target_https_proxy" "cdn" {
  project          = var.project_id
  name             = "${var.name}-cdn"
  url_map          = google_compute_url_map.cdn.id
  ssl_certificates = [google_compute_managed_ssl_certificate.cdn.id]
  ssl_policy       = google_compute_ssl_policy.modern.id
}

resource "google_compute_global_forwarding_rule" "cdn_https" {
  project               = var.project_id
  name                  = "${var.name}-cdn-https"
  target                = google_compute_target_https_proxy.cdn.id
  ip_address            = google_compute_global_address.cdn.id
  port_range            = "443"
  load_balancing_scheme = "EXTERNAL_MANAGED"
}

# http:// → https://, same host and path.
resource "google_compute_url_map" "https_redirect" {
  project = var.project_id
  name    = "${var.name}-https-redirect"

  default_url_redirect {
    https_redirect         = true
    redirect_response_code = "MOVED_PERMANENTLY_DEFAULT"
    strip_query            = false
  }
}

resource "google_compute_target_http_proxy" "redirect" {
  project = var.project_id
  name    = "${var.name}-https-redirect"
  url_map = google_compute_url_map.https_redirect.id
}

resource "google_compute_global_forwarding_rule" "cdn_http" {
  project               = var.project_id
  name                  = "${var.name}-cdn-http"
  target                = google_compute_target_http_proxy.redirect.id
  ip_address            = google_compute_global_address.cdn.id
  port_range            = "80"
  load_balancing_scheme = "EXTERNAL_MANAGED"
}
