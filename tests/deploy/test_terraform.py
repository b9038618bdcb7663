"""terraform/, checked offline: fmt, checkov, the provider schema, and the
contracts between the code and the infrastructure.

`terraform init`/`validate` need the Terraform registry, which is unreachable
here; these checks stand in for them.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC
from pathlib import Path
from typing import ClassVar

import pytest

from dev import tfschema
from lib.api import idempotency
from lib.platform import config
from lib.platform.errors import NotFound
from lib.uploads import lifecycle, naming, sweep
from lib.webhooks import attempts, endpoints
from tests.conftest import ROOT
from tests.hcl import TF, archive_files, load_tf, resource, tf_variables, unquote

UPLOADS_BUCKET_NAME = "${google_storage_bucket.uploads.name}"


# --- 1. terraform fmt ----------------------------------------------------------------


def test_terraform_files_are_formatted():
    binary = shutil.which("terraform")
    if binary is None:
        pytest.skip("no terraform binary on PATH (no registry here offers one); fmt is checked where it exists")
    result = subprocess.run(
        [binary, "fmt", "-check", "-recursive", "-diff", str(TF)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}"


# --- 2. checkov ----------------------------------------------------------------------


def test_checkov_passes_with_every_skip_inline_and_reasoned():
    binary = os.environ.get("CHECKOV_BIN", str(ROOT / ".venv-checkov/bin/checkov"))
    assert Path(binary).exists(), f"checkov not found at {binary}: run `make test`, which installs it in .venv-checkov"
    result = subprocess.run(
        [binary, "-d", str(TF), "--skip-download", "--framework", "terraform", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    summary, results = report["summary"], report["results"]
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results["failed_checks"]]
    assert failed == []
    assert summary["failed"] == 0
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= 30, summary  # it really read the configuration
    for skipped in results["skipped_checks"]:
        reason = skipped["check_result"].get("suppress_comment", "")
        assert len(reason.strip()) >= 20, f"{skipped['check_id']} on {skipped['resource']} is skipped without a reason"
    assert result.returncode == 0


# --- 3. provider schema -----------------------------------------------------------------


def test_every_type_argument_and_block_exists_in_the_pinned_providers():
    problems = tfschema.check(TF)
    assert [str(p) for p in problems] == []


@pytest.fixture(scope="module")
def schemas() -> dict:
    return {provider: tfschema.load_schema(provider) for provider in tfschema.PROVIDERS}


def check_snippet(tmp_path: Path, schemas: dict, text: str) -> list[str]:
    (tmp_path / "main.tf").write_text(text)
    return [f"{p.address}: {p.message}" for p in tfschema.check(tmp_path, dict(schemas))]


def test_schema_check_catches_a_misspelled_argument(tmp_path, schemas):
    problems = check_snippet(
        tmp_path,
        schemas,
        """
resource "google_storage_bucket" "b" {
  name     = "b"
  location = "US"
  uniform_bucket_level_acess = true
}""",
    )
    assert problems == ["google_storage_bucket.b: unknown argument 'uniform_bucket_level_acess'"]


def test_schema_check_catches_a_misspelled_nested_argument_and_block(tmp_path, schemas):
    problems = check_snippet(
        tmp_path,
        schemas,
        """
resource "google_storage_bucket" "b" {
  name     = "b"
  location = "US"
  cors {
    orign = ["*"]
  }
  dynamic "lifecycle_rules" {
    for_each = [1]
    content {}
  }
}""",
    )
    assert sorted(problems) == [
        "google_storage_bucket.b.cors: unknown argument 'orign'",
        "google_storage_bucket.b: unknown block 'lifecycle_rules' (dynamic)",
    ]


def test_schema_check_catches_a_missing_required_argument_and_block(tmp_path, schemas):
    problems = check_snippet(
        tmp_path,
        schemas,
        """
resource "google_compute_backend_bucket" "b" {
  name = "b"
}
resource "google_compute_managed_ssl_certificate" "c" {
  name = "c"
  managed {}
}""",
    )
    assert sorted(problems) == [
        "google_compute_backend_bucket.b: missing required argument 'bucket_name'",
        "google_compute_managed_ssl_certificate.c.managed: missing required argument 'domains'",
    ]


def test_schema_check_catches_an_unknown_resource_and_data_type(tmp_path, schemas):
    problems = check_snippet(
        tmp_path,
        schemas,
        """
resource "google_cloudfunction2_function" "f" {
  name = "f"
}
data "google_projectt" "p" {}
""",
    )
    assert sorted(problems) == [
        "data.google_projectt.p: unknown data type 'google_projectt' in provider 8.7.0",
        "google_cloudfunction2_function.f: unknown resource type 'google_cloudfunction2_function' in provider 8.7.0",
    ]


def test_schema_check_catches_a_block_written_as_an_argument(tmp_path, schemas):
    problems = check_snippet(
        tmp_path,
        schemas,
        """
resource "google_firestore_field" "f" {
  collection = "c"
  field      = "f"
  ttl_config = {}
}""",
    )
    assert problems == ["google_firestore_field.f: unknown argument 'ttl_config' (it is a block)"]


def test_schema_check_accepts_meta_arguments_and_other_providers(tmp_path, schemas):
    problems = check_snippet(
        tmp_path,
        schemas,
        """
resource "random_id" "k" {
  count       = 1
  byte_length = 16
  lifecycle {
    prevent_destroy = true
  }
}
data "archive_file" "z" {
  type        = "zip"
  output_path = "x.zip"
  source {
    content  = "x"
    filename = "x"
  }
}""",
    )
    assert problems == []


def test_schema_check_reads_a_resource_against_the_provider_it_names(tmp_path, schemas):
    beta = (
        'resource "google_project_service_identity" "p" {\n  provider = google-beta\n'
        '  service  = "pubsub.googleapis.com"\n}'
    )
    assert check_snippet(tmp_path, schemas, beta) == []
    # The same resource on the GA provider does not exist; a typo is caught on the beta one too.
    assert check_snippet(tmp_path, schemas, beta.replace("  provider = google-beta\n", "")) == [
        "google_project_service_identity.p: unknown resource type 'google_project_service_identity' in provider 8.7.0"
    ]
    assert check_snippet(tmp_path, schemas, beta.replace("service  =", "servce  =")) == [
        "google_project_service_identity.p: unknown argument 'servce'",
        "google_project_service_identity.p: missing required argument 'service'",
    ]


def test_schema_check_reads_the_version_constraints(tmp_path, schemas):
    problems = check_snippet(
        tmp_path,
        schemas,
        """
