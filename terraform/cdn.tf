# https://<cdn_domain>/<object> → Cloud CDN → the private uploads bucket.

resource "google_compute_global_address" "cdn" {
  project = var.project_id
  name    = "${var.name}-cdn"

  depends_on = [google_project_service.enabled]
}

# Only the upload prefixes reach the uploads bucket; every other path goes to
# a bucket of its own that serves one static 404 (see the URL map below).
#
# How the load balancer reads the private buckets: *private bucket access*
# (https://cloud.google.com/cdn/docs/configure-private-bucket-access). The
# global external Application Load Balancer fetches from a backend bucket as
# the project's load-balancer service agent,
# service-<project number>@https-lb.iam.gserviceaccount.com, which Google
# creates with the project's first backend bucket; the page's one step is to
# grant it roles/storage.objectViewer on the bucket (no signed URLs, no public
# bucket), and Cloud CDN caches the private objects under FORCE_CACHE_ALL.
#
# That grant is exactly what the page documents: unconditioned. No Google page
# says the load balancer's reads honour an IAM condition on it, and if they did
# not, every source_url would answer 404. So a condition on object names is an
# option (var.cdn_grant_condition, off by default), for a project that has
# proved it with `make smoke` (its source_url step fails at once if the
# condition is not honoured).
#
# Which protects what:
# - The URL map (below) is what keeps listings out. Only /uploads/* and
#   /test-uploads/* reach the uploads bucket, and those name objects under the
#   two prefixes, never the bucket itself; `/`, `/uploads`, and any other path,
#   whatever its query, go to the not-found bucket, whose only object is the
#   404 body. `make smoke` asks for `/`, `/uploads/` and listing queries on both
#   kinds of path after every apply, and fails on anything but our 404.
# - The uploads bucket holds nothing else to read: only objects the function
#   placed there after verifying them (lib/uploads/settling.py), under the two prefixes;
#   unverified bytes wait in a bucket of their own (storage.tf), which no CDN
#   route or grant reaches (test_terraform checks both).
# - The custom error response policy turns a 403 or 404 from any bucket into
#   that same 404 (https://cloud.google.com/load-balancing/docs/https/custom-error-response),
#   so no path shows a bucket's own error, or which bucket answered.
# - With var.cdn_grant_condition, the agent itself also cannot list either
#   bucket or read outside the prefixes: the condition matches object names
#   only (https://cloud.google.com/iam/docs/conditions-resource-attributes: a
#   Cloud Storage object is projects/_/buckets/BUCKET/objects/NAME), and the
#   bucket, where storage.objects.list is checked, is not an object.
locals {
  # lib/uploads/naming.py PREFIXES
  upload_prefixes = ["uploads/", "test-uploads/"]
  # Served with every response: browsers must not sniff an upload into HTML or script.
  cdn_response_headers = ["X-Content-Type-Options: nosniff"]
  not_found_object     = "not-found.json"
}

resource "google_compute_backend_bucket" "uploads" {
  project                 = var.project_id
  name                    = "${var.name}-cdn"
  description             = "Uploaded media, served through Cloud CDN."
  bucket_name             = google_storage_bucket.uploads.name
  enable_cdn              = true
  compression_mode        = "DISABLED" # media is compressed already
  custom_response_headers = local.cdn_response_headers

  cdn_policy {
    # Objects have random names and are never overwritten: cache everything,
    # long. FORCE_CACHE_ALL is also what private bucket access needs: the
    # bucket's own answers are not publicly cacheable.
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
  project                 = var.project_id
  name                    = "${var.name}-cdn-test"
  description             = "Test-mode uploads (test-uploads/), cached briefly."
  bucket_name             = google_storage_bucket.uploads.name
  enable_cdn              = true
  compression_mode        = "DISABLED"
  custom_response_headers = local.cdn_response_headers

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

# Every path that is not an upload, and the body of every 403/404.
resource "google_storage_bucket" "cdn_not_found" {
  #checkov:skip=CKV_GCP_62:Holds one static error body; access is recorded by Cloud Audit Logs and the load balancer's logs.
  #checkov:skip=CKV_GCP_78:One static object, rewritten only by Terraform; nothing to recover.
  name     = "${local.upload_bucket}-cdn-404"
  project  = var.project_id
  location = var.bucket_location

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  depends_on = [google_project_service.enabled]
}

# The API's error envelope (lib/platform/errors.py NotFound), as the CDN's 404 body.
resource "google_storage_bucket_object" "cdn_not_found" {
  bucket        = google_storage_bucket.cdn_not_found.name
  name          = local.not_found_object
  content_type  = "application/json"
  cache_control = "public, max-age=300"
  content       = jsonencode({ error = { code = "not_found", message = "No such object.", details = {} } })
}

resource "google_compute_backend_bucket" "not_found" {
  project                 = var.project_id
  name                    = "${var.name}-cdn-404"
  description             = "Any path that is not an upload: a static 404."
  bucket_name             = google_storage_bucket.cdn_not_found.name
  enable_cdn              = true
  custom_response_headers = local.cdn_response_headers

  cdn_policy {
    cache_mode  = "FORCE_CACHE_ALL"
    default_ttl = 300
    client_ttl  = 300
  }
}

# Private bucket access: read the upload prefixes, list nothing.
resource "google_storage_bucket_iam_member" "cdn_reads_uploads" {
  bucket = google_storage_bucket.uploads.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${local.lb_service_agent}"

  # Off by default: see "Which protects what" above.
  dynamic "condition" {
    for_each = var.cdn_grant_condition ? [1] : []
    content {
      title       = "upload-objects-only"
      description = "Objects under the upload prefixes; not the bucket, so never a listing."
      expression  = join(" || ", [for prefix in local.upload_prefixes : "resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.uploads.name}/objects/${prefix}\")"])
    }
  }

  # The agent exists once the project has a backend bucket.
  depends_on = [google_compute_backend_bucket.uploads, google_compute_backend_bucket.uploads_test]
}

resource "google_storage_bucket_iam_member" "cdn_reads_not_found" {
  bucket = google_storage_bucket.cdn_not_found.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${local.lb_service_agent}"

  dynamic "condition" {
    for_each = var.cdn_grant_condition ? [1] : []
    content {
      title       = "not-found-object-only"
      description = "The 404 body; not the bucket, so never a listing."
      expression  = "resource.name == \"projects/_/buckets/${google_storage_bucket.cdn_not_found.name}/objects/${local.not_found_object}\""
    }
  }

  depends_on = [google_compute_backend_bucket.not_found]
}

resource "google_compute_url_map" "cdn" {
  project         = var.project_id
  name            = "${var.name}-cdn"
  default_service = google_compute_backend_bucket.not_found.id

  host_rule {
    hosts        = ["*"]
    path_matcher = "media"
  }

  path_matcher {
    name            = "media"
    default_service = google_compute_backend_bucket.not_found.id

    # lib/uploads/naming.py PREFIXES
    path_rule {
      paths   = ["/uploads/*"]
      service = google_compute_backend_bucket.uploads.id
    }

    path_rule {
      paths   = ["/test-uploads/*"]
      service = google_compute_backend_bucket.uploads_test.id
    }
  }

  # A bucket's 403 (not readable, or the root's listing refused) or 404 is
  # answered with our 404. Other 4xx (416 for a range past the end) pass.
  default_custom_error_response_policy {
    error_service = google_compute_backend_bucket.not_found.id

    error_response_rule {
      match_response_codes   = ["403", "404"]
      path                   = "/${local.not_found_object}"
      override_response_code = 404
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
