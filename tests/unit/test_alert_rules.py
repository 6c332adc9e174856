"""The Prometheus alert rules as checked in: valid (``promtool check rules``), unit-tested per alert
(``promtool test rules``, a firing and a not-firing case each), labelled, annotated, linked to a
runbook section of docs/operations.md, and written against metric names the services register.

promtool comes with Debian's ``prometheus`` package (scripts/system-deps.sh): without it these
tests fail rather than skip, since an untested rule file would otherwise pass CI.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))
OPERATIONS = ROOT / "docs" / "operations.md"
SECTION = "## Alerts and runbooks"
#: Modules whose import registers every factura_* metric (bootstraps import the whole service).
SERVICES = ("ingest", "renderer", "email_sender", "sms_sender", "scheduler", "audit")


def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    assert path, "promtool is missing: run scripts/system-deps.sh (Debian package prometheus)"
    return path


def rules() -> list[dict[str, Any]]:
    return [
        rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]
    ]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def test_there_are_rules_and_tests() -> None:
    assert RULE_FILES and TEST_FILES
    assert len(alerts()) >= 10


def test_promtool_check_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", *map(str, TEST_FILES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_has_a_firing_and_a_quiet_case() -> None:
    cases: dict[str, set[bool]] = {}
    for path in TEST_FILES:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    for alert in alerts():
        assert cases.get(alert["alert"]) == {True, False}, f"{alert['alert']}: needs a firing and a not-firing case"


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: str(a["alert"]))
def test_alert_is_labelled_annotated_and_has_a_runbook(alert: dict[str, Any]) -> None:
    name = alert["alert"]
    assert re.fullmatch(r"Factura[A-Z][A-Za-z0-9]+", name)
    assert alert["labels"]["severity"] in {"page", "ticket"}
    notes = alert["annotations"]
    assert notes["summary"].strip() and notes["description"].strip()
    assert notes["runbook_url"] == f"docs/operations.md#{name.lower()}"
    assert name in runbooks(), f"docs/operations.md has no '### {name}' under '{SECTION}'"


def runbooks() -> dict[str, str]:
    """``### <AlertName>`` subsection → its text, within the Alerts and runbooks section."""
    text = OPERATIONS.read_text()
    assert SECTION in text, f"docs/operations.md has no '{SECTION}' section"
    section = re.split(r"^## ", text.split(SECTION, 1)[1], flags=re.MULTILINE)[0]
    parts = re.split(r"^### (\S+)\s*$", section, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_runbook_names_an_alert_and_says_what_to_do() -> None:
    names = {alert["alert"] for alert in alerts()}
    for name, body in runbooks().items():
        assert name in names, f"runbook {name} has no alert"
        for part in ("First checks", "Fix", "Escalate"):
            assert f"**{part}" in body, f"runbook {name} lacks '{part}'"


def test_rules_use_only_metrics_the_services_register() -> None:
    for service in SERVICES:
        importlib.import_module(f"factura.{service}.bootstrap")
    importlib.import_module("factura.audit.watch")
    registered: set[str] = set()
    for metric in REGISTRY.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(metric.type, ("",))
        registered |= {metric.name + suffix for suffix in suffixes}
    used = {name for rule in rules() for name in re.findall(r"\bfactura_[a-z0-9_]+", rule["expr"])}
    assert used, "no factura_ metric in the rules"
    assert used <= registered, f"not registered by any service: {sorted(used - registered)}"
