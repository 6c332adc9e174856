"""Debian's Prometheus scraping the six services of the session's stack, and the dashboards' queries.

A few invoices go through the stack first (an email, a bounce that falls back to SMS, a rejected
message, a paid one, an overdue one), so the business series exist; then every target must be up,
the key series of the metric catalogue must be there from the services that own them, and every
PromQL expression of every Grafana dashboard must run and name only metrics the stack exposes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from factura.devstack import prometheus
from factura.devstack.config import SERVICES
from factura.devstack.dashboards import executable, metric_names, panel_queries
from factura.devstack.flow import publish, wait_for_outcomes
from factura.devstack.prometheus import Client, PrometheusError
from factura.devstack.samples import Outcome, Sample, invoice_payload
from factura.devstack.stack import Stack
from tests.waiting import until_async

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not prometheus.available(), reason="Debian package prometheus is not installed"),
]

CONSUMERS = frozenset(SERVICES)
SENDERS = frozenset({"email-sender", "sms-sender"})
#: Key series of the metric catalogue (docs/operations.md) and the services that must expose them.
KEY_SERIES: dict[str, frozenset[str]] = {
    "process_start_time_seconds": frozenset(SERVICES),
    "factura_http_requests_total": frozenset(SERVICES),
    "factura_http_request_duration_seconds_bucket": frozenset(SERVICES),
    "factura_dependency_up": frozenset(SERVICES),
    "factura_consumer_lag_messages": CONSUMERS,
    "factura_messages_consumed_total": CONSUMERS,
    "factura_handler_duration_seconds_bucket": CONSUMERS,
    "factura_events_published_total": frozenset({"ingest", "renderer", "email-sender", "sms-sender", "scheduler"}),
    "factura_invoices_received_total": frozenset({"ingest"}),
    "factura_payments_received_total": frozenset({"ingest"}),
    "factura_ingest_rejected_total": frozenset({"ingest"}),
    "factura_render_seconds_bucket": frozenset({"renderer"}),
    "factura_invoices_rendered_total": frozenset({"renderer"}),
    "factura_deliveries_total": SENDERS,
    "factura_provider_send_seconds_bucket": SENDERS,
    "factura_delivery_fallbacks_total": frozenset({"email-sender"}),
    "factura_delivery_cost_total": SENDERS,
    "factura_reminders_published_total": frozenset({"scheduler"}),
    "factura_payments_applied_total": frozenset({"scheduler"}),
    "factura_overdue_amount": frozenset({"scheduler"}),
    "factura_overdue_invoices": frozenset({"scheduler"}),
    "factura_audit_records_total": frozenset({"audit"}),
}


def _samples() -> list[Sample]:
    """One invoice per path whose metrics the dashboards show, numbered uniquely for this run."""
    today = datetime.now(UTC).date()
    run = uuid.uuid4().hex[:8]

    def one(tenant: str, n: int, expected: Outcome, email: str | None, phone: str | None = "", **kw: Any) -> Sample:
        payload = invoice_payload(tenant, n, today, email=email, phone=phone, due_in=kw.pop("due_in", 30))
        payload["invoice_number"] = f"PROM-{run}-{n}"
        if "lines" in kw:
            payload["lines"] = kw.pop("lines")
        return Sample(tenant, payload["invoice_number"], payload, expected, **kw)

    payment = {
        "tenant_id": "sampa-logistica",
        "erp_source": "totvs",
        "payment_id": f"PIX-{run}",
        "invoice_number": f"PROM-{run}-5",
        "amount": "1.00",
        "currency": "BRL",
        "paid_at": datetime.now(UTC).isoformat(),
        "method": "pix",
    }
    return [
        one("harinas-sur", 1, "email", f"ana.{run}@cliente.test"),
        one("lisboa-tech", 2, "sms", f"x{run}@bounce.test"),  # 550 5.1.1, then SMS
        one("carpati-energie", 3, "rejected", f"f{run}@client.test", lines=[]),
        one("carpati-energie", 4, "email", f"ap{run}@client.test", due_in=-5, expect_reminder=True),
        one("sampa-logistica", 5, "email", f"fin{run}@client.test", payment=payment),
        one("acme-us", 6, "failed", None, phone="(312) 555-0199"),  # the SMS provider refuses the number
    ]


@pytest.fixture(scope="module")
async def prom(services: Stack) -> AsyncIterator[Client]:
    """Prometheus scraping the session's services, after some traffic went through them."""
    cfg = services.cfg
    samples = _samples()
    await publish(cfg, samples)
    seen = await wait_for_outcomes(cfg, samples, timeout_s=60)
    unsettled = [seen[s.invoice_number] for s in samples if not seen[s.invoice_number].settled(s)]
    assert not unsettled, unsettled
    async with httpx.AsyncClient() as http:  # one request each, so every service has RED series
        for name in SERVICES:
            (await http.get(cfg.service_url(name) + "/livez")).raise_for_status()
    base = prometheus.start(cfg)
    try:
        with Client(base) as client:
            yield client
    finally:
        prometheus.stop(cfg)


