"""terraform/monitoring.tf against what the function really logs.

Every log-based metric's filter, label extractors and value extractor are
evaluated here against the request lines served functions wrote moments
before: a create, a GET, a 404, /health, a sweep and a storage event failing
on a dead Firestore, webhook deliveries failing at a receiver until they are
dead-lettered. A filter naming a field the line does not carry, or a value it
never has, matches nothing and fails. `resource.*` clauses are Cloud Run's
(it adds the resource to each line it reads from stdout), so they are checked
for the service's name only. The alert policies and the dashboard are checked
to use only metrics and labels that exist.
"""

from __future__ import annotations

import functools
import json
import math
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests

from dev.receiver import Receiver
from lib.webhooks import endpoints
from tests.conftest import BUCKET, STAGING_BUCKET, WEBHOOK_MAX_ATTEMPTS, start_shipped
from tests.hcl import TF, load_tf, tf_variables, unquote
from tests.helpers import SESSION_KEYS, SESSION_WEBHOOK_SECRETS
from tests.uploads.test_events import envelope, resource_of, wait_for
from tests.uploads.test_integrity import DATA, HTML, declared
from tests.uploads.test_lifecycle import bearer, create, put_bytes
from tests.webhooks.test_webhooks import deliveries, delivery_envelope, share_in_flight, upload, webhook_push

FUNCTION_NAME = unquote(tf_variables()["function_name"]["default"])
DELIVERIES_NAME = unquote(tf_variables()["deliveries_function_name"]["default"])
# How the filters name both functions: the logging query language's `= ("a" OR "b")`, Monitoring's one_of.
BOTH_FUNCTIONS = (f'("{FUNCTION_NAME}" OR "{DELIVERIES_NAME}")', f'one_of("{FUNCTION_NAME}", "{DELIVERIES_NAME}")')


# --- reading monitoring.tf ------------------------------------------------------


def hcl_string(value: str) -> str:
    """A python-hcl2 string as Terraform means it: quotes off, escapes read."""
    if value[:1] == value[-1:] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


@functools.cache
def monitoring() -> dict:
    return load_tf("monitoring.tf")


@functools.cache
def tf_locals() -> dict:
    return {k: v for block in monitoring()["locals"] for k, v in block.items()}


def resolve(value: str) -> str:
    """Interpolate the locals and the function's name, as Terraform would."""
    text = hcl_string(value)
    # main.tf's locals: the Cloud Run services the functions run as (test_the_filters_name_the_
    # cloud_run_services_the_functions_run_as checks how they are derived).
    known = {"local.api_service": FUNCTION_NAME, "local.deliveries_service": DELIVERIES_NAME}
    for _ in range(5):
        text = re.sub(r"\$\{([\w.]+)\}", lambda m: known.get(m.group(1), m.group(0)), text)
        text = re.sub(r"\$\{local\.(\w+)\}", lambda m: hcl_string(tf_locals()[m.group(1)]), text)
    return text


def resources(type_name: str) -> dict[str, dict]:
    found = {}
    for entry in monitoring()["resource"]:
        for type_label, named in entry.items():
            if unquote(type_label) == type_name:
                found.update({unquote(name): body for name, body in named.items()})
    return found


@functools.cache
def metrics() -> dict[str, dict]:
    """Every log-based metric, for_each expanded: {key: {"name", "filter", "body"}}, where the
    key is the resource name (`requests`) or the for_each key (`sweep_failures`), and
    `name` the metric's name with var.name at its default."""
    default = unquote(tf_variables()["name"]["default"])
    found = {}
    for key, body in resources("google_logging_metric").items():
        if "for_each" in body:
            assert body["for_each"] == "${local.failure_metrics}", key
            for each_key, each in tf_locals()["failure_metrics"].items():
                name = hcl_string(body["name"]).replace("${each.key}", each_key)
                text = hcl_string(body["filter"]).replace("${each.value.condition}", hcl_string(each["condition"]))
                found[each_key] = {
                    "name": name.replace("${var.name}", default),
                    "filter": resolve(text),
                    "body": body,
                    "ref": f'google_logging_metric.{key}["{each_key}"]',
                }
        else:
            found[key] = {
                "name": hcl_string(body["name"]).replace("${var.name}", default),
                "filter": resolve(body["filter"]),
                "body": body,
                "ref": f"google_logging_metric.{key}",
            }
    return found


