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
  # The Cloud Run service each 2nd-gen function runs as, from the function's own
  # serviceConfig.service ("projects/{project}/locations/{region}/services/{service}",
  # the v2 API's ServiceConfig: https://cloud.google.com/php/docs/reference/cloud-functions/latest/V2.ServiceConfig),
  # never assumed to be the function's name. Its logs and metrics are
  # resource.type "cloud_run_revision" with resource.labels.service_name = that
  # name (https://cloud.google.com/run/docs/logging: `gcloud logging read
  # "resource.type=cloud_run_revision AND resource.labels.service_name=SERVICE"`).
  api_service        = element(reverse(split("/", google_cloudfunctions2_function.uploads.service_config[0].service)), 0)
  deliveries_service = element(reverse(split("/", google_cloudfunctions2_function.deliveries.service_config[0].service)), 0)
}
