"""Drive sample traffic through a running stack and read back what happened, via the audit API.

Shared by ``make demo`` and the end-to-end tests, so both judge outcomes the same way.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from factura.common.kafka.producer import Publisher
from factura.common.settings import KafkaSettings
from factura.common.topics import ERP_INVOICES, ERP_PAYMENTS
from factura.devstack.config import StackConfig
from factura.devstack.samples import Outcome, Sample

_DELIVERY = frozenset({"delivery.succeeded", "delivery.failed", "delivery.exhausted"})


@dataclass(frozen=True)
class Observation:
    outcome: Outcome | None
    detail: str
    reminder: bool
    payment: bool
    types: tuple[str, ...]

    def settled(self, sample: Sample) -> bool:
        return (
            self.outcome is not None
            and (self.reminder or not sample.expect_reminder)
            and (self.payment or sample.payment is None)
        )

    def matches(self, sample: Sample) -> bool:
        return (
            self.outcome == sample.expected
            and self.reminder == sample.expect_reminder
            and self.payment == (sample.payment is not None)
        )


def _purpose(data: dict[str, Any]) -> str:
    notice = data.get("notice")
    return str(notice.get("purpose", "invoice")) if isinstance(notice, dict) else "invoice"


def observe(events: list[dict[str, Any]]) -> Observation:
    """Reduce one invoice's audit timeline to the delivery outcome of the invoice itself
    (reminders and receipts travel the same path; their outcomes are not the invoice's)."""
    types = tuple(e["type"] for e in events)
    outcome: Outcome | None = None
    detail = ""
    invoice = [e for e in events if e["type"] not in _DELIVERY or _purpose(e["data"]) == "invoice"]
    failures = [e["data"] for e in invoice if e["type"] == "delivery.failed"]
    for e in invoice:
        data = e["data"]
        if e["type"] == "invoice.rejected":
            outcome = "rejected"
            detail = "; ".join(f"{r['field']}: {r['message']}" for r in data["reasons"])
        elif e["type"] == "delivery.succeeded" and outcome is None:
            outcome = data["channel"]
            detail = f"{data['channel']} to {data['recipient']}"
            if failures:
                first = failures[0]
                detail += f" after {first['channel']} failed ({first['reason']}: {first['detail'][:60]})"
        elif e["type"] == "delivery.exhausted" and outcome is None:
            outcome = "failed"
            detail = " → ".join(f"{a['channel']}: {a['reason']} ({a['detail'][:50]})" for a in data["chain"])
    return Observation(outcome, detail, "reminder.due" in types, "payment.received" in types, types)


async def publish(cfg: StackConfig, samples: list[Sample]) -> None:
    publisher = Publisher(
        KafkaSettings(bootstrap_servers=cfg.kafka_bootstrap, topic_prefix=cfg.topic_prefix, idempotence=False),
        client_id="demo-erp",
    )
    await publisher.start()
    try:
        for s in samples:
            key = f"{s.tenant_id}/{s.invoice_number}".encode()
            headers = [("tenant_id", s.tenant_id.encode())]
            await publisher.send(ERP_INVOICES.physical(cfg.topic_prefix), s.message(), key=key, headers=headers)
            if s.payment is not None:
                payment = json.dumps(s.payment).encode()
                await publisher.send(ERP_PAYMENTS.physical(cfg.topic_prefix), payment, key=key, headers=headers)
    finally:
        await publisher.stop()


async def timeline(client: httpx.AsyncClient, cfg: StackConfig, sample: Sample) -> list[dict[str, Any]]:
    """Every entry of the sample invoice's timeline (in the order audit recorded them)."""
    return await invoice_timeline(client, cfg, sample.tenant_id, sample.invoice_number)


async def invoice_timeline(
    client: httpx.AsyncClient, cfg: StackConfig, tenant_id: str, invoice_id: str
) -> list[dict[str, Any]]:
    """Every entry of an invoice's timeline, page by page; none for an invoice audit never saw."""
    entries: list[dict[str, Any]] = []
    params = {"tenant_id": tenant_id, "limit": "1000"}
    while True:
        response = await client.get(
            f"{cfg.service_url('audit')}/v1/invoices/{quote(invoice_id, safe='')}/timeline",
            params=params,
            headers={"Authorization": f"Bearer {cfg.audit_api_key()}"},
        )
        if response.status_code == 404:
            return entries
        response.raise_for_status()
        page = response.json()
        entries += page["entries"]
        if not page.get("next_cursor"):
            return entries
        params["cursor"] = page["next_cursor"]


async def wait_for_outcomes(
    cfg: StackConfig, samples: list[Sample], timeout_s: float = 120.0
) -> dict[str, Observation]:
    """Poll the audit API until every sample settled (or the timeout); return what was seen."""
    seen: dict[str, Observation] = {}
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            pending = [s for s in samples if not (s.invoice_number in seen and seen[s.invoice_number].settled(s))]
            results = await asyncio.gather(*(timeline(client, cfg, s) for s in pending))
            for s, events in zip(pending, results, strict=True):
                seen[s.invoice_number] = observe(events)
            if all(seen[s.invoice_number].settled(s) for s in samples) or time.monotonic() > deadline:
                return seen
            await asyncio.sleep(0.5)
