"""End to end: the six services as processes, over the real broker, MongoDB-wire, S3, SMTP and SMS.

Each test publishes its own invoices (unique numbers) like an ERP would and judges the outcome
from the audit API, the Maildir and the SMS capture server.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import httpx
import pytest

from factura.common.kafka.producer import Publisher
from factura.common.topics import DELIVERY_SUCCEEDED, ERP_INVOICES, INVOICE_RENDERED
from factura.devstack.config import StackConfig
from factura.devstack.flow import Observation, publish, timeline, wait_for_outcomes
from factura.devstack.samples import Outcome, Sample, invoice_payload
from factura.devstack.smtp_capture import read_messages
from factura.devstack.stack import Stack
from tests.conftest import kafka_settings
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.e2e


def sample(expected: Outcome, *, email: str | None, phone: str | None = "", tenant: str = "harinas-sur") -> Sample:
    n = uuid.uuid4().int % 10**5
    payload = invoice_payload(tenant, n, datetime.now(UTC).date(), email=email, phone=phone)
    payload["invoice_number"] = f"E2E-{uuid.uuid4().hex[:10]}"
    return Sample(tenant, payload["invoice_number"], payload, expected)


async def flow(cfg: StackConfig, samples: list[Sample]) -> dict[str, Observation]:
    await publish(cfg, samples)
    seen = await wait_for_outcomes(cfg, samples, timeout_s=90)
    for s in samples:
        assert seen[s.invoice_number].matches(s), (s.invoice_number, s.expected, seen[s.invoice_number])
    return seen


def mails_to(cfg: StackConfig, address: str) -> list[EmailMessage]:
    return [m for m in read_messages(cfg.maildir) if address in str(m["To"])]


async def sms_to(cfg: StackConfig, number: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        messages: list[dict[str, Any]] = (await client.get(f"{cfg.sms_url}/_capture/messages")).json()
    return [m for m in messages if m.get("to") == number]


async def test_happy_path_email_with_pdf(services: Stack) -> None:
    cfg = services.cfg
    s = sample("email", email=f"ana.{uuid.uuid4().hex[:6]}@cliente.test")
    await flow(cfg, [s])
    [mail] = mails_to(cfg, s.payload["customer"]["email"])
    assert mail["Subject"].startswith(f"Factura {s.invoice_number}")
    [pdf] = list(mail.iter_attachments())
    assert pdf.get_content_type() == "application/pdf"
    assert pdf.get_content().startswith(b"%PDF-")
    async with httpx.AsyncClient() as client:
        events = await timeline(client, cfg, s)
    # each once; in the order audit stored them, which across topics is not the order they happened
    assert sorted(e["type"] for e in events) == ["delivery.succeeded", "invoice.created", "invoice.rendered"]
    assert len({e["correlation_id"] for e in events}) == 1


async def test_bounce_falls_back_to_sms(services: Stack) -> None:
    cfg = services.cfg
    s = sample("sms", email="nadie@bounce.test", phone="+34 699 111 222")
    seen = await flow(cfg, [s])
    assert "5.1.1" in seen[s.invoice_number].detail
    [sms] = await sms_to(cfg, "+34699111222")
    assert s.invoice_number in sms["body"] and "http" in sms["body"]
    assert mails_to(cfg, "nadie@bounce.test") == []


async def test_customer_without_email_gets_sms_with_a_tracked_link(services: Stack) -> None:
    cfg = services.cfg
    s = sample("sms", email=None, phone="+351 913 000 111", tenant="lisboa-tech")
    await flow(cfg, [s])
    [sms] = await sms_to(cfg, "+351913000111")
    assert sms["body"].startswith("Lisboa Tech: ")  # the tenant's configured name, not the ERP's seller_name
    link = sms["body"].rsplit(" ", 1)[-1]
    assert link.startswith(f"{cfg.service_url('renderer')}/l/")
    async with httpx.AsyncClient() as client:
        redirect = await client.get(link)
        assert redirect.status_code in (302, 307) and "/d/" in redirect.headers["location"]
        signed = redirect.headers["location"]
        document = await client.get(signed)
        assert document.status_code == 200 and document.content.startswith(b"%PDF-")
        tampered = await client.get(
            signed[:-2] + ("AA" if not signed.endswith("AA") else "BB"), headers={"Accept": "application/json"}
        )
        assert tampered.status_code == 403 and tampered.json() == {"detail": "link invalid or expired"}
        for _ in range(100):
            types = [e["type"] for e in await timeline(client, cfg, s)]
            if "document.downloaded" in types and "link.clicked" in types:
                break
            await asyncio.sleep(0.1)
    assert types.count("document.downloaded") == 1 and types.count("link.clicked") == 1  # lisboa-tech tracks clicks


async def test_invalid_erp_message_is_rejected_and_dead_lettered_while_valid_ones_flow(services: Stack) -> None:
    cfg = services.cfg
    good = sample("email", email=f"ok.{uuid.uuid4().hex[:6]}@cliente.test")
    bad = sample("rejected", email="bad@@cliente.test")
    bad.payload["due_date"] = "not-a-date"
    garbage = Sample("harinas-sur", "never-parsed", {}, "rejected", raw=b"\x00\x01 binary junk")
    await publish(cfg, [garbage])
    seen = await flow(cfg, [bad, good])
    reasons = seen[bad.invoice_number].detail
    assert "due_date" in reasons and "customer" in reasons
    dlq = await read_topic(cfg.kafka_bootstrap, ERP_INVOICES.dlq(cfg.topic_prefix), expect=50, timeout_s=3)
    dead = {r.value: dict(r.headers) for r in dlq}
    assert dead[b"\x00\x01 binary junk"]["dlq.reason"] == b"invalid"
    assert b"due_date" in dead[bad.message()]["dlq.error"]


async def test_redelivered_events_store_once_and_send_once(services: Stack) -> None:
    cfg = services.cfg
    s = sample("email", email=f"dup.{uuid.uuid4().hex[:6]}@cliente.test")
    await flow(cfg, [s])
    rendered = [
        r
        for r in await read_topic(
            cfg.kafka_bootstrap, INVOICE_RENDERED.physical(cfg.topic_prefix), expect=10**6, timeout_s=3
        )
        if json.loads(r.value)["invoice_id"] == s.invoice_number
    ]
    assert len(rendered) == 1
    # Redeliver: the very same rendered event, and the same ERP message again.
    publisher = Publisher(kafka_settings(cfg), client_id="redeliver")
    await publisher.start()
    try:
        await publisher.send(
            INVOICE_RENDERED.physical(cfg.topic_prefix), rendered[0].value, key=rendered[0].key, headers=[]
        )
    finally:
        await publisher.stop()
    await publish(cfg, [s])
    # Positive signal that both redeliveries went all the way: the email sender re-published its
    # recorded outcome for each (the original + 2), instead of mailing again.
    topic = DELIVERY_SUCCEEDED.physical(cfg.topic_prefix)
    outcomes: list[Any] = []
    for _ in range(120):
        records = await read_topic(cfg.kafka_bootstrap, topic, expect=10**6, timeout_s=0.5)
        outcomes = [r for r in records if json.loads(r.value)["invoice_id"] == s.invoice_number]
        if len(outcomes) >= 3:
            break
    assert len(outcomes) == 3 and len({json.loads(r.value)["event_id"] for r in outcomes}) == 1
    assert len(mails_to(cfg, s.payload["customer"]["email"])) == 1
    async with httpx.AsyncClient() as client:
        events = await timeline(client, cfg, s)
    # each once; in the order audit stored them, which across topics is not the order they happened
    assert sorted(e["type"] for e in events) == ["delivery.succeeded", "invoice.created", "invoice.rendered"]


async def restart_mid_stream(services: Stack, sig: signal.Signals) -> list[Sample]:
    """Publish a batch, stop the email sender with ``sig`` once the first mail is out, restart it.

    The batch is large enough that the renderer (the slowest stage) is still feeding the sender
    when the first mail arrives, and the test checks that the stop came mid-stream.
    """
    cfg = services.cfg
    batch = [sample("email", email=f"r{i}.{uuid.uuid4().hex[:6]}@cliente.test") for i in range(30)]
    await publish(cfg, batch)
    for _ in range(400):
        if sent := sum(1 for s in batch if mails_to(cfg, s.payload["customer"]["email"])):
            break
        await asyncio.sleep(0.05)
    services.stop_service("email-sender", sig)
    assert 0 < sent < len(batch), f"the sender must stop mid-stream: {sent} of {len(batch)} mails were out"
    services.start_service("email-sender")
    seen = await wait_for_outcomes(cfg, batch, timeout_s=90)
    async with httpx.AsyncClient() as client:
        for s in batch:
            assert seen[s.invoice_number].outcome == "email", (s.invoice_number, seen[s.invoice_number])
            types = [e["type"] for e in await timeline(client, cfg, s)]
            assert types.count("delivery.succeeded") == 1, s.invoice_number
    return batch


async def test_email_sender_graceful_restart_mid_stream_loses_and_repeats_nothing(services: Stack) -> None:
    batch = await restart_mid_stream(services, signal.SIGTERM)
    for s in batch:
        assert len(mails_to(services.cfg, s.payload["customer"]["email"])) == 1, s.invoice_number


async def test_email_sender_crash_mid_stream_loses_nothing(services: Stack) -> None:
    """SIGKILL: every invoice is delivered and recorded once; only a mail the SMTP server had
    accepted in the instant before the kill can go out twice (at-least-once: at most one per
    partition being handled at that moment)."""
    batch = await restart_mid_stream(services, signal.SIGKILL)
    counts = [len(mails_to(services.cfg, s.payload["customer"]["email"])) for s in batch]
    assert min(counts) == 1
    assert sum(counts) - len(batch) <= INVOICE_RENDERED.partitions


async def test_scheduler_reminds_overdue_unpaid_not_paid(services: Stack) -> None:
    cfg = services.cfg
    today = datetime.now(UTC).date()
    overdue = Sample(
        "carpati-energie",
        f"E2E-{uuid.uuid4().hex[:10]}",
        invoice_payload("carpati-energie", 7, today, email="late@client.test", due_in=-3),
        "email",
        expect_reminder=True,
    )
    overdue.payload["invoice_number"] = overdue.invoice_number
    paid_payload = invoice_payload("carpati-energie", 8, today, email="paid@client.test", due_in=-3)
    paid_payload["invoice_number"] = f"E2E-{uuid.uuid4().hex[:10]}"
    payment = {
        "tenant_id": "carpati-energie",
        "erp_source": "odoo",
        "payment_id": f"P-{uuid.uuid4().hex[:8]}",
        "invoice_number": paid_payload["invoice_number"],
        "amount": "100000.00",
        "currency": "RON",
        "paid_at": datetime.now(UTC).isoformat(),
    }
    paid = Sample("carpati-energie", paid_payload["invoice_number"], paid_payload, "email", payment=payment)
    await flow(cfg, [overdue, paid])
    await asyncio.sleep(3)  # several scheduler ticks
    async with httpx.AsyncClient() as client:
        late_types = [e["type"] for e in await timeline(client, cfg, overdue)]
        paid_types = [e["type"] for e in await timeline(client, cfg, paid)]
    assert late_types.count("reminder.due") == 1
    assert "reminder.due" not in paid_types and "payment.received" in paid_types


async def test_every_service_reports_health_and_metrics(services: Stack) -> None:
    async with httpx.AsyncClient() as client:
        for name in ("ingest", "renderer", "email-sender", "sms-sender", "scheduler", "audit"):
            live = await client.get(f"{services.cfg.service_url(name)}/livez")
            assert live.status_code == 200, (name, live.text)
            ready = await client.get(f"{services.cfg.service_url(name)}/readyz")
            assert ready.status_code == 200, (name, ready.text)
            assert ready.json()["status"] == "ready"
            assert ready.json()["checks"]["kafka"] == "ok"
            metrics = (await client.get(f"{services.cfg.service_url(name)}/metrics")).text
            assert "factura_messages_consumed_total" in metrics
            assert "factura_consumer_lag_messages" in metrics


async def test_audit_api_refuses_no_key_bad_tenant_and_unknown_invoice(services: Stack) -> None:
    base = services.cfg.service_url("audit")
    async with httpx.AsyncClient() as client:
        anonymous = await client.get(f"{base}/v1/invoices/X/timeline", params={"tenant_id": "harinas-sur"})
        assert anonymous.status_code == 401
        client.headers["Authorization"] = f"Bearer {services.cfg.audit_api_key()}"
        bad = await client.get(f"{base}/v1/invoices/X/timeline", params={"tenant_id": "Bad Tenant!"})
        assert bad.status_code == 422 and "tenant_id" in bad.text
        missing = await client.get(f"{base}/v1/invoices/nope/timeline", params={"tenant_id": "harinas-sur"})
        assert missing.status_code == 404
