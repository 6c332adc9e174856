"""The Grafana dashboards as checked in: generated from code, well-formed, and provisioned.

The queries themselves run against a live Prometheus in tests/integration/test_prometheus.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from factura.devstack.dashboards import DASHBOARDS, DASHBOARDS_DIR, executable, load, metric_names, panels, render_json

PROVISIONING = DASHBOARDS_DIR.parent / "provisioning"
BOARDS = load()


def test_the_checked_in_json_is_what_the_code_generates() -> None:
    assert sorted(BOARDS) == sorted(DASHBOARDS)
    for name, build in DASHBOARDS.items():
        on_disk = (DASHBOARDS_DIR / f"{name}.json").read_text()
        assert on_disk == render_json(build()), f"{name}.json is stale: run python -m factura.devstack.dashboards"


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_dashboard_structure(name: str) -> None:
    board = BOARDS[name]
    assert board["uid"] == f"factura-{name}" and board["title"].startswith("Factura / ")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    titles = [p["title"] for p in panels(board)]
    assert all(titles) and len(titles) == len(set(titles)), f"empty or repeated titles in {name}"
    for panel in panels(board):
        _check_panel(name, panel)


def _check_panel(board: str, panel: dict[str, Any]) -> None:
    where = f"{board} / {panel['title']}"
    assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
    assert panel["targets"], f"{where}: no query"
    assert panel["description"], f"{where}: say what the panel shows"
    pos = panel["gridPos"]
    assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, where
    ref_ids = [t["refId"] for t in panel["targets"]]
    assert len(ref_ids) == len(set(ref_ids)), where
    for target in panel["targets"]:
        assert target["datasource"] == panel["datasource"], where
        assert metric_names(target["expr"]), f"{where}: selects no metric: {target['expr']}"


def test_panels_do_not_overlap() -> None:
    for name, board in BOARDS.items():
        cells: set[tuple[int, int]] = set()
        for panel in panels(board):
            p = panel["gridPos"]
            mine = {(x, y) for x in range(p["x"], p["x"] + p["w"]) for y in range(p["y"], p["y"] + p["h"])}
            assert not cells & mine, f"{name} / {panel['title']} overlaps another panel"
            cells |= mine


def test_the_four_dashboards_cover_what_an_sre_watches() -> None:
    used = {
        n for board in BOARDS.values() for p in panels(board) for t in p["targets"] for n in metric_names(t["expr"])
    }
    for metric in (
        "factura_consumer_lag_messages",
        "factura_render_seconds_bucket",
        "factura_deliveries_total",
        "factura_delivery_fallbacks_total",
        "factura_delivery_cost_total",
        "factura_reminders_published_total",
        "factura_payments_applied_total",
        "factura_overdue_amount",
        "factura_messages_dead_lettered_total",
        "process_start_time_seconds",
        "factura_http_requests_total",
        "factura_dependency_up",
    ):
        assert metric in used, metric


def test_metric_names_skips_functions_labels_and_keywords() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, job) (rate(factura_x_bucket{job=~"$job", le!="a_b"}[5m])))'
        " / on(job) group_left (topic) factura_y or vector(0) and up offset 5m"
    )
    assert metric_names(expr) == {"factura_x_bucket", "factura_y", "up"}


def test_executable_replaces_grafana_variables() -> None:
    expr = 'rate(x{job=~"$job", channel=~"${channel}"}[$__rate_interval]) / increase(y[$__range])'
    assert executable(expr) == 'rate(x{job=~".*", channel=~".*"}[1m]) / increase(y[1h])'


def test_provisioning_points_grafana_at_the_dashboards_and_prometheus() -> None:
    [datasource] = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"].startswith("$")  # from the environment
    [provider] = yaml.safe_load((PROVISIONING / "dashboards" / "factura.yml").read_text())["providers"]
    assert provider["type"] == "file" and Path(provider["options"]["path"]).is_absolute()
