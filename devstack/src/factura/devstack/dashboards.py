"""The Grafana dashboards, as code: ``python -m factura.devstack.dashboards`` writes deploy/grafana/dashboards.

Written as plain dicts rather than through a builder library: a dashboard is JSON Grafana reads
as it is, and the checked-in files are what gets provisioned and reviewed; a unit test regenerates
them and fails if they differ. Every query uses the metric catalogue of docs/operations.md, the
``$datasource`` variable (one Prometheus per environment) and a ``$job`` filter (job = service).
The helpers at the end read any dashboard back (panels, PromQL, the metric names it uses) for the
query check against a live Prometheus and for the PNG renderer.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DASHBOARDS_DIR = Path(__file__).resolve().parents[4] / "deploy" / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
Panel = dict[str, Any]

# -- building blocks ------------------------------------------------------------------------------


def _targets(queries: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "range": True}
        for i, (expr, legend) in enumerate(queries)
    ]


def timeseries(title: str, description: str, queries: list[tuple[str, str]], unit: str = "short") -> Panel:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": _targets(queries),
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 2, "fillOpacity": 10}}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "gridPos": {"w": 12, "h": 8},
    }


def stat(title: str, description: str, expr: str, unit: str = "none", legend: str = "") -> Panel:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [{**_targets([(expr, legend)])[0], "range": False, "instant": True}],
        "fieldConfig": {"defaults": {"unit": unit, "decimals": 2 if "percent" in unit else 0}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value", "graphMode": "none"},
        "gridPos": {"w": 6, "h": 4},
    }


def bars(title: str, description: str, expr: str, legend: str, unit: str = "none") -> Panel:
    """A bar gauge of an instant query: reasons, currencies, anything best read as a ranking."""
    panel = stat(title, description, expr, unit, legend)
    panel |= {"type": "bargauge", "gridPos": {"w": 12, "h": 8}}
    panel["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "orientation": "horizontal"}
    return panel


def _variables(extra: list[dict[str, str]]) -> list[dict[str, Any]]:
    def query_var(name: str, label: str, metric: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "query": {"query": f"label_values({metric}, {name})", "refId": name},
            "definition": f"label_values({metric}, {name})",
            "refresh": 2,
            "multi": True,
            "includeAll": True,
            "allValue": ".*",
            "current": {"text": "All", "value": "$__all"},
            "sort": 1,
        }

    datasource = {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"}
    return [datasource, query_var("job", "Service", "factura_http_requests_total")] + [
        query_var(e["name"], e["label"], e["metric"]) for e in extra
    ]


def dashboard(
    uid: str, title: str, description: str, panels: list[Panel], variables: list[dict[str, str]] | None = None
) -> Any:
    """Place ``panels`` left to right, top to bottom on Grafana's 24-column grid; number them."""
    x = y = row_h = 0
    for i, panel in enumerate(panels, start=1):
        pos = panel["gridPos"]
        if x + pos["w"] > 24:
            x, y, row_h = 0, y + row_h, 0
        panel["gridPos"] = {"x": x, "y": y, "w": pos["w"], "h": pos["h"]}
        panel["id"] = i
        x, row_h = x + pos["w"], max(row_h, pos["h"])
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["factura"],
        "timezone": "utc",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": []},
        "templating": {"list": _variables(variables or [])},
        "panels": panels,
    }


# -- the four dashboards --------------------------------------------------------------------------


def _p95(metric: str, by: str, where: str = "", q: str = "0.95") -> str:
    return f"histogram_quantile({q}, sum by (le{', ' + by if by else ''}) (rate({metric}_bucket{where}[{RATE}])))"