terraform {
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 7.0"
    }
  }
}""",
    )
    assert problems == ["terraform: google '~> 7.0' does not admit 8.7.0, the schema checked"]


@pytest.mark.parametrize(
    ("constraint", "version", "admits"),
    [
        ("~> 8.0", "8.7.0", True),
        ("~> 8.0", "9.0.0", False),
        ("~> 8.7.1", "8.7.9", True),
        ("~> 8.7.1", "8.8.0", False),
        (">= 8.0, < 9.0", "8.7.0", True),
        ("= 8.6.0", "8.7.0", False),
        ("~> 2.4", "2.8.1", True),
        ("~> 3.6", "3.9.1", True),
        ("!= 8.7.0", "8.7.0", False),
    ],
)
def test_version_constraints_follow_terraform_semantics(constraint, version, admits):
    assert tfschema.constraint_admits(constraint, version) is admits


def test_extraction_reads_types_arguments_and_required_flags_from_an_assembly():
    doc = "registry.terraform.io/providers/hashicorp/google/8.7.0/docs"
    assembly = {
        "types": {
            "p.thing.Thing": {
                "kind": "class",
                "base": "cdktn.TerraformResource",
                "docs": {"summary": f"Represents a {{@link https://{doc}/resources/thing google_thing}}."},
                "initializer": {
                    "parameters": [
                        {"name": "scope"},
                        {"name": "id"},
                        {"name": "config", "type": {"fqn": "p.thing.ThingConfig"}},
                    ]
                },
            },
            "p.thing.ThingConfig": {
                "kind": "interface",
                "datatype": True,
                "properties": [
                    {
                        "name": "bucketName",
                        "docs": {"remarks": f"{{@link https://{doc}/resources/thing#bucket_name Thing#bucket_name}}"},
                        "type": {"primitive": "string"},
                    },
                    {
                        "name": "cdnPolicy",
                        "optional": True,
                        "type": {
                            "union": {
                                "types": [
                                    {"fqn": "cdktn.IResolvable"},
                                    {"collection": {"kind": "array", "elementtype": {"fqn": "p.thing.ThingCdnPolicy"}}},
                                ]
                            }
                        },
                    },
                ],
            },
            "p.thing.ThingCdnPolicy": {
                "kind": "interface",
                "datatype": True,
                "properties": [{"name": "defaultTtl", "optional": True, "type": {"primitive": "number"}}],
            },
        }
    }
    schema = tfschema.extract(assembly, "google", "8.7.0")
    thing = schema["structs"][schema["resource"]["google_thing"]]
    assert thing["attrs"] == {"bucket_name": True}
    required, policy = thing["blocks"]["cdn_policy"]
    assert required is False
    assert schema["structs"][policy]["attrs"] == {"default_ttl": False}


def test_the_extracted_google_schema_has_what_we_rely_on(schemas):
    google = schemas["google"]
    bucket = google["structs"][google["resource"]["google_storage_bucket"]]
    assert bucket["attrs"]["name"] is True
    assert bucket["attrs"]["location"] is True
    assert bucket["attrs"]["uniform_bucket_level_access"] is False
    assert "cors" in bucket["blocks"]
    assert len(google["resource"]) > 1000
    assert "google_project" in google["data"]


# --- 4. contracts between the code and the infrastructure ----------------------------------


def function_resource(name: str = "uploads") -> dict:
    return resource(load_tf("function.tf"), "google_cloudfunctions2_function", name)


def function_env(name: str = "uploads") -> dict:
    """A function's environment as Terraform sets it: the shared settings (local.function_settings),
    the API's limits (limits.tf local.limits_settings) and its secret ones, and its own THREADS."""
    service = function_resource(name)["service_config"][0]
    merged = service["environment_variables"]
    match = re.fullmatch(
        r"\$\{merge\(local\.function_settings, (local\.limits_settings, )?"
        r"\{THREADS = (tostring\(var\.\w+\))\}\)\}",
        merged,
    )
    assert match, merged
    env = {**tf_locals("function.tf")["function_settings"], "THREADS": f"${{{match.group(2)}}}"}
    if match.group(1):
        env.update(tf_locals("limits.tf")["limits_settings"])
    for secret in service.get("secret_environment_variables", []):
        env[unquote(secret["key"])] = f"secret:{unquote(secret['secret'])}"
    return env


def test_function_env_vars_are_exactly_the_settings_the_code_reads():
    class Recording(dict):
        read: ClassVar[set] = set()

        def get(self, key, default=None):
            self.read.add(key)
            return super().get(key, default)

        def __getitem__(self, key):
            self.read.add(key)
            return super().__getitem__(key)

    env = Recording(
        GOOGLE_CLOUD_PROJECT="p", UPLOAD_BUCKET="b", STAGING_BUCKET="b-staging", CDN_BASE_URL="https://cdn.example.com"
    )
    config.Settings.from_env(env)
    declared = set(config.REQUIRED) | set(config.OPTIONAL)
    assert env.read == declared

    # THREADS is functions-framework's (its gunicorn thread count), matched to the concurrency;
    # LOCAL_ONLY settings keep their defaults in a deployment. Both functions run main.py, which
    # checks every setting at start-up, so both get them all, but the limits' (the API's alone:
    # the deliveries function neither creates nor settles an upload).
    assert set(config.LOCAL_ONLY) <= set(config.OPTIONAL)
    assert set(config.SECRET) <= set(config.LIMITS)
    assert set(function_env("uploads")) == (declared - set(config.LOCAL_ONLY)) | {"THREADS"}
    assert set(function_env("deliveries")) == (declared - set(config.LOCAL_ONLY) - set(config.LIMITS)) | {"THREADS"}
    # The AUTH string is a secret environment variable, from Secret Manager; nothing else is.
    secrets = {name for name, value in function_env("uploads").items() if value.startswith("secret:")}
    assert secrets == set(config.SECRET)


def test_framework_threads_match_the_request_concurrency():
    for name, variable in (("uploads", "concurrency"), ("deliveries", "deliveries_concurrency")):
        service = function_resource(name)["service_config"][0]
        assert function_env(name)["THREADS"] == f"${{tostring(var.{variable})}}"
        assert service["max_instance_request_concurrency"] == f"${{var.{variable}}}"


def test_no_other_code_reads_the_environment():
    readers = []
    for path in [ROOT / "main.py", *sorted((ROOT / "lib").rglob("*.py"))]:
        if re.search(r"os\.environ|os\.getenv|getenv\(", path.read_text()):
            readers.append(path.relative_to(ROOT).as_posix())
    # config.py parses it; the ops CLI hands os.environ to config (FirestoreSettings.from_env, the limits'
    # defaults) and reads WEBHOOK_ALLOW_PRIVATE_TARGETS beside FIRESTORE_EMULATOR_HOST (lib/admin/hooks.py).
    assert sorted(readers) == [
        "lib/admin/__init__.py",
        "lib/admin/hooks.py",
        "lib/admin/limits.py",
        "lib/platform/config.py",
    ]


def test_entry_points_name_the_http_functions_in_main():
    tree = ast.parse((ROOT / "main.py").read_text())
    decorated = {
        node.name: [ast.unparse(d) for d in node.decorator_list]
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
    }
    for name in ("uploads", "deliveries"):
        build = function_resource(name)["build_config"][0]
        assert unquote(build["entry_point"]) == name
        assert "functions_framework.http" in decorated[name]
        # One archive, one build: the same source object for both.
        assert (
            build["source"][0]["storage_source"][0]["object"] == "${google_storage_bucket_object.function_source.name}"
        )


def test_the_deliveries_function_has_its_own_identity_scale_and_timeout():
    service = function_resource("deliveries")["service_config"][0]
    assert service["service_account_email"] == "${google_service_account.deliveries.email}"
    assert service["max_instance_count"] == "${var.deliveries_max_instances}"
    assert service["timeout_seconds"] == "${var.deliveries_timeout_seconds}"
    assert service["min_instance_count"] == 0  # it scales from nothing: no cost while no webhook is due
    variables = tf_variables()
    # One delivery's worst case (endpoint read ~7 s, the 10 s POST, the record ~7 s) fits its timeout.
    assert variables["deliveries_timeout_seconds"]["default"] > 7 + 10 + 7
    iam = load_tf("iam.tf")
    assert (
        unquote(resource(iam, "google_project_iam_member", "deliveries_firestore")["member"])
        == "serviceAccount:${google_service_account.deliveries.email}"
    )
    # It holds no Storage grant: nothing of the uploads bucket is its business.
    storage_grants = [body for type_, _, body in all_resources() if type_ == "google_storage_bucket_iam_member"]
    assert not [g for g in storage_grants if "deliveries" in g["member"]]


