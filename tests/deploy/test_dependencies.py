"""A vulnerability audit of what the function deploys (requirements.txt)."""

from __future__ import annotations

import json
import subprocess

import pytest
import requests

from tests.conftest import ROOT


def vulnerability_data_reachable() -> str | None:
    """None if pip-audit's data source answers for our own pins; else why not.

    pip-audit asks PyPI's per-release JSON API (/pypi/NAME/VERSION/json) for
    each dependency's known vulnerabilities.
    """
    name, version = next(
        line.split("==")
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    url = f"https://pypi.org/pypi/{name}/{version}/json"
    try:
        probe = requests.get(url, timeout=10)
    except requests.RequestException as exc:
        return f"{url} is unreachable ({type(exc).__name__})"
    if probe.status_code != 200 or "vulnerabilities" not in probe.text:
        return f"{url} answers {probe.status_code} without vulnerability data"
    return None


def test_requirements_have_no_known_vulnerabilities():
    missing = vulnerability_data_reachable()
    if missing:
        pytest.skip(f"vulnerability data cannot be reached from here: {missing}; run `make audit` where it can")
    result = subprocess.run(
        [
            str(ROOT / ".venv/bin/pip-audit"),
            "-r",
            str(ROOT / "requirements.txt"),
            "--format",
            "json",
            "--progress-spinner",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(result.stdout)
    unaudited = [d["name"] for d in report["dependencies"] if "skip_reason" in d]
    vulnerable = {d["name"]: [v["id"] for v in d["vulns"]] for d in report["dependencies"] if d.get("vulns")}
    assert unaudited == []
    assert vulnerable == {}
