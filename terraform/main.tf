data "google_project" "this" {
  project_id = var.project_id
}

locals {
  upload_bucket      = coalesce(var.upload_bucket_name, "${var.project_id}-uploads")
  firestore_location = coalesce(var.firestore_location, var.region)
  cdn_base_url       = "https://${var.cdn_domain}"
  # Exists once a signed URL key is on a backend bucket; Cloud CDN reads private buckets as it.
  cdn_fill_account = "service-${data.google_project.this.number}@cloud-cdn-fill.iam.gserviceaccount.com"
}