def test_runtime_is_the_python_the_tests_run_on():
    for name in ("uploads", "deliveries"):
        runtime = unquote(function_resource(name)["build_config"][0]["runtime"])
        assert runtime == f"python{sys.version_info.major}{sys.version_info.minor}"


def test_firestore_ttl_policy_is_on_the_field_the_code_writes():
    field = resource(load_tf("firestore.tf"), "google_firestore_field", "idempotency_ttl")
    assert unquote(field["collection"]) == idempotency.COLLECTION
    assert unquote(field["field"]) == "expires_at"


def test_every_idempotency_field_the_code_writes_is_exempt_from_indexing(db, backends):
    """The records are only read by id: no field of theirs should be indexed."""
    exempt = resource(load_tf("firestore.tf"), "google_firestore_field", "idempotency_unindexed")
    assert unquote(exempt["collection"]) == idempotency.COLLECTION
    fields = set(re.findall(r'"([a-z_]+)"', exempt["for_each"])) | {"expires_at"}
    claim = idempotency.begin(db, "ws_index_check", "live", "k-" + os.urandom(4).hex(), "f" * 64, 60, 30)
    written = set(claim.ref.get().to_dict())
    claim.ref.delete()
    assert written == fields


def test_upload_fields_are_exempt_from_single_field_indexing_but_state():
    exempt = resource(load_tf("firestore.tf"), "google_firestore_field", "uploads_unindexed")
    assert unquote(exempt["collection"]) == lifecycle.COLLECTION
    fields = set(re.findall(r'"([a-z0-9_]+)"', exempt["for_each"]))
    # Queries go through the composite indexes; only state keeps its single-field
    # index (the shard backfill). expires_at and webhook_owed_at must be exempt:
    # their sequential values would otherwise cap writes at ~500 a second.
    assert fields == set(lifecycle.FIELDS) - {"state"}
    from datetime import datetime

    written = lifecycle.new_fields(
        "upl_" + "0" * 32, "ws", "live", "o", "video/mp4", None, datetime.now(UTC), datetime.now(UTC), "u"
    )
    # What a new record holds, plus what settling adds (completion adds the object's facts).
    from lib.uploads.gcs_sessions import StoredObject

    landed = StoredObject(1, 1, None, None, datetime.now(UTC))
    completion = lifecycle.Settlement.complete(landed).changes()
    rejection = lifecycle.Settlement.reject(landed, "size_mismatch", "m").changes()
    checked = {"media", "media_bytes_read"}  # what settling.examine adds to either
    assert set(written) | {"settled_at", lifecycle.OWED_FIELD} | set(completion) | set(rejection) | checked == set(
        lifecycle.FIELDS
    )


def index_fields(name: str) -> list[tuple[str, str]]:
    """The fields of local.upload_indexes[name], as the for_each'd index resource writes them."""
    tf = load_tf("firestore.tf")
    index = resource(tf, "google_firestore_index", "uploads")
    assert index["for_each"] == "${local.upload_indexes}"
    assert unquote(index["collection"]) == lifecycle.COLLECTION
    assert unquote(index["query_scope"]) == "COLLECTION"
    (dynamic,) = index["dynamic"]
    content = dynamic['"fields"']["content"][0]
    assert content["field_path"] == "${fields.value}"
    assert unquote(content["order"]) == "ASCENDING"
    locals_ = {k: v for block in tf["locals"] for k, v in block.items()}
    return [(unquote(field), "ASCENDING") for field in locals_["upload_indexes"][name]]


def query_shape(query) -> tuple[set[str], list[tuple[str, str]]]:
    """(the fields compared for equality, [the range and ordered fields with their direction]), read
    from the query the code really builds."""
    structured = query._to_protobuf()
    filters = structured.where.composite_filter.filters or [structured.where]
    equal, ranged = set(), []
    for f in filters:
        name, op = f.field_filter.field.field_path, f.field_filter.op.name
        if op == "EQUAL":
            equal.add(name)
        else:
            ranged.append(name)
    orders = [
        (o.field.field_path, "ASCENDING" if o.direction.name == "ASCENDING" else "DESCENDING")
        for o in structured.order_by
    ]
    assert {name for name, _ in orders} >= set(ranged)
    return equal, orders


def test_the_pending_count_has_its_composite_index(db):
    equal, orders = query_shape(lifecycle.pending_query(db, "ws_x", "live"))
    assert not orders
    assert {name for name, _ in index_fields("pending")} == equal
    # Its fields keep no single-field index of their own but state's: the composite serves it.
    exempt = resource(load_tf("firestore.tf"), "google_firestore_field", "uploads_unindexed")
    assert {"workspace_id", "mode"} <= set(re.findall(r'"(\w+)"', exempt["for_each"]))


@pytest.mark.parametrize(
    ("index", "make"),
    [
        ("sweep", lambda db, now: lifecycle.due_query(db, 7, now, 200)),
        ("owed", lambda db, now: lifecycle.owed_query(db, 7, now, 200)),
    ],
)
def test_each_sharded_query_has_its_composite_index_with_the_shard_first(db, index, make):
    from datetime import datetime

    equal, orders = query_shape(make(db, datetime.now(UTC)))
    fields = index_fields(index)
    # Equality fields first (the shard leading), then the range field in its order.
    assert fields[0] == (lifecycle.SHARD_FIELD, "ASCENDING")
    assert {name for name, _ in fields[: -len(orders)]} == equal
    assert fields[-len(orders) :] == orders


def test_every_shard_is_reachable_and_ids_spread_evenly():
    import secrets

    counts = [0] * lifecycle.SWEEP_SHARDS
    for _ in range(64_000):
        counts[lifecycle.shard_of("upl_" + secrets.token_hex(16))] += 1
    assert min(counts) > 800
    assert max(counts) < 1200


def test_the_test_prefix_has_its_lifecycle_rule():
    bucket = resource(load_tf("storage.tf"), "google_storage_bucket", "uploads")
    rules = [rule["condition"][0] for rule in bucket["lifecycle_rule"]]
    prefixes = [unquote(p) for rule in rules for p in rule.get("matches_prefix", [])]
    assert naming.PREFIXES["test"] in prefixes
    test_rule = next(rule for rule in rules if naming.PREFIXES["test"] in [unquote(p) for p in rule["matches_prefix"]])
    assert test_rule["age"] == "${var.test_upload_retention_days}"
    variables = tf_variables()
    assert variables["test_upload_retention_days"]["default"] == 1
    dynamic = [block['"lifecycle_rule"'] for block in bucket.get("dynamic", []) if '"lifecycle_rule"' in block]
    assert all("uploads/" in json.dumps(rule) for rule in dynamic)  # the live retention rule keeps to uploads/


def tf_locals(name: str) -> dict:
    return {k: v for block in load_tf(name).get("locals", []) for k, v in block.items()}


def all_resources() -> list[tuple[str, str, dict]]:
    """(type, name, body) of every resource in terraform/."""
    out = []
    for path in sorted(TF.glob("*.tf")):
        for entry in load_tf(path.name).get("resource", []):
            for type_label, named in entry.items():
                for name_label, body in named.items():
                    out.append((unquote(type_label), unquote(name_label), body))
    return out