@functools.cache
def policies() -> dict[str, dict]:
    """Every alert policy by name, for_each expanded: a `counters` entry is named by its key, with
    `each.value.*` read from local.counter_alerts as Terraform would."""
    found = {}
    for name, body in resources("google_monitoring_alert_policy").items():
        if "for_each" not in body:
            found[name] = body
            continue
        assert body["for_each"] == "${local.counter_alerts}", name
        for key, each in tf_locals()["counter_alerts"].items():
            found[key] = expand(body, {k: hcl_string(v) if isinstance(v, str) else v for k, v in each.items()})
    return found


def expand(node, each: dict):
    """`node` with each.value.* put in, as for_each does (strings keep their quotes, as python-hcl2's)."""
    if isinstance(node, dict):
        return {k: expand(v, each) for k, v in node.items()}
    if isinstance(node, list):
        return [expand(v, each) for v in node]
    if not isinstance(node, str):
        return node
    text = node.replace("[each.value.metric]", f'["{each["metric"]}"]')
    return re.sub(r"\$\{each\.value\.(\w+)\}", lambda m: str(each[m.group(1)]), text)


# --- the filter language, as far as our filters use it -----------------------------

CLAUSE = re.compile(
    r"(?P<path>[\w.]+)\s*(?P<op>>=|<=|!=|=|<|>|:)\s*"
    r'(?P<value>"(?:[^"\\]|\\.)*"|\*|-?\d+|\("[^"]*" OR "[^"]*"\)|one_of\("[^"]*", "[^"]*"\))'
)


def field(line: dict, path: str):
    head, _, rest = path.partition(".")
    if head == "jsonPayload":
        node = line
    elif head == "httpRequest":
        node = line.get("httpRequest", {})
    else:
        raise AssertionError(f"unexpected field {path}")
    for part in rest.split(".") if head == "httpRequest" else [rest]:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def matches(filter_text: str, line: dict) -> bool:
    clauses = [c.strip() for c in filter_text.split(" AND ")]
    for clause in clauses:
        match = CLAUSE.fullmatch(clause)
        assert match, f"a clause this test cannot read (so cannot vouch for): {clause!r}"
        path, op, raw = match.group("path", "op", "value")
        if path.startswith("resource."):
            assert path in ("resource.type", "resource.labels.service_name"), clause
            assert raw in ('"cloud_run_revision"', f'"{FUNCTION_NAME}"', *BOTH_FUNCTIONS), clause
            continue
        value = field(line, path)
        if op == ":" and raw == "*":
            ok = value is not None
        elif raw.startswith("("):  # field=("a" OR "b")
            ok = op == "=" and value is not None and str(value) in re.findall(r'"([^"]*)"', raw)
        elif raw.startswith('"'):
            expected = json.loads(raw)
            ok = value is not None and {"=": str(value) == expected, "!=": str(value) != expected}[op]
        else:
            number = int(raw)
            ok = (
                isinstance(value, (int, float))
                and {
                    ">=": value >= number,
                    "<=": value <= number,
                    ">": value > number,
                    "<": value < number,
                    "=": value == number,
                    "!=": value != number,
                }[op]
            )
        if not ok:
            return False
    return True


def extract(extractor: str, line: dict):
    extractor = hcl_string(extractor)
    match = re.fullmatch(r"EXTRACT\(([\w.]+)\)", extractor)
    if match:
        return field(line, match.group(1))
    match = re.fullmatch(r'REGEXP_EXTRACT\(([\w.]+), "(.*)"\)', extractor)
    assert match, f"an extractor this test cannot read: {extractor!r}"
    value = field(line, match.group(1))
    found = re.search(match.group(2).replace("\\\\", "\\"), str(value)) if value is not None else None
    return found.group(1) if found else None