def pipeline() -> Any:
    return dashboard(
        "factura-pipeline",
        "Factura / Pipeline overview",
        "Invoices through ingest, renderer and senders: throughput and latency per stage, and consumer lag.",
        [
            stat(
                "Invoices accepted",
                "ERP invoices ingest accepted in the time range, all doors.",
                'sum(increase(factura_invoices_received_total{outcome="accepted"}[$__range]))',
            ),
            stat(
                "Invoices rendered",
                "PDFs rendered or supplied by the ERP in the time range.",
                'sum(increase(factura_invoices_rendered_total{outcome=~"rendered|supplied"}[$__range]))',
            ),
            stat(
                "Invoices delivered",
                "Invoice messages a provider accepted (any channel) in the time range.",
                'sum(increase(factura_deliveries_total{purpose="invoice", outcome="delivered"}[$__range]))',
            ),
            stat(
                "Consumer lag",
                "Messages not yet processed, all consumer groups: should hover near zero.",
                'sum(factura_consumer_lag_messages{job=~"$job"})',
            ),
            timeseries(
                "Invoices received by door and outcome",
                "Kafka, HTTP API and bulk imports; duplicates and invalid ones too.",
                [(f"sum by (door, outcome) (rate(factura_invoices_received_total[{RATE}]))", "{{door}} {{outcome}}")],
                "ops",
            ),
            timeseries(
                "Messages consumed per service",
                "Throughput of each stage's consumer loop.",
                [(f'sum by (job) (rate(factura_messages_consumed_total{{job=~"$job"}}[{RATE}]))', "{{job}}")],
                "ops",
            ),
            timeseries(
                "Events published by topic",
                "What each stage hands to the next.",
                [(f'sum by (topic) (rate(factura_events_published_total{{job=~"$job"}}[{RATE}]))', "{{topic}}")],
                "ops",
            ),
            timeseries(
                "Handler latency p95 per service",
                "Time to handle one message, retries included.",
                [(_p95("factura_handler_duration_seconds", "job", '{job=~"$job"}'), "{{job}}")],
                "s",
            ),
            timeseries(
                "Render time per invoice",
                "Full render of one invoice (PDF and e-invoice XML), by engine.",
                [
                    (_p95("factura_render_seconds", "engine", q="0.5"), "p50 {{engine}}"),
                    (_p95("factura_render_seconds", "engine"), "p95 {{engine}}"),
                ],
                "s",
            ),
            timeseries(
                "Provider send time p95 by channel",
                "SMTP transaction or provider HTTP call, accepted or refused.",
                [(_p95("factura_provider_send_seconds", "channel"), "{{channel}}")],
                "s",
            ),
            timeseries(
                "Consumer lag by service",
                "End offset minus committed offset, all partitions (labels topic and partition for detail)."
                " Growing lag: scale the consumer out (docs/operations.md).",
                [('sum by (job) (factura_consumer_lag_messages{job=~"$job"})', "{{job}}")],
            ),
            timeseries(
                "Paused partitions",
                "Partitions a consumer paused because a dependency is down or it is behind.",
                [('sum by (job) (factura_partitions_paused{job=~"$job"})', "{{job}}")],
            ),
        ],
    )