def test_only_the_upload_prefixes_reach_the_uploads_bucket():
    cdn = load_tf("cdn.tf")
    url_map = resource(cdn, "google_compute_url_map", "cdn")
    (matcher,) = url_map["path_matcher"]
    routes = {unquote(path): rule["service"] for rule in matcher["path_rule"] for path in rule["paths"]}
    assert routes == {
        f"/{naming.PREFIXES['live']}*": "${google_compute_backend_bucket.uploads.id}",
        f"/{naming.PREFIXES['test']}*": "${google_compute_backend_bucket.uploads_test.id}",
    }
    for name in ("uploads", "uploads_test"):
        assert resource(cdn, "google_compute_backend_bucket", name)["bucket_name"] == UPLOADS_BUCKET_NAME
    # Everything else (`/`, `/uploads`, any other path) goes to a bucket that is not the uploads bucket.
    not_found = "${google_compute_backend_bucket.not_found.id}"
    assert url_map["default_service"] == matcher["default_service"] == not_found
    assert (
        resource(cdn, "google_compute_backend_bucket", "not_found")["bucket_name"]
        == "${google_storage_bucket.cdn_not_found.name}"
    )


def test_a_buckets_403_or_404_is_our_one_404_and_other_errors_pass():
    cdn = load_tf("cdn.tf")
    (policy,) = resource(cdn, "google_compute_url_map", "cdn")["default_custom_error_response_policy"]
    assert policy["error_service"] == "${google_compute_backend_bucket.not_found.id}"
    (rule,) = policy["error_response_rule"]
    assert sorted(unquote(c) for c in rule["match_response_codes"]) == ["403", "404"]  # not 4xx: a 416 must pass
    assert rule["override_response_code"] == 404
    body = resource(cdn, "google_storage_bucket_object", "cdn_not_found")
    assert unquote(rule["path"]) == "/${local.not_found_object}"
    assert body["name"] == "${local.not_found_object}"
    assert unquote(body["content_type"]) == "application/json"
    # The envelope the API gives an unknown path (lib/platform/errors.py NotFound).
    from lib.platform.errors import NotFound

    assert f'code = "{NotFound.code}"' in body["content"]
    assert "details = {}" in body["content"]


def test_the_load_balancer_reads_by_private_bucket_access_as_documented_and_a_condition_is_opt_in():
    cdn = load_tf("cdn.tf")
    agent = "service-${data.google_project.this.number}@https-lb.iam.gserviceaccount.com"
    assert unquote(tf_locals("main.tf")["lb_service_agent"]) == agent
    grant = resource(cdn, "google_storage_bucket_iam_member", "cdn_reads_uploads")
    assert grant["bucket"] == "${google_storage_bucket.uploads.name}"
    assert unquote(grant["role"]) == "roles/storage.objectViewer"  # the role Google documents for it
    assert unquote(grant["member"]) == "serviceAccount:${local.lb_service_agent}"
    # No page says the load balancer honours a conditioned grant: the condition is there only
    # when the operator asks for it, and off by default.
    variable = tf_variables()["cdn_grant_condition"]
    assert variable["type"] == "bool"
    assert variable["default"] is False
    assert "condition" not in grant
    (dynamic,) = grant["dynamic"]
    (body,) = dynamic.values()
    assert body["for_each"] == "${var.cdn_grant_condition ? [1] : []}"
    (content,) = body["content"]
    # Conditioned on object names under the code's prefixes: the bucket itself (where a
    # listing is checked) matches no clause.
    assert [unquote(p) for p in tf_locals("cdn.tf")["upload_prefixes"]] == list(naming.PREFIXES.values())
    expression = content["expression"]
    assert "for prefix in local.upload_prefixes" in expression
    assert "resource.name.startsWith(" in expression
    assert "/objects/${prefix}" in expression
    assert "resource.name ==" not in expression
    assert "resource.type" not in expression
    assert "!" not in expression
    error_grant = resource(cdn, "google_storage_bucket_iam_member", "cdn_reads_not_found")
    assert unquote(error_grant["member"]) == "serviceAccount:${local.lb_service_agent}"
    (error_dynamic,) = error_grant["dynamic"]
    (error_body,) = error_dynamic.values()
    assert error_body["for_each"] == body["for_each"]
    assert "/objects/${local.not_found_object}" in error_body["content"][0]["expression"]
    # The signed-URL route (cloud-cdn-fill, a key that signed nothing) is gone for good.
    text = "\n".join(path.read_text() for path in TF.glob("*.tf"))
    assert "cloud-cdn-fill" not in text
    assert "signed_url_key" not in text
    # No one else is granted read on the uploads bucket but the function.
    readers = {
        body["member"]
        for type_, _, body in all_resources()
        if type_ == "google_storage_bucket_iam_member" and body["bucket"] == UPLOADS_BUCKET_NAME
    }
    assert readers == {
        '"serviceAccount:${local.lb_service_agent}"',
        '"serviceAccount:${google_service_account.runtime.email}"',
    }


def test_every_cdn_backend_sends_nosniff_and_caches_everything():
    cdn = load_tf("cdn.tf")
    assert [unquote(h) for h in tf_locals("cdn.tf")["cdn_response_headers"]] == ["X-Content-Type-Options: nosniff"]
    backends = [body for type_, _, body in all_resources() if type_ == "google_compute_backend_bucket"]
    assert len(backends) == 3
    for body in backends:
        assert body["custom_response_headers"] == "${local.cdn_response_headers}"
        assert body["enable_cdn"] is True
        assert unquote(body["cdn_policy"][0]["cache_mode"]) == "FORCE_CACHE_ALL"
    test_backend = resource(cdn, "google_compute_backend_bucket", "uploads_test")
    policy = test_backend["cdn_policy"][0]
    # Cached at most an hour, never served stale: gone from the edge soon after the bucket drops it.
    assert policy["default_ttl"] <= 3600
    assert policy["client_ttl"] <= 3600
    assert policy["serve_while_stale"] == 0


def test_the_build_account_reads_only_the_function_source_and_writes_only_its_repository():
    iam, function = load_tf("iam.tf"), load_tf("function.tf")
    build_member = "serviceAccount:${google_service_account.build.email}"
    project_roles = {
        unquote(body["role"]): body
        for type_, _, body in all_resources()
        if type_ == "google_project_iam_member" and unquote(body["member"]) == build_member
    }
    assert set(project_roles) == {"roles/logging.logWriter", "roles/storage.objectViewer"}
    expression = project_roles["roles/storage.objectViewer"]["condition"][0]["expression"]
    assert "for bucket in local.function_source_buckets" in expression
    assert tf_locals("function.tf")["function_source_buckets"] == [
        "${google_storage_bucket.function_source.name}",
        '"gcf-v2-sources-${data.google_project.this.number}-${var.region}"',
    ]
    assert "uploads" not in expression
    writer = resource(iam, "google_artifact_registry_repository_iam_member", "build_images")
    assert writer["repository"] == "${google_artifact_registry_repository.function.name}"
    assert unquote(writer["role"]) == "roles/artifactregistry.writer"
    build = resource(function, "google_cloudfunctions2_function", "uploads")["build_config"][0]
    assert build["docker_repository"] == "${google_artifact_registry_repository.function.id}"


# Cloud Run's table: vCPUs -> memory allowed (run/docs/configuring/services/memory-limits).
CLOUD_RUN_MEMORY_MIB = {"1": (128, 4096), "2": (128, 8192), "4": (2048, 16384), "6": (4096, 24576), "8": (4096, 32768)}