# --- real lines ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def lines(backends, log_dir, oidc_issuer, served_default, event_path, make_key_module, db, gcs, shipped):
    """Request lines from the served functions (the API's and the deliveries'), each kind of request once at least."""
    key, workspace = make_key_module()
    tag = uuid.uuid4().hex[:8]
    auth = {"Authorization": f"Bearer {key}"}
    # The ordinary routes, on the shared function.
    created = served_default.post(json={"content_type": "video/mp4"}, headers={**auth, "X-Request-Id": f"{tag}-c"})
    assert created.status_code == 201
    base = served_default.url
    served_default.session.get(f"{base}/v1/uploads/{created.json()['id']}", headers=auth, timeout=30)
    served_default.session.get(f"{base}/nowhere", timeout=30)
    served_default.session.get(f"{base}/health", timeout=30)
    served_default.post(json={"content_type": "text/html"}, headers=auth)
    # A create served without its limits: the store does not answer (nothing listens on port 9).
    unlimited = start_shipped(
        shipped,
        dict(backends["env"], LIMITS_REDIS_URL="redis://127.0.0.1:9"),
        log_dir,
        name=f"function-no-limits-{tag}",
    )
    try:
        assert (
            requests.post(
                unlimited.url + "/v1/uploads", json={"content_type": "video/mp4"}, headers=auth, timeout=60
            ).status_code
            == 201
        )
    finally:
        unlimited.stop()
    unlimited_lines = [json.loads(raw) for raw in unlimited.log_path.read_text().splitlines() if raw.startswith("{")]

    # A sweep and a storage event failing on a dead Firestore.
    name = created.json()["source_url"].split(f"/{BUCKET}/", 1)[1]  # an object the service knows
    gcs.bucket(STAGING_BUCKET).blob(name).upload_from_string(b"x", content_type="video/mp4")  # where it lands
    dead = start_shipped(
        shipped,
        dict(backends["env"], FIRESTORE_EMULATOR_HOST="127.0.0.1:9"),
        log_dir,
        name=f"function-dead-firestore-{tag}",
    )
    try:
        sweep = requests.post(
            dead.url + "/internal/sweep", timeout=60, headers={"Authorization": f"Bearer {oidc_issuer.token()}"}
        )
        event = requests.post(
            dead.url + "/internal/storage-events",
            timeout=60,
            json=envelope(resource_of(gcs, name)),
            headers={"Authorization": f"Bearer {oidc_issuer.events_token()}"},
        )
        assert (sweep.status_code, event.status_code) == (503, 503), (sweep.text, event.text)
    finally:
        dead.stop()
    dead_lines = [json.loads(raw) for raw in dead.log_path.read_text().splitlines() if raw.startswith("{")]

    # Webhook deliveries failing until they are dead-lettered (the event path's function).
    receiver = Receiver()
    receiver.script.extend([500] * WEBHOOK_MAX_ATTEMPTS)
    hook = endpoints.create_endpoint(db, workspace, "live", receiver.url, True, datetime.now(UTC))
    SESSION_WEBHOOK_SECRETS.add(hook.secret)
    try:
        upload(event_path, key, b"monitoring")
        receiver.wait_for(WEBHOOK_MAX_ATTEMPTS, timeout=60)
        wait_for(
            lambda: [r for r in deliveries(db, workspace, hook.id) if r["dead_lettered"]],
            timeout=30,
            what="the dead-letter record",
        )
    finally:
        receiver.stop()
    events_lines = event_path["function"].log_lines() + event_path["deliveries"].log_lines()
    everything = [
        line
        for line in served_default.log_lines() + dead_lines + events_lines + unlimited_lines
        if "httpRequest" in line
    ]
    return everything


@pytest.fixture(scope="module")
def make_key_module(db):
    from lib.api import auth

    def make():
        workspace = f"ws_{uuid.uuid4().hex[:12]}"
        key, _ = auth.create_key(db, workspace, "pytest", "live")
        SESSION_KEYS.add(key)
        return key, workspace

    return make


def filter_of(name: str) -> str:
    return metrics()[name]["filter"]


