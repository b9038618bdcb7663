data "google_project" "this" {
  project_id = var.project_id
}

locals {
  upload_bucket      = coalesce(var.upload_bucket_name, "${var.project_id}-uploads")
  firestore_location = coalesce(var.firestore_location, var.region)
  cdn_base_url       = "https://${var.cdn_domain}"
  # The load balancer's service agent: it reads the private buckets behind the
  # CDN (cdn.tf). Google creates it with the project's first backend bucket.
  lb_service_agent = "service-${data.google_project.this.number}@https-lb.iam.gserviceaccount.com"
}