def test_memory_is_checked_against_cpu_as_cloud_run_requires():
    table = tf_locals("function.tf")["memory_range_mib"]
    assert {unquote(k): tuple(v) for k, v in table.items()} == CLOUD_RUN_MEMORY_MIB
    cpu_choices = re.findall(r'"(\d)"', tf_variables()["cpu"]["validation"][0]["condition"])
    assert set(cpu_choices) == set(CLOUD_RUN_MEMORY_MIB)
    function = resource(load_tf("function.tf"), "google_cloudfunctions2_function", "uploads")
    precondition = function["lifecycle"][0]["precondition"][0]
    assert "local.memory_range_mib[var.cpu][0]" in precondition["condition"]
    assert "local.memory_range_mib[var.cpu][1]" in precondition["condition"]
    # The defaults fit.
    variables = tf_variables()
    low, high = CLOUD_RUN_MEMORY_MIB[unquote(variables["cpu"]["default"])]
    assert low <= int(unquote(variables["memory"]["default"]).removesuffix("Mi")) <= high


def sweep_job_uris(jobs: int) -> list[str]:
    """The scheduler jobs' URIs for `jobs`, as Terraform would interpolate scheduler.tf."""
    job = resource(load_tf("scheduler.tf"), "google_cloud_scheduler_job", "sweep")
    assert job["count"] == "${var.sweep_jobs}"
    uri = unquote(job["http_target"][0]["uri"])
    base = "${google_cloudfunctions2_function.uploads.service_config[0].uri}/internal/sweep"
    assert uri.startswith(base)
    tail = uri[len(base) :]
    slice_ = lifecycle.SWEEP_SHARDS // jobs
    expected = (
        '${var.sweep_jobs == 1 ? "" : "?shards=${count.index * local.sweep_slice}-'
        '${(count.index + 1) * local.sweep_slice - 1}"}'
    )
    assert tail == expected
    return [
        "/internal/sweep" if jobs == 1 else f"/internal/sweep?shards={i * slice_}-{(i + 1) * slice_ - 1}"
        for i in range(jobs)
    ]


@pytest.mark.parametrize("jobs", [1, 2, 4, 8, 16, 32, 64])
def test_the_sweep_jobs_cover_every_shard_once_with_slices_the_function_takes(jobs):
    locals_ = {k: v for block in load_tf("scheduler.tf")["locals"] for k, v in block.items()}
    assert locals_["sweep_shards"] == lifecycle.SWEEP_SHARDS
    covered = []
    for uri in sweep_job_uris(jobs):
        query = uri.partition("?shards=")[2] or None
        covered += list(sweep.shards(query))
    assert sorted(covered) == list(range(lifecycle.SWEEP_SHARDS))
    allowed = re.findall(r"\[([0-9, ]+)\]", tf_variables()["sweep_jobs"]["validation"][0]["condition"])[0]
    assert jobs in {int(n) for n in allowed.split(",")}


def test_the_scheduler_calls_the_sweep_as_the_identity_and_audience_the_function_checks(main_module):
    job = resource(load_tf("scheduler.tf"), "google_cloud_scheduler_job", "sweep")
    target = job["http_target"][0]
    assert unquote(target["http_method"]) == "POST"
    assert sweep_job_uris(1) == ["/internal/sweep"]
    main = main_module
    assert "POST" in main.UPLOADS("/internal/sweep")[0]
    token = target["oidc_token"][0]
    env = function_env()
    assert token["service_account_email"] == env["SWEEP_SERVICE_ACCOUNT"] == "${google_service_account.sweep.email}"
    assert token["audience"] == env["SWEEP_AUDIENCE"] == "${local.sweep_audience}"
    # The job gives up only after the function's timeout, and the sweep stops well inside it.
    assert unquote(job["attempt_deadline"]) == "${min(var.timeout_seconds, 1800)}s"
    variables = tf_variables()
    # A step starts by budget + grace and takes at most ~8 s (lib/platform/clients.py).
    assert variables["timeout_seconds"]["default"] >= sweep.SWEEP_BUDGET_SECONDS + sweep.SWEEP_GRACE_SECONDS + 8 + 5
    assert "cloudscheduler.googleapis.com" in (TF / "apis.tf").read_text()


def test_storage_events_reach_the_route_as_the_identity_and_audience_the_function_checks(main_module):
    tf = load_tf("events.tf")
    main = main_module
    assert "POST" in main.UPLOADS("/internal/storage-events")[0]
    subscription = resource(tf, "google_pubsub_subscription", "storage_events")
    push = subscription["push_config"][0]
    assert (
        unquote(push["push_endpoint"])
        == "${google_cloudfunctions2_function.uploads.service_config[0].uri}/internal/storage-events"
    )
    token = push["oidc_token"][0]
    env = function_env()
    assert token["service_account_email"] == env["EVENTS_SERVICE_ACCOUNT"] == "${google_service_account.events.email}"
    assert token["audience"] == env["EVENTS_AUDIENCE"] == "${local.events_audience}"
    # Within the function's timeout, Pub/Sub waits for the answer; failures back off; poison is set aside.
    assert subscription["ack_deadline_seconds"] >= 30
    assert subscription["dead_letter_policy"][0]["dead_letter_topic"] == "${google_pubsub_topic.storage_events_dead.id}"
    assert subscription["retry_policy"][0]["minimum_backoff"]
    dead = resource(tf, "google_pubsub_subscription", "storage_events_dead")
    assert dead["topic"] == "${google_pubsub_topic.storage_events_dead.id}"  # dead letters are kept, not lost


def test_the_bucket_notifies_finalized_objects_under_exactly_the_codes_prefixes():
    tf = load_tf("events.tf")
    notification = resource(tf, "google_storage_notification", "finalize")
    assert set(re.findall(r'"([a-z-]+/)"', notification["for_each"])) == set(naming.PREFIXES.values())
    assert notification["object_name_prefix"] == "${each.value}"
    assert unquote(notification["payload_format"]) == "JSON_API_V1"  # storage_events.py reads the object
    assert [unquote(t) for t in notification["event_types"]] == ["OBJECT_FINALIZE"]
    assert notification["bucket"] == "${google_storage_bucket.staging.name}"  # where sessions write
    publisher = resource(tf, "google_pubsub_topic_iam_member", "gcs_publishes")
    assert unquote(publisher["role"]) == "roles/pubsub.publisher"
    assert "google_storage_project_service_account.gcs.email_address" in publisher["member"]
    # The Pub/Sub service agent can dead-letter: publish there, acknowledge here.
    agent = "serviceAccount:${local.pubsub_agent}"
    assert unquote(resource(tf, "google_pubsub_topic_iam_member", "pubsub_dead_letters")["member"]) == agent
    assert unquote(resource(tf, "google_pubsub_subscription_iam_member", "pubsub_forwards")["member"]) == agent


