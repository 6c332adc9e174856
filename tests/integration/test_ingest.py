"""Ingest on the real broker: poison ERP messages become ``invoice.rejected`` and the loop goes on.

Before, 100 000 ``[`` crash-looped the service (``RecursionError`` escaped the decoder), invalid
UTF-8 went to the DLQ with no rejection on record, and a ``tax_rate`` of 19.125 (accepted by the
contract, refused by the domain model) was retried as a bug and then dead-lettered unrecorded. A
CR/LF in a customer name passed ingest and failed only in the email sender's headers.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest

from factura.common.events import parse_event
from factura.common.kafka.consumer import ConsumerLoop
from factura.common.kafka.producer import Headers, Publisher
from factura.common.schemas import EXAMPLES_DIR
from factura.common.settings import KafkaSettings
from factura.devstack.config import StackConfig
from factura.ingest.bootstrap import bootstrap
from factura.ingest.settings import Settings
from tests.conftest import mongo_settings
from tests.kafka_helpers import isolated, read_topic

pytestmark = pytest.mark.integration
EXAMPLE: dict[str, Any] = json.loads((EXAMPLES_DIR / "erp.invoice.v1.json").read_text(encoding="utf-8"))


def invoice(number: str, customer_name: str | None = None, **line_changes: Any) -> bytes:
    payload = json.loads(json.dumps(EXAMPLE)) | {"invoice_number": number}
    payload["lines"][0].update(line_changes)
    if line_changes:
        payload.pop("total")
    if customer_name is not None:
        payload["customer"]["name"] = customer_name
    return json.dumps(payload).encode()


@asynccontextmanager
async def ingest_running(
    cfg: StackConfig, *, allow_test_email_domains: bool = False
) -> AsyncIterator[tuple[KafkaSettings, Publisher]]:
    """Ingest's own wiring (``bootstrap``) on a ConsumerLoop, with topics of its own."""
    async with isolated(cfg, client_id="test-ingest") as (settings, publisher), AsyncExitStack() as stack:
        service = Settings(kafka=settings, mongo=mongo_settings(cfg), allow_test_email_domains=allow_test_email_domains)
        wiring = await bootstrap(service, publisher, stack)
        loop = ConsumerLoop(
            settings=settings, group_id="ingest", routes=wiring.routes, publisher=publisher, service="ingest"
        )
        task = asyncio.create_task(loop.run())
        try:
            yield settings, publisher
        finally:
            loop.stop()
            await asyncio.wait_for(task, 30)


async def test_poison_erp_messages_are_rejected_on_record_and_the_loop_goes_on(cfg: StackConfig) -> None:
    poison = {
        "nested": b"[" * 100_000,
        "not-utf8": b'{"tenant_id": "harinas-sur", "invoice_number": "F-\xff"}',
        "tax-rate": invoice("F-2026-TAX", tax_rate=19.125),
        "crlf-name": invoice("F-2026-CRLF", customer_name="Lucía\r\nBcc: everyone@example.com"),
    }
    async with ingest_running(cfg) as (settings, publisher):
        topic = f"{settings.topic_prefix}erp.invoices"
        key = b"harinas-sur/F-2026"  # one partition: the good invoice is read after the poison
        for raw in poison.values():
            await publisher.send(topic, raw, key=key, headers=[])
        long_header: Headers = [("correlation_id", b"c" * 201)]
        await publisher.send(topic, invoice("F-2026-GOOD"), key=key, headers=long_header)

        created = await read_topic(cfg.kafka_bootstrap, f"{settings.topic_prefix}invoice.created", expect=1)
        rejected = await read_topic(cfg.kafka_bootstrap, f"{settings.topic_prefix}invoice.rejected", expect=4)
        dlq = await read_topic(cfg.kafka_bootstrap, f"{topic}.dlq", expect=4)

    # Rejections are keyed by tenant and invoice, so they may sit in different partitions: order
    # them by the offset of the message each one rejects.
    events = sorted(
        (parse_event(r.value or b"") for r in rejected), key=lambda e: int(e.data.source_offset.split("/")[-1])
    )
    reasons = [[(r.field, r.message) for r in e.data.reasons] for e in events]
    assert [[field for field, _ in r] for r in reasons] == [["$"], ["$"], ["lines.0.tax_rate"], ["customer.name"]]
    assert "nested deeper than" in reasons[0][0][1]
    assert "not valid UTF-8" in reasons[1][0][1]
    assert [e.tenant_id for e in events] == ["unknown", "unknown", "harinas-sur", "harinas-sur"]
    assert [e.invoice_id for e in events] == [None, None, "F-2026-TAX", "F-2026-CRLF"]

    assert sorted(r.value or b"" for r in dlq) == sorted(poison.values())
    assert all(dict(r.headers)["dlq.reason"] == b"invalid" for r in dlq)

    [good] = [parse_event(r.value or b"") for r in created]
    assert good.invoice_id == "F-2026-GOOD"
    assert good.correlation_id == str(good.event_id)  # the 201-character header was ignored