def delivery() -> Any:
    messages = (
        '(sum(increase(factura_deliveries_total{outcome="delivered"}[$__range]))'
        " + (sum(increase(factura_deliveries_exhausted_total[$__range])) or vector(0)))"
    )
    return dashboard(
        "factura-delivery",
        "Factura / Delivery",
        "Email, SMS, voice and push: success by channel, fallbacks, why deliveries fail, and what they cost.",
        [
            stat(
                "Messages delivered",
                "Share of messages some channel delivered (the rest exhausted every allowed channel).",
                f'sum(increase(factura_deliveries_total{{outcome="delivered"}}[$__range])) / {messages}',
                "percentunit",
            ),
            stat(
                "Fallback rate",
                "Channel hand-overs per message: a bounce or a refusal sent it on to the next channel.",
                f"sum(increase(factura_delivery_fallbacks_total[$__range])) / {messages}",
                "percentunit",
            ),
            stat(
                "Messages exhausted",
                "Messages no allowed channel could deliver in the time range.",
                "sum(increase(factura_deliveries_exhausted_total[$__range]))",
            ),
            stat(
                "Provider errors",
                "Provider answers that were not an acceptance (refused, transient, timeout).",
                'sum(increase(factura_provider_errors_total{channel=~"$channel"}[$__range]))',
            ),
            timeseries(
                "Deliveries by channel and outcome",
                "Each attempt, delivered or failed.",
                [
                    (
                        f'sum by (channel, outcome) (rate(factura_deliveries_total{{channel=~"$channel"}}[{RATE}]))',
                        "{{channel}} {{outcome}}",
                    )
                ],
                "ops",
            ),
            timeseries(
                "Attempt success ratio by channel",
                "Delivered attempts over all attempts, per channel.",
                [
                    (
                        f'sum by (channel) (rate(factura_deliveries_total{{channel=~"$channel", outcome="delivered"}}[{RATE}]))'  # noqa: E501
                        f' / sum by (channel) (rate(factura_deliveries_total{{channel=~"$channel"}}[{RATE}]))',
                        "{{channel}}",
                    )
                ],
                "percentunit",
            ),
            bars(
                "Failure and bounce reasons",
                "Failed attempts in the time range by channel and reason (hard bounce, refused number, ...).",
                'sum by (channel, reason) (increase(factura_deliveries_total{channel=~"$channel", outcome="failed"}[$__range]))',  # noqa: E501
                "{{channel}}: {{reason}}",
            ),
            timeseries(
                "Fallbacks",
                "Messages handed from one channel to the next.",
                [
                    (
                        f"sum by (from_channel, to) (rate(factura_delivery_fallbacks_total[{RATE}]))",
                        "{{from_channel}} → {{to}}",
                    )
                ],
                "ops",
            ),
            timeseries(
                "Provider errors by channel and kind",
                "Refused (permanent), transient and timeout answers from SMTP and the SMS/voice/push providers.",
                [
                    (
                        f'sum by (channel, kind) (rate(factura_provider_errors_total{{channel=~"$channel"}}[{RATE}]))',
                        "{{channel}} {{kind}}",
                    )
                ],
                "ops",
            ),
            timeseries(
                "Provider send time by channel",
                "p50 and p95 of one provider call.",
                [
                    (
                        _p95("factura_provider_send_seconds", "channel", '{channel=~"$channel"}', "0.5"),
                        "p50 {{channel}}",
                    ),
                    (_p95("factura_provider_send_seconds", "channel", '{channel=~"$channel"}'), "p95 {{channel}}"),
                ],
                "s",
            ),
            bars(
                "Cost by channel",
                "Cost of accepted messages in the time range, per the tenants' price lists.",
                'sum by (channel, currency) (increase(factura_delivery_cost_total{channel=~"$channel"}[$__range]))',
                "{{channel}} ({{currency}})",
            ),
            timeseries(
                "SMS segments by encoding",
                "GSM-7 or UCS-2: UCS-2 fits fewer characters per segment, so it costs more.",
                [(f"sum by (encoding) (rate(factura_sms_segments_total[{RATE}]))", "{{encoding}}")],
                "ops",
            ),
        ],
        [{"name": "channel", "label": "Channel", "metric": "factura_deliveries_total"}],
    )