def test_every_request_line_is_counted_once_and_carries_every_label(lines, main_module):
    body = metrics()["requests"]["body"]
    assert all(matches(filter_of("requests"), line) for line in lines)
    labels = {unquote(k): v for k, v in body["label_extractors"].items()}
    declared = {unquote(label["key"]) for label in body["metric_descriptor"][0]["labels"]}
    assert set(labels) == declared == {"route", "method", "status", "error_code"}
    for line in lines:
        assert extract(labels["route"], line) in {*(template for template, _ in main_module.ROUTES), "(none)"}
        assert extract(labels["method"], line) in {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"}
        assert re.fullmatch(r"[1-5][0-9][0-9]", str(extract(labels["status"], line)))
    codes = {extract(labels["error_code"], line) for line in lines}
    assert {None, "not_found", "unsupported_content_type", "service_unavailable", "webhook_delivery_failed"} <= codes


def test_the_latency_extractor_reads_a_number_of_seconds_from_every_line(lines):
    body = metrics()["latency"]["body"]
    assert all(matches(filter_of("latency"), line) for line in lines)
    for line in lines:
        seconds = float(extract(body["value_extractor"], line))
        assert math.isfinite(seconds)
        assert 0 <= seconds < 120
        assert abs(seconds - float(line["httpRequest"]["latency"].rstrip("s"))) < 1e-9


@pytest.mark.parametrize(
    ("metric", "route", "status"),
    [
        ("sweep_failures", "/internal/sweep", 503),
        ("storage_event_failures", "/internal/storage-events", 503),
        ("webhook_delivery_failures", "/internal/webhooks", 502),
        ("webhook_dead_letters", "/internal/webhook-dead-letters", 200),
        ("limiter_unavailable", "/v1/uploads", 201),
    ],
)
def test_each_failure_metric_counts_its_lines_and_nothing_else(lines, metric, route, status):
    counted = [line for line in lines if matches(filter_of(metric), line)]
    assert counted, f"{metric} matches none of the real lines"
    extractors = {unquote(k): v for k, v in metrics()[metric]["body"].get("label_extractors", {}).items()}
    for line in counted:
        assert all(extract(e, line) is not None for e in extractors.values()), (metric, extractors)
    assert all(line["route"] == route and line["httpRequest"]["status"] == status for line in counted)
    others = [line for line in lines if line["route"] == route and line["httpRequest"]["status"] != status]
    assert not any(matches(filter_of(metric), line) for line in others)


def test_alert_policies_use_defined_metrics_and_labels_and_say_what_to_do():
    defined = {
        m["ref"]: {
            unquote(label["key"])
            for block in m["body"].get("metric_descriptor", [])
            for label in block.get("labels", [])
        }
        for m in metrics().values()
    }
    policies = globals()["policies"]()
    assert set(policies) >= {
        "error_ratio",
        "create_latency",
        "sweep_failing",
        "pubsub_backlog",
        "dead_letters",
        "instances_near_max",
        "uptime",
        "limiter_unavailable",
        "integrity_rejections",
        "webhooks_deferred",
        "webhook_endpoint_disabled",
    }
    gcp_metrics = {
        "pubsub.googleapis.com/subscription/oldest_unacked_message_age",
        "pubsub.googleapis.com/subscription/num_undelivered_messages",
        "run.googleapis.com/container/instance_count",
        "monitoring.googleapis.com/uptime_check/check_passed",
    }
    for name, policy in policies.items():
        assert hcl_string(policy["notification_channels"]) == "${local.channels}", name
        assert "${local.runbook}" in policy["documentation"][0]["content"], name
        for condition in policy["conditions"]:
            threshold = condition["condition_threshold"][0]
            for key in ("filter", "denominator_filter"):
                if key not in threshold:
                    continue
                text = hcl_string(threshold[key])
                metric_type = re.match(r'metric\.type = "((?:[^"$]|\$\{[^}]*\})+)"', text).group(1)
                used_labels = set(re.findall(r"metric\.label\.(\w+)", text))
                for aggregation in threshold.get("aggregations", []):
                    used_labels |= {
                        hcl_string(f).removeprefix("metric.label.")
                        for f in aggregation.get("group_by_fields", [])
                        if "metric.label." in f
                    }
                ref = re.fullmatch(r"\$\{local\.log_metric\}/\$\{(.+)\.name\}", metric_type)
                if ref:
                    assert ref.group(1) in defined, (name, metric_type)
                    assert used_labels <= defined[ref.group(1)], (name, used_labels - defined[ref.group(1)])
                else:
                    assert metric_type in gcp_metrics, (name, metric_type)


def test_instances_alert_fires_below_the_cap_it_guards_and_never_at_rest():
    """instance_count > threshold: below the cap when there is room to scale, never at idle (the warm
    instances), and never for ever, whatever max_instances and min_instances are (issue 24: at a cap of
    1, floor(0.8) was 0 and the alert fired for ever)."""
    policy = policies()["instances_near_max"]
    condition = policy["conditions"][0]["condition_threshold"][0]
    assert hcl_string(condition["comparison"]) == "COMPARISON_GT"
    expression = condition["threshold_value"]
    assert expression == "${min(max(floor(var.max_instances * 0.8), var.min_instances, 1), var.max_instances)}"
    variables = tf_variables()
    for max_instances in range(1, 1001):
        for min_instances in {0, 1, 2, variables["min_instances"]["default"], max_instances} - {max_instances + 1}:
            if min_instances > max_instances:
                continue
            threshold = min(max(math.floor(max_instances * 0.8), min_instances, 1), max_instances)
            assert threshold >= max(min_instances, 1)  # idle, or one instance serving, is not "near max"
            assert threshold < max_instances or max_instances == max(min_instances, 1)  # it can fire
    default = variables["max_instances"]["default"]
    assert min(max(math.floor(default * 0.8), variables["min_instances"]["default"], 1), default) < default


def test_notification_channels_come_from_the_variable_and_none_by_default():
    channels = resources("google_monitoring_notification_channel")["email"]
    assert channels["for_each"] == "${toset(var.alert_emails)}"
    assert hcl_string(channels["type"]) == "email"
    assert tf_variables()["alert_emails"]["default"] == []
    channels = "${[for channel in google_monitoring_notification_channel.email : channel.id]}"
    assert hcl_string(tf_locals()["channels"]) == channels


def test_the_uptime_check_probes_an_unauthenticated_get_route_for_its_body(main_module):
    main = main_module
    check = resources("google_monitoring_uptime_check_config")["health"]
    http = check["http_check"][0]
    path = hcl_string(http["path"])
    assert not path.endswith("z")  # Cloud Run reserves some paths ending in "z"
    handlers, _, _ = main.UPLOADS(path)
    assert handlers.get("GET") is main.health
    status, body, _ = main.health(None, b"", {})
    assert status == 200
    assert hcl_string(check["content_matchers"][0]["content"]) in json.dumps(body, separators=(",", ":"))
    assert http["use_ssl"] is True
    assert http["validate_ssl"] is True


def test_the_dashboard_renders_to_json_with_the_charts_ops_need():
    template = (TF / "dashboard.json.tftpl").read_text()
    values = {
        "name": "framelane-uploads",
        "requests_metric": "logging.googleapis.com/user/framelane-uploads/requests",
        "latency_metric": "logging.googleapis.com/user/framelane-uploads/request_latencies",
        "service": FUNCTION_NAME,
        "max_instances": "20",
    }
    rendered = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], template)
    assert "${" not in rendered
    assert "%{" not in rendered
    dashboard = json.loads(rendered)
    titles = [tile["widget"]["title"] for tile in dashboard["mosaicLayout"]["tiles"]]
    for needed in ("Requests per second", "5xx ratio", "latency", "Instances", "Pub/Sub"):
        assert any(needed in title for title in titles), needed
    filters = re.findall(r'"filter": "((?:[^"\\]|\\.)*)"', rendered)
    used = {re.search(r'metric\.type="([^"]+)"', json.loads(f'"{f}"')).group(1) for f in filters}
    assert used == {
        values["requests_metric"],
        values["latency_metric"],
        "run.googleapis.com/container/instance_count",
        "pubsub.googleapis.com/subscription/oldest_unacked_message_age",
    }
    # The metric names the template is given are the ones monitoring.tf defines.
    call = hcl_string(resources("google_monitoring_dashboard")["uploads"]["dashboard_json"])
    assert "google_logging_metric.requests.name" in call
    assert "google_logging_metric.latency.name" in call
    assert {m["name"] for m in metrics().values()} >= {
        "framelane-uploads/requests",
        "framelane-uploads/request_latencies",
    }