async def test_cancellations_become_invoice_cancelled_and_bad_ones_are_rejected(cfg: StackConfig) -> None:
    credit_note = (EXAMPLES_DIR / "erp.cancellation.v1.json").read_bytes()
    partial = json.loads(credit_note) | {"credited_amount": "50.00", "cancelled_at": "2026-11-05T10:12:00"}
    bad = json.dumps(partial).encode()
    async with ingest_running(cfg) as (settings, publisher):
        topic = f"{settings.topic_prefix}erp.cancellations"
        key = b"harinas-sur/F-2026-000123"
        await publisher.send(topic, bad, key=key, headers=[])
        await publisher.send(topic, credit_note, key=key, headers=[("correlation_id", b"sap-RV-4711")])
        await publisher.send(topic, credit_note, key=key, headers=[])  # the ERP sends it again

        cancelled = await read_topic(cfg.kafka_bootstrap, f"{settings.topic_prefix}invoice.cancelled", expect=2)
        rejected = await read_topic(cfg.kafka_bootstrap, f"{settings.topic_prefix}invoice.rejected", expect=1)
        dlq = await read_topic(cfg.kafka_bootstrap, f"{topic}.dlq", expect=1)

    assert len(cancelled) == 2
    first, again = (parse_event(r.value or b"") for r in cancelled)
    assert first.event_id == again.event_id  # audit keeps one
    assert {r.key for r in cancelled} == {b"harinas-sur/F-2026-000123"}
    assert first.invoice_id == "F-2026-000123" and first.correlation_id == "sap-RV-4711"
    assert (first.data.kind, first.data.credit_note_number) == ("credit_note", "R-2026-000017")

    [refusal] = [parse_event(r.value or b"") for r in rejected]
    assert {r.field for r in refusal.data.reasons} == {"credited_amount", "cancelled_at"}
    assert (refusal.tenant_id, refusal.invoice_id) == ("harinas-sur", "F-2026-000123")
    assert refusal.data.source_topic == "erp.cancellations"
    [dead] = dlq
    assert dead.value == bad and dict(dead.headers)["dlq.reason"] == b"invalid"


async def test_one_content_per_invoice_number_across_a_restart(cfg: StackConfig) -> None:
    """The numbers ingest accepted live in MongoDB, so the rule holds for a restarted ingest (here on
    topics of its own): the same invoice re-serialised is a duplicate, other content a conflict
    rejected on record and dead-lettered, and an explicit amendment a new version."""
    name = f"F-{uuid.uuid4().hex[:10]}"
    first = json.loads(invoice(name))
    key = f"harinas-sur/{name}".encode()
    async with ingest_running(cfg) as (settings, publisher):
        await publisher.send(f"{settings.topic_prefix}erp.invoices", json.dumps(first).encode(), key=key, headers=[])
        [original] = await read_topic(cfg.kafka_bootstrap, f"{settings.topic_prefix}invoice.created", expect=1)

    reordered = json.dumps(dict(reversed(list(first.items())))).encode()
    other = json.dumps(first | {"due_date": "2026-12-31"}).encode()
    amended = json.dumps(first | {"due_date": "2026-12-31", "amendment": True}).encode()
    async with ingest_running(cfg) as (settings, publisher):
        topic = f"{settings.topic_prefix}erp.invoices"
        for raw in (reordered, other, amended):
            await publisher.send(topic, raw, key=key, headers=[])
        created = await read_topic(cfg.kafka_bootstrap, f"{settings.topic_prefix}invoice.created", expect=2)
        rejected = await read_topic(cfg.kafka_bootstrap, f"{settings.topic_prefix}invoice.rejected", expect=1)
        dlq = await read_topic(cfg.kafka_bootstrap, f"{topic}.dlq", expect=1)

    again, amendment = (parse_event(r.value or b"") for r in created)
    assert again.event_id == parse_event(original.value or b"").event_id  # a duplicate: consumers keep one
    assert amendment.event_id != again.event_id and str(amendment.data.due_date) == "2026-12-31"
    [conflict] = [parse_event(r.value or b"") for r in rejected]
    assert (conflict.schema_version, conflict.data.reason, conflict.invoice_id) == (2, "conflict", name)
    assert [r.field for r in conflict.data.reasons] == ["invoice_number"]
    [dead] = dlq
    assert dead.value == other and dict(dead.headers)["dlq.reason"] == b"invalid"
