# The function's identity: Firestore, and the objects of the staging and uploads buckets; nothing else.
resource "google_service_account" "runtime" {
  project      = var.project_id
  account_id   = "${var.name}-run"
  display_name = "Framelane uploads function (runtime)"
}

# API-key lookups and idempotency records.
resource "google_project_iam_member" "runtime_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.runtime.email}"
}

# Direct VPC egress (limits.tf) asks for this grant: "To authorize Direct VPC egress, ask your
# administrator to grant the Cloud Run Invoker (roles/run.invoker) role to your function's service
# account" (https://cloud.google.com/functions/docs/running/direct-vpc). Granted explicitly and before
# the API function (its depends_on), not left to the allUsers grant (function.tf), which is made only
# once the function exists and which an organization with domain-restricted sharing refuses. On the
# project: the function's Cloud Run service, where a narrower grant would go, exists only once the
# function does. So it passes Cloud Run's check on the deliveries function too (function.tf
# deliveries_push), which then refuses its tokens: it serves only those signed as the webhooks' push
# account (lib/platform/push.py).
resource "google_project_iam_member" "runtime_direct_vpc" {
  project = var.project_id
  role    = "roles/run.invoker"
  member  = "serviceAccount:${google_service_account.runtime.email}"
}

# Storage Object User (create, get, list, update, delete objects) on both buckets: the staging
# bucket for sessions (storage.objects.create), lookups and ranged reads (get) and deleting placed,
# late or refused objects (delete: https://cloud.google.com/storage/docs/deleting-objects); the
# uploads bucket as a rewrite's destination ("storage.objects.create on the destination bucket",
# https://cloud.google.com/storage/docs/json_api/v1/objects/rewrite; `get` on the staging bucket is
# its source), and to delete a refused upload that landed there before staging existed. Cancelling
# a session needs no role: the session URL is its own credential.
resource "google_storage_bucket_iam_member" "runtime_staging" {
  bucket = google_storage_bucket.staging.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.runtime.email}"
}

resource "google_storage_bucket_iam_member" "runtime_uploads" {
  bucket = google_storage_bucket.uploads.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.runtime.email}"
}

# The identity Cloud Scheduler signs the sweep's OIDC tokens as. It needs no
# role: the function is publicly invocable and checks the token itself (this
# account's email, the audience, Google's signature).
resource "google_service_account" "sweep" {
  project      = var.project_id
  account_id   = "${var.name}-sweep"
  display_name = "Framelane uploads expiry sweep (Cloud Scheduler)"
}

# The identity Cloud Build uses to build the function from source. It can read
# the function's source and write its image; never an upload.
resource "google_service_account" "build" {
  project      = var.project_id
  account_id   = "${var.name}-build"
  display_name = "Framelane uploads function (build)"
}

resource "google_project_iam_member" "build_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${google_service_account.build.email}"
}

# The function's source: our archive's bucket, and the bucket Cloud Functions
# stages sources in, gcf-v2-sources-<project number>-<region> (seen in public
# deployments' sourceProvenance; not found in Google's pages for a custom build
# account, so it is allowed in case the build reads from there). It is created
# on the first deploy, hence a project grant with a condition rather than a
# bucket grant. The condition names buckets
# (https://cloud.google.com/iam/docs/conditions-resource-attributes), so the
# build reads nothing in the uploads bucket.
resource "google_project_iam_member" "build_source" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = "serviceAccount:${google_service_account.build.email}"

  condition {
    title       = "function-source-only"
    description = "The function's source buckets, and no other."
    # Each bucket and its objects ("b/" so that bucket "b" does not also admit "b-other").
    expression = join(" || ", flatten([
      for bucket in local.function_source_buckets : [
        "resource.name == \"projects/_/buckets/${bucket}\"",
        "resource.name.startsWith(\"projects/_/buckets/${bucket}/objects/\")",
      ]
    ]))
  }
}

# The built image: the function's own repository (function.tf docker_repository).
resource "google_artifact_registry_repository_iam_member" "build_images" {
  project    = var.project_id
  location   = google_artifact_registry_repository.function.location
  repository = google_artifact_registry_repository.function.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.build.email}"
}

# The webhooks function's identity: it reads endpoints and uploads and writes attempt rows
# (Firestore), and publishes delivery messages to the webhooks topic (webhooks.tf); nothing in
# Storage.
resource "google_service_account" "deliveries" {
  project      = var.project_id
  account_id   = "${var.name}-deliver"
  display_name = "Framelane uploads webhooks function (runtime)"
}

resource "google_project_iam_member" "deliveries_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.deliveries.email}"
}