def test_the_filters_name_the_cloud_run_services_the_functions_run_as():
    """Never the function's name assumed to be its service's: the service from its serviceConfig."""
    main = {k: v for block in load_tf("main.tf")["locals"] for k, v in block.items()}
    for local, function in (("api_service", "uploads"), ("deliveries_service", "deliveries")):
        expression = hcl_string(main[local])
        # serviceConfig.service is "projects/{project}/locations/{region}/services/{service}".
        assert expression == (
            '${element(reverse(split("/", google_cloudfunctions2_function.'
            f"{function}.service_config[0].service)), 0)}}"
        ), expression
    text = "\n".join(path.read_text() for path in (TF / "monitoring.tf", TF / "function.tf"))
    # No filter, chart or invoker grant names a function where a service is meant.
    assert "google_cloudfunctions2_function.uploads.name" not in text
    assert "google_cloudfunctions2_function.deliveries.name" not in text
    for name in ("service_filter", "run_resource", "api_resource"):
        assert "local.api_service" in hcl_string(tf_locals()[name])
    call = hcl_string(resources("google_monitoring_dashboard")["uploads"]["dashboard_json"])
    assert "service = local.api_service" in call


def test_whatever_reads_a_log_based_metric_waits_until_monitoring_knows_it():
    """Issue 33: a policy created moments after its log-based metric fails the first apply (404 "it could
    take up to 10 minutes to become available", terraform-provider-google#11102). The wait starts once
    every metric exists (its triggers name each one, so a new metric waits again), and everything that
    names a log-based metric is created after it."""
    sleeps = resources("time_sleep")
    assert set(sleeps) == {"log_metrics"}
    wait = sleeps["log_metrics"]
    assert hcl_string(wait["create_duration"]) == "${var.log_metrics_wait_seconds}s"
    assert tf_variables()["log_metrics_wait_seconds"]["default"] == 600  # the 10 minutes the API names
    triggers = hcl_string(wait["triggers"]) if isinstance(wait["triggers"], str) else json.dumps(wait["triggers"])
    for metric in metrics().values():
        ref = metric["ref"].split("[")[0]
        assert f"{ref}.id" in triggers or f"in {ref} :" in triggers, (metric["ref"], triggers)
    readers = {
        **{f"google_monitoring_alert_policy.{name}": body for name, body in policies().items()},
        **{
            f"google_monitoring_dashboard.{name}": body
            for name, body in resources("google_monitoring_dashboard").items()
        },
    }
    waiting = set()
    for address, body in readers.items():
        text = json.dumps(body)
        if "google_logging_metric." not in text and "local.log_metric" not in text:
            continue
        assert "${time_sleep.log_metrics}" in body.get("depends_on", []), address
        waiting.add(address)
    assert {
        "google_monitoring_alert_policy.error_ratio",
        "google_monitoring_alert_policy.create_latency",
        "google_monitoring_alert_policy.sweep_failing",
        "google_monitoring_alert_policy.dead_letters",
        "google_monitoring_alert_policy.limiter_unavailable",
        "google_monitoring_dashboard.uploads",
    } <= waiting