def collections() -> Any:
    return dashboard(
        "factura-collections",
        "Factura / Collections",
        "Reminders and payments: what was sent, whether customers pay after a reminder, what is overdue.",
        [
            stat(
                "Reminders delivered",
                "Reminder messages a provider accepted in the time range.",
                'sum(increase(factura_deliveries_total{purpose="reminder", outcome="delivered"}[$__range]))',
            ),
            stat(
                "Payments after a reminder",
                "Share of payments counted toward an invoice that had been reminded.",
                'sum(increase(factura_payments_applied_total{after_reminder="true"}[$__range]))'
                " / sum(increase(factura_payments_applied_total[$__range]))",
                "percentunit",
            ),
            stat(
                "Overdue invoices",
                "Unpaid invoices past their due date at the last sweep.",
                "sum(max by (currency) (factura_overdue_invoices))",
            ),
            stat(
                "Payments received",
                "Payments ingest accepted in the time range.",
                'sum(increase(factura_payments_received_total{outcome="accepted"}[$__range]))',
            ),
            timeseries(
                "Reminders published by kind",
                "Plan occurrences (before, on, after the due date) and campaign reminders.",
                [
                    (f"sum by (kind) (rate(factura_reminders_published_total[{RATE}]))", "{{kind}}"),
                    (f"sum(rate(factura_campaign_reminders_published_total[{RATE}]))", "campaign"),
                ],
                "ops",
            ),
            timeseries(
                "Reminder deliveries by channel and outcome",
                "What happened to the reminders the scheduler published.",
                [
                    (
                        f'sum by (channel, outcome) (rate(factura_deliveries_total{{purpose="reminder"}}[{RATE}]))',
                        "{{channel}} {{outcome}}",
                    )
                ],
                "ops",
            ),
            timeseries(
                "Payments applied, after a reminder or not",
                "Payments counted toward an invoice; after_reminder=true: a reminder had been sent for it.",
                [
                    (
                        f"sum by (after_reminder) (rate(factura_payments_applied_total[{RATE}]))",
                        "after reminder: {{after_reminder}}",
                    )
                ],
                "ops",
            ),
            timeseries(
                "Payments received by door and outcome",
                "Payments from the ERPs as ingest saw them.",
                [(f"sum by (door, outcome) (rate(factura_payments_received_total[{RATE}]))", "{{door}} {{outcome}}")],
                "ops",
            ),
            timeseries(
                "Overdue amount by currency",
                "Open amount past due, set by the replica holding the sweep lease (max across replicas).",
                [("max by (currency) (factura_overdue_amount)", "{{currency}}")],
            ),
            timeseries(
                "Overdue invoices by currency",
                "Count of unpaid invoices past due.",
                [("max by (currency) (factura_overdue_invoices)", "{{currency}}")],
            ),
        ],
    )


