terraform {
  # 1.5+: `check` blocks and the validation features used in variables.tf.
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source = "hashicorp/google"
      # Pinned to a major. The offline schema check (dev/tfschema.py) reads
      # provider 8.7.0, which this constraint admits.
      version = "~> 8.0"
    }
    # For google_project_service_identity alone (events.tf), which only the beta provider has.
    google-beta = {
      source  = "hashicorp/google-beta"
      version = "~> 8.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.4"
    }
    # For time_sleep alone (monitoring.tf): the wait between log-based metrics and their alerts.
    time = {
      source  = "hashicorp/time"
      version = "~> 0.14"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region

  default_labels = merge({ app = "framelane-uploads", managed-by = "terraform" }, var.labels)
}

provider "google-beta" {
  project = var.project_id
  region  = var.region

  default_labels = merge({ app = "framelane-uploads", managed-by = "terraform" }, var.labels)
}