def logged(capsys, route: str) -> list[dict]:
    """The request lines an in-process app wrote on `route` since the last call."""
    return [
        line
        for line in (json.loads(raw) for raw in capsys.readouterr().out.splitlines() if raw.startswith("{"))
        if line.get("route") == route and "httpRequest" in line
    ]


def test_the_ops_signals_count_rejected_integrity_deferred_deliveries_and_disabled_endpoints(
    client, deliveries_client, db, make_key, oidc_issuer, capsys
):
    """Issue 33's signals, against the lines the code writes: a rejection for size or checksum counts
    (GCS refuses those, so each is unexpected) and one for the file's content does not; a delivery
    deferred for its endpoint's share in flight counts, with its event and endpoint; the failure
    that disables an endpoint counts, an ordinary failure does not."""
    key, workspace = make_key()
    capsys.readouterr()
    rejected = {}
    for code, body, sent in (
        ("size_mismatch", declared(DATA), DATA[:2048]),
        ("checksum_mismatch", declared(DATA, crc32c=declared(b"other")["crc32c"]), DATA),
        ("content_mismatch", declared(HTML), HTML),
    ):
        out = create(client, key, body)
        put_bytes(out["upload_url"], sent)
        assert client.get(f"/v1/uploads/{out['id']}", headers=bearer(key)).get_json()["rejection"]["code"] == code
        [line] = [line for line in logged(capsys, "/v1/uploads/{upload_id}") if line.get("upload_id") == out["id"]]
        rejected[code] = line
    integrity = filter_of("integrity_rejections")
    assert matches(integrity, rejected["size_mismatch"])
    assert matches(integrity, rejected["checksum_mismatch"])
    assert not matches(integrity, rejected["content_mismatch"])
    assert rejected["content_mismatch"]["rejection_code"] == "content_mismatch"  # logged, only not counted

    # Deferred: this instance already has the endpoint's share of deliveries in flight.
    busy = "we_" + uuid.uuid4().hex
    with share_in_flight(busy):
        resp = webhook_push(
            deliveries_client, "/internal/webhooks", delivery_envelope(endpoint_id=busy), oidc_issuer.webhooks_token()
        )
        assert resp.status_code == 429
    [deferred] = logged(capsys, "/internal/webhooks")
    assert matches(filter_of("webhook_deliveries_deferred"), deferred)
    assert deferred["endpoint_id"] == busy
    assert not matches(filter_of("webhook_delivery_failures"), deferred)

    # Disabled: one endpoint failing for longer than DISABLE_AFTER already, one failing since now.
    now = datetime.now(UTC)
    lines = {}
    for name, failing_since in (("disabled", now - endpoints.DISABLE_AFTER - timedelta(hours=1)), ("failing", None)):
        hook = endpoints.create_endpoint(db, workspace, "live", "https://127.0.0.1:9/refused", True, now)
        SESSION_WEBHOOK_SECRETS.add(hook.secret)
        if failing_since is not None:
            endpoints.endpoint_ref(db, hook.id).update({"failing_since": failing_since})
        resp = webhook_push(
            deliveries_client,
            "/internal/webhooks",
            delivery_envelope(endpoint_id=hook.id),
            oidc_issuer.webhooks_token(),
        )
        assert resp.status_code == 502, resp.get_json()
        [lines[name]] = logged(capsys, "/internal/webhooks")
    assert matches(filter_of("webhook_endpoints_disabled"), lines["disabled"])
    assert not matches(filter_of("webhook_endpoints_disabled"), lines["failing"])
    assert endpoints.get_endpoint(db, lines["disabled"]["endpoint_id"]).disabled_at is not None
    assert all(matches(filter_of("webhook_delivery_failures"), line) for line in lines.values())
    for line in lines.values():  # the attempts are recorded (in the background) as for any delivery
        wait_for(lambda line=line: deliveries(db, workspace, line["endpoint_id"]), timeout=30, what="the attempt row")


def test_each_counter_alert_reads_the_function_whose_lines_its_metric_counts():
    """The API's signals (the limiter, rejections) on the API function; the webhooks' on either."""
    alerts = tf_locals()["counter_alerts"]
    assert {key: each["api_only"] for key, each in alerts.items()} == {
        "limiter_unavailable": True,
        "integrity_rejections": True,
        "webhooks_deferred": False,
        "webhook_endpoint_disabled": False,
    }
    condition = resources("google_monitoring_alert_policy")["counters"]["conditions"][0]["condition_threshold"][0]
    assert "${each.value.api_only ? local.api_resource : local.run_resource}" in hcl_string(condition["filter"])
    # A policy that existed before the alerts were one resource is moved, not replaced.
    moved = [{k: v for k, v in block.items() if k in ("from", "to")} for block in monitoring().get("moved", [])]
    assert {
        "from": "${google_monitoring_alert_policy.limiter_unavailable}",
        "to": '${google_monitoring_alert_policy.counters["limiter_unavailable"]}',
    } in moved, moved