def platform() -> Any:
    http = 'factura_http_requests_total{job=~"$job"}'
    return dashboard(
        "factura-platform",
        "Factura / Platform",
        "Every service: up, errors, restarts, dead letters, dependencies, HTTP rate/errors/duration, resources.",
        [
            stat(
                "Targets up", "Share of scraped service instances that answer.", 'avg(up{job=~"$job"})', "percentunit"
            ),
            stat(
                "Dead-lettered",
                "Messages sent to a DLQ in the time range: each needs a look (docs/operations.md, runbooks).",
                'sum(increase(factura_messages_dead_lettered_total{job=~"$job"}[$__range]))',
            ),
            stat(
                "Restarts",
                "Process restarts in the time range (a new process_start_time_seconds).",
                'sum(changes(process_start_time_seconds{job=~"$job"}[$__range]))',
            ),
            stat(
                "Dependencies down",
                "Dependency probes failing now (Kafka, MongoDB, S3, SMTP, providers).",
                'count(factura_dependency_up{job=~"$job"} == 0) or vector(0)',
            ),
            timeseries(
                "HTTP requests by service",
                "Rate of requests answered (probes and scrapes included).",
                [(f"sum by (job) (rate({http}[{RATE}]))", "{{job}}")],
                "reqps",
            ),
            timeseries(
                "HTTP 5xx ratio by service",
                "Share of requests answered with a server error.",
                [
                    (
                        f'(sum by (job) (rate(factura_http_requests_total{{job=~"$job", status=~"5.."}}[{RATE}]))'
                        f" or 0 * sum by (job) (rate({http}[{RATE}]))) / sum by (job) (rate({http}[{RATE}]))",
                        "{{job}}",
                    )
                ],
                "percentunit",
            ),
            timeseries(
                "HTTP latency p95 by service",
                "Time to answer, by service (route detail: factura_http_request_duration_seconds{route}).",
                [(_p95("factura_http_request_duration_seconds", "job", '{job=~"$job"}'), "{{job}}")],
                "s",
            ),
            timeseries(
                "Dead letters by topic and reason",
                "Arrivals on the DLQ topics.",
                [
                    (
                        f'sum by (topic, reason) (rate(factura_messages_dead_lettered_total{{job=~"$job"}}[{RATE}]))',
                        "{{topic}} {{reason}}",
                    )
                ],
                "ops",
            ),
            timeseries(
                "Handler failures by service",
                "Handler attempts that raised (each retry counts); sustained failures pause partitions.",
                [(f'sum by (job) (rate(factura_handler_failures_total{{job=~"$job"}}[{RATE}]))', "{{job}}")],
                "ops",
            ),
            timeseries(
                "Dependency up",
                "1 when every service using the dependency got an answer from it at its last readiness probe.",
                [('min by (dependency) (factura_dependency_up{job=~"$job"})', "{{dependency}}")],
            ),
            timeseries(
                "Restarts per service (10 min)",
                "In Kubernetes, kube_pod_container_status_restarts_total says the same per pod.",
                [('sum by (job) (changes(process_start_time_seconds{job=~"$job"}[10m]))', "{{job}}")],
            ),
            timeseries(
                "Resident memory by service",
                "RSS of each service's main process (the renderer's workers are separate processes).",
                [('sum by (job) (process_resident_memory_bytes{job=~"$job"})', "{{job}}")],
                "bytes",
            ),
            timeseries(
                "CPU by service",
                "CPU seconds per second of each service's main process.",
                [(f'sum by (job) (rate(process_cpu_seconds_total{{job=~"$job"}}[{RATE}]))', "{{job}}")],
            ),
            timeseries(
                "Audit chain",
                "Tenants whose chain failed the last verification (must stay 0), and verifications by outcome.",
                [
                    ("max(factura_audit_chain_broken)", "broken chains"),
                    (
                        f"sum by (outcome) (increase(factura_audit_chain_verifications_total[{RATE}]))",
                        "verifications {{outcome}}",
                    ),
                ],
            ),
        ],
    )


DASHBOARDS = {"pipeline": pipeline, "delivery": delivery, "collections": collections, "platform": platform}


def generate(out: Path = DASHBOARDS_DIR) -> list[Path]:
    """Write ``<name>.json`` per dashboard; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, build in DASHBOARDS.items():
        path = out / f"{name}.json"
        path.write_text(render_json(build()))
        paths.append(path)
    return paths


def render_json(board: Any) -> str:
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


# -- reading dashboards back ----------------------------------------------------------------------

#: Grafana's built-in variables, replaced by values a plain Prometheus query accepts.
_BUILTINS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf"}
    | {"nan", "atan2"}
)


def load(directory: Path = DASHBOARDS_DIR) -> dict[str, Any]:
    """Every ``*.json`` dashboard in ``directory`` by file stem."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def panels(board: Any) -> Iterator[Panel]:
    """Every panel, including those nested in collapsed rows."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries(directory: Path = DASHBOARDS_DIR) -> list[tuple[str, str]]:
    """(``"<dashboard> / <panel title> / <refId>"``, PromQL) for every target of every dashboard."""
    return [
        (f"{name} / {panel['title']} / {target['refId']}", target["expr"])
        for name, board in load(directory).items()
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]


def executable(expr: str, variables: dict[str, str] | None = None) -> str:
    """``expr`` with Grafana's variables replaced: built-ins by fixed durations, the rest (``$job``) by ``.*``."""
    for name, value in (_BUILTINS | (variables or {})).items():
        expr = expr.replace(name, value)
    return re.sub(r"\$\{?\w+(:\w+)?\}?", ".*", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, label names or keywords)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    bare = re.sub(r"\{[^}]*\}", "", bare)  # label matchers
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # ranges
    found = re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", bare)
    return {m[1] for m in found if not m[2] and m[1] not in _KEYWORDS}


if __name__ == "__main__":
    for written in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else DASHBOARDS_DIR):
        print(written)