def _jobs_with(client: Client, metric: str) -> set[str]:
    return {s["job"] for s in client.series(metric)}


async def test_every_service_is_scraped_and_up(prom: Client) -> None:
    async def all_up() -> bool:
        targets = prom.targets()
        return {t["labels"]["job"] for t in targets} == set(SERVICES) and all(t["health"] == "up" for t in targets)

    await until_async(all_up, timeout_s=20, every_s=0.5)
    assert {r["metric"]["job"] for r in prom.query("up == 1")} == set(SERVICES)


async def test_key_series_exist_on_the_services_that_own_them(prom: Client) -> None:
    def missing() -> dict[str, list[str]]:
        return {
            metric: sorted(jobs - _jobs_with(prom, metric))
            for metric, jobs in KEY_SERIES.items()
            if not jobs <= _jobs_with(prom, metric)
        }

    async def complete() -> bool:
        return not missing()

    try:
        await until_async(complete, timeout_s=15, every_s=1)
    except AssertionError:
        pytest.fail(f"series missing (metric: jobs): {json.dumps(missing(), indent=1)}")


async def test_alert_rules_load(prom: Client) -> None:
    groups = prom.rule_groups()
    assert groups and all(g["rules"] for g in groups)


#: What the module's traffic must have counted (the stack is shared, so at least this much).
COUNTED = {
    'sum(factura_invoices_received_total{outcome="accepted"})': 5,  # the rejected one is refused by the renderer
    'sum(factura_payments_received_total{outcome="accepted"})': 1,
    "sum(factura_payments_applied_total)": 1,  # the payment may overtake its invoice: counted either way
    'sum(factura_invoices_rendered_total{outcome="rendered"})': 4,
    'sum(factura_deliveries_total{outcome="delivered"})': 4,
    "sum(factura_delivery_fallbacks_total)": 1,
    "sum(factura_render_seconds_count)": 4,
}


async def test_the_traffic_is_counted_by_the_business_metrics(prom: Client) -> None:
    def short() -> dict[str, float]:
        values = {expr: float(r[0]["value"][1]) if (r := prom.query(expr)) else 0.0 for expr in COUNTED}
        return {expr: v for expr, v in values.items() if v < COUNTED[expr]}

    async def counted() -> bool:
        return not short()

    try:
        await until_async(counted, timeout_s=15, every_s=1)
    except AssertionError:
        pytest.fail(f"counted less than the traffic: {short()}")


async def test_every_dashboard_query_runs_and_names_only_exposed_metrics(prom: Client) -> None:
    await until_async(lambda: _has_traffic(prom), timeout_s=15, every_s=1)
    exposed = set(prom.metric_names())
    invalid: dict[str, str] = {}
    unknown: dict[str, list[str]] = {}
    queries = panel_queries()
    assert queries
    for where, expr in queries:
        try:
            prom.query(executable(expr))
        except PrometheusError as e:
            invalid[where] = f"{expr}: {e}"
        if absent := sorted(metric_names(expr) - exposed):
            unknown[where] = absent
    assert not invalid, json.dumps(invalid, indent=1)
    assert not unknown, json.dumps(unknown, indent=1)


async def _has_traffic(prom: Client) -> bool:
    """The business counters have been scraped (the dashboards reference them)."""
    return bool(prom.query("factura_deliveries_total")) and bool(prom.query("factura_messages_consumed_total"))