def test_the_pubsub_service_agent_is_created_before_anything_grants_it_a_role():
    tf = load_tf("events.tf")
    identity = resource(tf, "google_project_service_identity", "pubsub")
    assert identity["provider"] == "google-beta"
    assert unquote(identity["service"]) == "pubsub.googleapis.com"
    assert identity["depends_on"] == ["${google_project_service.enabled}"]
    # Every grant to the agent names it through the identity, so none can run before it exists.
    assert tf_locals("events.tf")["pubsub_agent"] == "${google_project_service_identity.pubsub.email}"
    text = "\n".join(path.read_text() for path in TF.glob("*.tf"))
    assert 'gcp-sa-pubsub.iam.gserviceaccount.com"' not in text
    grants = [body for type_, _, body in all_resources() if "${local.pubsub_agent}" in json.dumps(body.get("member"))]
    # Its own role, then token minting, dead-letter publishing and forwarding, for events and webhooks.
    assert len(grants) == 7
    # Asked for, it is granted nothing by Google (issue 33): the role it usually has is granted here,
    # and every push subscription is made after it.
    role = resource(tf, "google_project_iam_member", "pubsub_agent")
    assert unquote(role["role"]) == "roles/pubsub.serviceAgent"
    assert unquote(role["member"]) == "serviceAccount:${local.pubsub_agent}"
    subscriptions = [
        (name, body)
        for type_, name, body in all_resources()
        if type_ == "google_pubsub_subscription" and "push_config" in body
    ]
    assert len(subscriptions) == 3
    for name, body in subscriptions:
        assert "${google_project_iam_member.pubsub_agent}" in body["depends_on"], name
    # The beta provider is declared, pinned like the GA one, and configured for the same project.
    versions = load_tf("versions.tf")
    (required,) = versions["terraform"][0]["required_providers"]
    assert unquote(required["google-beta"]["source"]) == "hashicorp/google-beta"
    assert required["google-beta"]["version"] == required["google"]["version"]
    providers = {unquote(name): body for block in versions["provider"] for name, body in block.items()}
    for field in ("project", "region", "default_labels"):
        assert providers["google-beta"][field] == providers["google"][field]


def test_webhooks_reach_their_routes_as_the_identity_and_audience_the_function_checks(main_module):
    tf = load_tf("webhooks.tf")
    main = main_module
    env = function_env("deliveries")
    assert env["WEBHOOKS_TOPIC"] == "${google_pubsub_topic.webhooks.name}"
    for name, route in (("webhooks", "/internal/webhooks"), ("webhooks_dead", "/internal/webhook-dead-letters")):
        # Served by the deliveries function, and never by the API's.
        assert "POST" in main.DELIVERIES(route)[0]
        with pytest.raises(NotFound):
            main.UPLOADS(route)
        subscription = resource(tf, "google_pubsub_subscription", name)
        push = subscription["push_config"][0]
        assert (
            unquote(push["push_endpoint"])
            == f"${{google_cloudfunctions2_function.deliveries.service_config[0].uri}}{route}"
        )
        token = push["oidc_token"][0]
        assert (
            token["service_account_email"]
            == env["WEBHOOKS_SERVICE_ACCOUNT"]
            == "${google_service_account.webhooks.email}"
        )
        # Its own run.app URL, which Cloud Run's IAM check requires; the function checks the URL the
        # push reached, since its own URL cannot be among its settings (issue 33).
        assert token["audience"] == "${local.webhooks_audience}"
        assert unquote(env["WEBHOOKS_AUDIENCE"]) == config.OWN_URL
        # Pub/Sub waits longer than one delivery can take (10 s POST plus the reads and the record).
        assert subscription["ack_deadline_seconds"] >= 30
        assert unquote(subscription["expiration_policy"][0]["ttl"]) == ""
    assert (
        resource(tf, "google_pubsub_subscription", "webhooks_dead")["topic"]
        == "${google_pubsub_topic.webhooks_dead.id}"
    )


def test_webhook_retries_back_off_exponentially_for_at_least_12_hours_then_dead_letter():
    tf = load_tf("webhooks.tf")
    subscription = resource(tf, "google_pubsub_subscription", "webhooks")
    policy = subscription["retry_policy"][0]
    minimum, maximum = (int(unquote(policy[k]).rstrip("s")) for k in ("minimum_backoff", "maximum_backoff"))
    assert (minimum, maximum) == (10, 600)  # 600 s is the most a retry policy allows
    dead = subscription["dead_letter_policy"][0]
    assert dead["dead_letter_topic"] == "${google_pubsub_topic.webhooks_dead.id}"
    assert dead["max_delivery_attempts"] == "${var.webhook_max_delivery_attempts}"
    variable = tf_variables()["webhook_max_delivery_attempts"]
    lowest = int(re.search(r">= (\d+)", variable["validation"][0]["condition"]).group(1))

    def span(attempts: int) -> int:  # the waits between `attempts` deliveries, doubling from the minimum
        return sum(min(minimum * 2**n, maximum) for n in range(attempts - 1))

    assert span(lowest) >= 12 * 3600
    assert span(variable["default"]) >= 12 * 3600
    assert variable["default"] <= 100
    retention = int(unquote(subscription["message_retention_duration"]).rstrip("s"))
    assert retention >= span(100) + 3600  # a message outlives its whole schedule
    # The Pub/Sub service agent can dead-letter; the function can publish; Pub/Sub can mint the push tokens.
    agent = "serviceAccount:${local.pubsub_agent}"
    assert unquote(resource(tf, "google_pubsub_topic_iam_member", "pubsub_dead_letters_webhooks")["member"]) == agent
    assert unquote(resource(tf, "google_pubsub_subscription_iam_member", "pubsub_forwards_webhooks")["member"]) == agent
    for grant, account in (("runtime_publishes_webhooks", "runtime"), ("deliveries_publish_webhooks", "deliveries")):
        publisher = resource(tf, "google_pubsub_topic_iam_member", grant)
        assert unquote(publisher["role"]) == "roles/pubsub.publisher"
        assert unquote(publisher["member"]) == f"serviceAccount:${{google_service_account.{account}.email}}"


def test_webhook_records_have_their_ttl_and_indexes_and_secrets_are_never_indexed():
    tf = load_tf("firestore.tf")
    ttl = resource(tf, "google_firestore_field", "webhook_deliveries_ttl")
    assert unquote(ttl["collection"]) == attempts.DELIVERIES
    assert unquote(ttl["field"]) == "expire_at"
    assert "ttl_config" in ttl
    assert attempts.DELIVERY_RETENTION.days == 7
    recent = resource(tf, "google_firestore_index", "webhook_deliveries_recent")
    assert [(unquote(f["field_path"]), unquote(f["order"])) for f in recent["fields"]] == [
        ("workspace_id", "ASCENDING"),
        ("at", "DESCENDING"),
    ]
    by_mode = resource(tf, "google_firestore_index", "webhook_endpoints_by_workspace_mode")
    assert unquote(by_mode["collection"]) == endpoints.ENDPOINTS
    assert [unquote(f["field_path"]) for f in by_mode["fields"]] == ["workspace_id", "mode"]
    unindexed = resource(tf, "google_firestore_field", "webhook_endpoints_unindexed")
    assert {"secret", "previous_secret"} <= set(re.findall(r'"([a-z_]+)"', unindexed["for_each"]))


def test_terraform_never_allows_private_webhook_targets():
    text = "\n".join(path.read_text() for path in sorted(TF.glob("*.tf")))
    assert "WEBHOOK_ALLOW_PRIVATE_TARGETS" not in text


def test_max_upload_bytes_default_is_the_codes_and_the_documents():
    variables = tf_variables()
    assert variables["max_upload_bytes"]["default"] == config.Settings.max_upload_bytes
    import yaml

    doc = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    size = doc["components"]["schemas"]["UploadRequest"]["properties"]["size_bytes"]["anyOf"][0]
    assert size["maximum"] == config.Settings.max_upload_bytes
    assert size["minimum"] == 1


def test_runtime_account_may_create_read_and_delete_objects_in_both_buckets():
    """Sessions, lookups, ranged reads and deletions in staging; a rewrite's destination in uploads."""
    for name, bucket in (("runtime_staging", "staging"), ("runtime_uploads", "uploads")):
        binding = resource(load_tf("iam.tf"), "google_storage_bucket_iam_member", name)
        assert unquote(binding["role"]) == "roles/storage.objectUser"
        assert binding["bucket"] == f"${{google_storage_bucket.{bucket}.name}}"
        assert unquote(binding["member"]) == "serviceAccount:${google_service_account.runtime.email}"


