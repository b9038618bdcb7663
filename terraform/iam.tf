# The function's identity: Firestore, and creating and reading objects in the uploads bucket; nothing else.
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

# Initiating a resumable session needs storage.objects.create on the bucket only.
resource "google_storage_bucket_iam_member" "runtime_uploads" {
  bucket = google_storage_bucket.uploads.name
  role   = "roles/storage.objectCreator"
  member = "serviceAccount:${google_service_account.runtime.email}"
}

# An upload is completed when its object exists: storage.objects.get. (Cancelling
# a session needs no role: the session URL is its own credential.)
resource "google_storage_bucket_iam_member" "runtime_uploads_read" {
  bucket = google_storage_bucket.uploads.name
  role   = "roles/storage.objectViewer"
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

# The identity Cloud Build uses to build the function from source.
resource "google_service_account" "build" {
  project      = var.project_id
  account_id   = "${var.name}-build"
  display_name = "Framelane uploads function (build)"
}

resource "google_project_iam_member" "build" {
  for_each = toset([
    "roles/logging.logWriter",       # build logs
    "roles/artifactregistry.writer", # the built image (gcf-artifacts repository)
    "roles/storage.objectViewer",    # the source archive as Cloud Functions stages it
  ])

  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.build.email}"
}