def test_the_staging_bucket_is_never_served_keeps_nothing_deleted_and_deletes_by_age_only():
    """Placement by rewrite copies nothing only within one location and storage class; soft delete
    would keep every placed upload's staging copy a week; nothing routes or grants the CDN to it."""
    staging = resource(load_tf("storage.tf"), "google_storage_bucket", "staging")
    assert staging["location"] == "${google_storage_bucket.uploads.location}"
    assert staging["storage_class"] == "${google_storage_bucket.uploads.storage_class}"
    assert "autoclass" not in staging
    assert staging["soft_delete_policy"][0]["retention_duration_seconds"] == 0
    assert unquote(staging["public_access_prevention"]) == "enforced"
    rules = staging["lifecycle_rule"]
    assert [unquote(rule["action"][0]["type"]) for rule in rules] == ["Delete"]
    condition = {k: v for k, v in rules[0]["condition"][0].items() if k != "__is_block__"}
    assert condition == {"age": "${var.staging_retention_days}"}  # everything in the bucket
    assert tf_variables()["staging_retention_days"]["default"] == 3
    cdn = (TF / "cdn.tf").read_text()
    assert "google_storage_bucket.staging" not in cdn
    assert "staging" not in cdn.lower()
    grants = [
        body
        for kind, _, body in all_resources()
        if kind == "google_storage_bucket_iam_member" and body["bucket"] == "${google_storage_bucket.staging.name}"
    ]
    assert [unquote(grant["member"]) for grant in grants] == ["serviceAccount:${google_service_account.runtime.email}"]


def lib_module(dotted: str) -> set[str]:
    """The file of `lib.x` or `lib.x.y`: a module's .py, or a package's __init__.py; none for a name
    that is neither (an attribute imported from a module)."""
    path = dotted.replace(".", "/")
    return {name for name in (f"{path}.py", f"{path}/__init__.py") if (ROOT / name).is_file()}


def imported_lib_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module == "lib" or (node.module or "").startswith("lib.")):
            names |= lib_module(node.module or "")
            for alias in node.names:  # `from lib import media`, `from lib.media import engines`
                names |= lib_module(f"{node.module}.{alias.name}")
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", "") == "import_module"
            and node.args
            and isinstance(node.args[0], ast.JoinedStr)
        ):
            # lib/media/engines.py imports its engines by name: every module of that package counts.
            prefix = "".join(part.value for part in node.args[0].values if isinstance(part, ast.Constant))
            names |= {p.relative_to(ROOT).as_posix() for p in (ROOT / prefix.replace(".", "/")).glob("*.py")}
    return names - {"lib/__init__.py"}


def test_archive_holds_exactly_what_the_function_needs():
    files = archive_files()
    expected = {"main.py", "requirements.txt", *(p.relative_to(ROOT).as_posix() for p in (ROOT / "lib").rglob("*.py"))}
    assert set(files) == expected
    assert not any(f.startswith(("dev/", "tests/", "terraform/", "client/", "bench/")) for f in files)
    # Every lib module main.py needs, directly or through lib, is in it.
    # ... and the decoding child's, which lib/media/sandbox.py starts by name.
    from lib.media import sandbox

    child = re.search(r"from (lib[\w.]+) import", sandbox._CHILD).group(1)
    needed, todo = set(), [ROOT / "main.py", ROOT / next(iter(lib_module(child)))]
    while todo:
        for module in imported_lib_modules(todo.pop()) - needed:
            needed.add(module)
            todo.append(ROOT / module)
    assert {"lib/media/moving.py", "lib/media/probe.py"} <= needed  # the package, and its engines by name
    assert needed
    assert needed <= set(files)


# --- the limits' store (limits.tf) ---------------------------------------------------------


def test_the_limits_store_is_the_redis_we_test_against_private_authenticated_and_encrypted():
    tf = load_tf("limits.tf")
    store = resource(tf, "google_redis_instance", "limits")
    # The same major.minor as Debian's redis-server the tests and make run count in.
    local = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True).stdout
    major, minor = re.search(r"v=(\d+)\.(\d+)", local).groups()
    assert unquote(store["redis_version"]) == f"REDIS_{major}_{minor}"
    assert store["auth_enabled"] is True
    assert unquote(store["transit_encryption_mode"]) == "SERVER_AUTHENTICATION"
    assert store["authorized_network"] == "${google_compute_network.limits.id}"
    assert unquote(store["connect_mode"]) == "DIRECT_PEERING"
    # Nothing may connect into the network.
    wall = resource(tf, "google_compute_firewall", "limits_no_ingress")
    assert unquote(wall["direction"]) == "INGRESS"
    assert [unquote(r) for r in wall["source_ranges"]] == ["0.0.0.0/0"]
    assert unquote(wall["deny"][0]["protocol"]) == "all"
    assert "allow" not in wall
    services = (TF / "apis.tf").read_text()
    assert all(
        f'"{api}"' in services
        for api in ("redis.googleapis.com", "secretmanager.googleapis.com", "compute.googleapis.com")
    )


def test_the_api_function_reaches_the_store_as_the_code_expects_and_the_deliveries_one_does_not():
    api = function_resource("uploads")["service_config"][0]
    (interface,) = api["direct_vpc_network_interface"]
    # Names, as the API documents both fields: an id would differ from what it stores, and every plan
    # would redeploy the function (issue 33).
    assert interface["network"] == "${google_compute_network.limits.name}"
    assert interface["subnetwork"] == "${google_compute_subnetwork.functions.name}"
    assert unquote(api["direct_vpc_egress"]) == "VPC_EGRESS_PRIVATE_RANGES_ONLY"  # Google APIs as before
    assert "direct_vpc_network_interface" not in function_resource("deliveries")["service_config"][0]
    env = function_env("uploads")
    assert (
        env["LIMITS_REDIS_URL"]
        == '"rediss://${google_redis_instance.limits.host}:${google_redis_instance.limits.port}"'
    )
    assert "google_redis_instance.limits.server_ca_certs" in env["LIMITS_REDIS_CA_CERT"]
    assert env["CREATES_PER_MINUTE"] == "${tostring(var.creates_per_minute)}"
    assert env["MAX_PENDING_UPLOADS"] == "${tostring(var.max_pending_uploads)}"
    # The settings' shapes are ones the function accepts at start.
    config.load(
        {
            "GOOGLE_CLOUD_PROJECT": "p",
            "UPLOAD_BUCKET": "b",
            "STAGING_BUCKET": "b-staging",
            "CDN_BASE_URL": "https://cdn.example.com",
            "LIMITS_REDIS_URL": "rediss://10.1.2.3:6378",
            "LIMITS_REDIS_CA_CERT": "-----BEGIN CERTIFICATE-----",
            "LIMITS_REDIS_AUTH": "0f2b7c1e-uuid",
            "CREATES_PER_MINUTE": "600",
            "MAX_PENDING_UPLOADS": "1000",
        }
    )
    variables = tf_variables()
    assert variables["creates_per_minute"]["default"] == config.Settings.creates_per_minute
    assert variables["max_pending_uploads"]["default"] == config.Settings.max_pending_uploads
    assert str(config.MAX_CREATES_PER_MINUTE) in variables["creates_per_minute"]["validation"][0]["condition"]
    assert str(config.MAX_PENDING_UPLOADS) in variables["max_pending_uploads"]["validation"][0]["condition"]


def test_the_stores_auth_string_is_a_secret_only_the_api_functions_identity_reads():
    tf = load_tf("limits.tf")
    (secret,) = function_resource("uploads")["service_config"][0]["secret_environment_variables"]
    assert unquote(secret["key"]) in config.SECRET
    assert secret["secret"] == "${google_secret_manager_secret.limits_redis_auth.secret_id}"
    assert unquote(secret["version"]) == "latest"
    version = resource(tf, "google_secret_manager_secret_version", "limits_redis_auth")
    assert version["secret_data"] == "${google_redis_instance.limits.auth_string}"
    reader = resource(tf, "google_secret_manager_secret_iam_member", "runtime_reads_limits_auth")
    assert unquote(reader["role"]) == "roles/secretmanager.secretAccessor"
    assert unquote(reader["member"]) == "serviceAccount:${google_service_account.runtime.email}"
    assert (
        function_resource("uploads")["service_config"][0]["service_account_email"]
        == "${google_service_account.runtime.email}"
    )
    # Granted before the function starts reading it.
    depends = function_resource("uploads")["depends_on"]
    assert "${google_secret_manager_secret_iam_member.runtime_reads_limits_auth}" in depends


def test_the_default_subnet_holds_the_default_instances_and_direct_vpc_asks_no_less_than_a_26():
    variables = tf_variables()
    cidr = unquote(variables["limits_subnet_cidr"]["default"])
    prefix = int(cidr.split("/")[1])
    assert prefix <= 26
    conditions = [c["condition"] for c in function_resource("uploads")["lifecycle"][0]["precondition"]]
    (subnet,) = [c for c in conditions if "var.limits_subnet_cidr" in c and "var.max_instances" in c]
    # Two revisions at the cap (a rollout), 2 addresses an instance, 16 reserved at a time, a margin of 4.
    assert subnet == (
        '${2 * 2 * var.max_instances + 16 <= pow(2, 32 - tonumber(split("/", var.limits_subnet_cidr)[1])) - 4}'
    )

    def fits(max_instances: int, prefix: int) -> bool:
        return 2 * 2 * max_instances + 16 <= 2 ** (32 - prefix) - 4

    assert fits(variables["max_instances"]["default"], prefix)
    # The figure limits.tf states for the default subnet is the precondition's (issue 33: it claimed
    # "well over 1000" where the rule allowed 118).
    most = max(n for n in range(1, 1001) if fits(n, prefix))
    claim = re.search(r"default /\d+ holds max_instances up to\s+#\s+(\d+)", (TF / "limits.tf").read_text())
    assert claim, (claim, most)
    assert int(claim.group(1)) == most, (claim, most)
    operations = " ".join((ROOT / "docs" / "operations.md").read_text().split())
    assert f"the default /24 holds `max_instances` up to {most}." in operations


def test_the_direct_vpc_invoker_grant_is_made_before_the_api_function():
    """The Direct VPC page asks for roles/run.invoker on the function's account; the allUsers grant comes
    after the function and a domain-restricted organization refuses it (issue 33)."""
    grant = resource(load_tf("iam.tf"), "google_project_iam_member", "runtime_direct_vpc")
    assert unquote(grant["role"]) == "roles/run.invoker"
    assert unquote(grant["member"]) == "serviceAccount:${google_service_account.runtime.email}"
    assert "condition" not in grant
    assert "${google_project_iam_member.runtime_direct_vpc}" in function_resource("uploads")["depends_on"]


def test_the_limits_store_is_protected_explicitly_and_its_tier_change_is_an_operation():
    """Provider 8.x protects a Redis instance by default and `tier` forces a new one: the protection is a
    setting, and changing the tier is written down as an operation (issue 33)."""
    store = resource(load_tf("limits.tf"), "google_redis_instance", "limits")
    assert store["deletion_protection"] == "${var.limits_redis_deletion_protection}"
    variables = tf_variables()
    assert variables["limits_redis_deletion_protection"]["default"] is True
    assert "Changing the store's tier" in variables["limits_redis_tier"]["description"]
    operations = (ROOT / "docs" / "operations.md").read_text()
    section = operations.split("### Changing the store's tier", 1)[1].split("\n#", 1)[0]
    for step in (
        "limits_redis_deletion_protection=false",
        "limits_redis_tier",
        "Firestore",
        "limits_redis_deletion_protection = true",
    ):
        assert step in section, step


def test_no_file_claims_a_rewrite_copies_no_bytes():
    """The rewrite page promises one request under its conditions, not that nothing is copied (issue 33)."""
    texts = [
        path
        for pattern in ("terraform/*.tf", "lib/**/*.py", "docs/*.md", "README.md", "BENCHMARKS.md")
        for path in ROOT.glob(pattern)
    ]
    for path in texts:
        text = " ".join(path.read_text().split()).lower()
        for claim in ("copies no bytes", "no bytes copied", "copy no bytes", "copies nothing"):
            assert claim not in text, (path, claim)


def test_the_deploy_steps_are_one_apply_then_the_smoke_and_say_what_stops_a_first_apply():
    """Issue 33: one `terraform apply` (plus what Google requires, stated), then `make smoke`; what the
    pages leave open on a first apply is written there with the page checked."""
    operations = (ROOT / "docs" / "operations.md").read_text()
    steps = operations.split("### From an empty project to the first upload", 1)[1].split("\n### ", 1)[0]
    commands = [
        line.split("#")[0].strip()
        for block in re.findall(r"```sh\n(.*?)```", steps, re.S)
        for line in block.splitlines()
    ]
    assert commands.count("terraform apply") == 1, commands
    assert not any(c.startswith("terraform apply ") for c in commands)
    # The init comment names every provider versions.tf requires.
    (required,) = load_tf("versions.tf")["terraform"][0]["required_providers"]
    init = next(line for line in steps.splitlines() if line.startswith("terraform init"))
    for provider in (p for p in required if not p.startswith("__")):
        assert provider in init, provider
    # The smoke takes its key from a file written without the key ever on a command line.
    assert "create-key --test" in steps
    assert "umask 077" in steps
    assert re.search(r"make smoke API_URL=\$\([^)]*\) API_KEY_FILE=~/\.framelane-smoke-key", steps)
    assert "> ~/.framelane-smoke-key" in steps
    stops = steps.split("**When the first apply stops.**", 1)[1]
    for needed in (
        "https-lb.iam.gserviceaccount.com",
        "cloud.google.com/cdn/docs/configure-private-bucket-access",
        "log_metrics_wait_seconds",
        "terraform-provider-google/issues/11102",
        "Domain-restricted",
    ):
        assert needed in stops, needed


def test_only_the_webhooks_push_identity_may_invoke_the_deliveries_function():
    """Issue 33: the deliveries function was open to anyone (allUsers); its only grant is now the identity
    Pub/Sub signs the webhook pushes as, with the function's run.app URL as their audience."""
    grants = {name: body for type_, name, body in all_resources() if type_ == "google_cloud_run_service_iam_member"}
    deliveries = {name: body for name, body in grants.items() if body["service"] == "${local.deliveries_service}"}
    assert list(deliveries) == ["deliveries_push"]
    (grant,) = deliveries.values()
    assert unquote(grant["role"]) == "roles/run.invoker"
    assert unquote(grant["member"]) == "serviceAccount:${google_service_account.webhooks.email}"
    assert (
        tf_locals("webhooks.tf")["webhooks_audience"]
        == "${google_cloudfunctions2_function.deliveries.service_config[0].uri}"
    )
    # The API stays public: clients call it with API keys.
    assert [unquote(body["member"]) for body in grants.values() if body["service"] == "${local.api_service}"] == [
        "allUsers"
    ]
