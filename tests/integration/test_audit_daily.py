"""The process owner's daily summary on the real MongoDB-wire server, broker and SMTP capture server:
the figures of a known day computed from a chained audit trail, the report published once per
tenant and day however often (and by however many replicas) the task runs, and the email that
the real email sender makes of it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from factura.audit.chain import ChainWriter
from factura.audit.daily import DailyReports, daily_report, report_event_id
from factura.audit.records import from_event
from factura.audit.store import AuditDb
from factura.common.delivery.links import LinkMaker
from factura.common.delivery.sender import Sender
from factura.common.envelope import Envelope
from factura.common.events import DeliverySucceededV2, ReportDueV1, parse_event
from factura.common.kafka.consumer import Message
from factura.common.ledger import DeliveryLedger
from factura.common.links import LinkSigner
from factura.common.mongo import Document, create_client, database
from factura.common.schemas import EXAMPLES_DIR
from factura.common.settings import LinkSettings
from factura.common.shortlinks import ShortLinks
from factura.common.storage import DocumentStore
from factura.common.tenants import TenantDirectory
from factura.common.topics import REGISTRY
from factura.devstack.config import HOST, StackConfig
from factura.devstack.smtp_capture import read_messages
from factura.email_sender.handlers import PRODUCER, EmailChannel
from factura.email_sender.settings import SmtpSettings
from factura.email_sender.smtp import SmtpMailer
from tests.conftest import mongo_settings
from tests.kafka_helpers import Bus, isolated
from tests.pii_keys import suppression_store

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 20)  # Europe/Bucharest, UTC+2: [2026-11-19T22:00Z, 2026-11-20T22:00Z)
START = datetime(2026, 11, 19, 22, tzinfo=UTC)
OWNER = "proces@furnizor.ro"
LINKS = LinkSettings(secret=SecretStr("test-link-secret"))


@pytest.fixture
async def audit(cfg: StackConfig) -> AsyncIterator[tuple[AuditDb, AsyncCollection[Document]]]:
    settings = mongo_settings(cfg)
    client = create_client(settings)
    prefix = f"audit_{uuid.uuid4().hex[:6]}_"
    db = database(client, settings)
    store = AuditDb.of(db, prefix=prefix)
    await store.ensure_indexes()
    yield store, db[f"{prefix}daily_reports"]
    await client.close()


@pytest.fixture
def tenants(tmp_path: Path) -> tuple[str, TenantDirectory]:
    tenant = f"ro-{uuid.uuid4().hex[:6]}"
    folder = tmp_path / tenant
    folder.mkdir()
    (folder / "tenant.toml").write_text(
        f"""
[branding]
display_name = "Furnizor SRL"

[seller]
legal_name = "Furnizor SRL"
vat_id = "RO12345678"
street = "Str. Lunga 1"
city = "Brasov"
postcode = "500001"
country = "RO"

[reminders]
timezone = "Europe/Bucharest"

[audit]
owner_email = "{OWNER}"
daily_report_hour = 7
""",
        encoding="utf-8",
    )
    return tenant, TenantDirectory(tmp_path)


@pytest.fixture
async def bus(cfg: StackConfig) -> AsyncIterator[Bus]:
    async with isolated(cfg, client_id="test-audit-daily") as topics:
        yield topics


def event(
    stem: str, tenant: str, invoice: str, at: datetime, change: Callable[[dict[str, Any]], None] = lambda d: None
) -> Envelope[Any]:
    """An example event of ``stem`` made this tenant's and invoice's, at ``at``, its data changed."""
    doc = json.loads((EXAMPLES_DIR / f"{stem}.json").read_text(encoding="utf-8"))
    doc |= {"event_id": str(uuid.uuid4()), "tenant_id": tenant, "invoice_id": invoice, "occurred_at": at.isoformat()}
    change(doc["data"])
    return parse_event(json.dumps(doc))


def message(value: Envelope[Any], offset: int = 1) -> Message[Envelope[Any]]:
    raw = value.model_dump_json().encode()
    return Message(REGISTRY[value.type], 0, offset, value.partition_key, {}, raw, value)


def created(total: str, currency: str = "RON") -> Callable[[dict[str, Any]], None]:
    return lambda d: d.update(total=total, currency=currency)


def paid(amount: str, currency: str = "RON") -> Callable[[dict[str, Any]], None]:
    return lambda d: d.update(amount=amount, currency=currency)


def purpose(value: str, channel: str = "email") -> Callable[[dict[str, Any]], None]:
    def change(d: dict[str, Any]) -> None:
        d["notice"]["purpose"] = value
        d["channel"] = channel

    return change


def failed(reason: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.update(reason=reason)


def known_day(tenant: str) -> list[Envelope[Any]]:
    """A day with every kind of figure, and records just outside it that must not count."""
    h = timedelta(hours=1)
    return [
        # invoices and their balances at the end of DAY
        event("invoice.created.v1", tenant, "INV-1", START - 5 * 24 * h, created("100.00")),  # 40 paid: 60 left
        event("invoice.created.v1", tenant, "INV-2", START - 3 * 24 * h, created("50.00")),  # paid in full
        event("invoice.created.v1", tenant, "INV-3", START + h / 2, created("200.00")),  # local 00:30: counts
        event("invoice.created.v1", tenant, "INV-4", START - 2 * 24 * h, created("70.00")),  # cancelled
        event("invoice.cancelled.v1", tenant, "INV-4", START - 24 * h),
        event("invoice.created.v1", tenant, "INV-5", START + 25 * h, created("30.00")),  # after the day
        event("invoice.created.v1", tenant, "INV-6", START - 400 * 24 * h, created("10.00")),  # before the window
        event("invoice.created.v1", tenant, "INV-7", START - 24 * h, created("80.00", "EUR")),  # paid in RON: owed
        # payments
        event("payment.received.v1", tenant, "INV-1", START + 9 * h, paid("40.00")),
        event("payment.received.v1", tenant, "INV-2", START + 10 * h, paid("50.00")),
        event("payment.received.v1", tenant, "INV-7", START + 11 * h, paid("80.00")),
        event("payment.received.v1", tenant, "INV-1", START + 24 * h, paid("10.00")),  # next day
        # deliveries
        event("delivery.succeeded.v2", tenant, "INV-3", START + h / 2, purpose("invoice")),
        event("delivery.succeeded.v2", tenant, "INV-1", START + 8 * h, purpose("reminder:after-3", "sms")),
        event("delivery.failed.v2", tenant, "INV-1", START + 7 * h, failed("hard_bounce")),
        event("delivery.failed.v2", tenant, "INV-7", START + 12 * h, failed("no_address")),
        event("delivery.exhausted.v1", tenant, "INV-7", START + 12 * h),
        event("reminder.due.v2", tenant, "INV-1", START + 7 * h),
        event("delivery.succeeded.v2", tenant, "INV-9", START + 5 * h, purpose("report")),  # the summary itself
        event("delivery.failed.v2", tenant, "INV-1", START - timedelta(minutes=1), failed("soft_bounce")),  # day before
    ]


async def test_the_figures_of_a_known_day(audit: tuple[AuditDb, Any], tenants: tuple[str, TenantDirectory]) -> None:
    (db, _), (tenant, directory) = audit, tenants
    writer = ChainWriter(db.records, db.tombstones)
    stored = await writer.append([from_event(message(e, i)) for i, e in enumerate(known_day(tenant))])
    assert stored.stored == 20

    report = await daily_report(db.records, directory.get(tenant), DAY)

    assert (report.start, report.end) == (START, START + timedelta(hours=24))
    assert (report.sent, report.delivered, report.failed, report.exhausted) == (4, 2, 2, 1)
    assert report.failed_by_reason == {"hard_bounce": 1, "no_address": 1}
    assert {c: (f.delivered, f.failed) for c, f in report.by_channel.items()} == {"email": (1, 2), "sms": (1, 0)}
    assert report.by_purpose == {"invoice": 1, "reminder": 1}
    assert (report.reminders_due, report.reminders_delivered) == (1, 1)
    assert report.payments == 3
    assert [(a.currency, str(a.amount)) for a in report.paid] == [("RON", "170.00")]
    assert report.unpaid == 3
    assert [(a.currency, str(a.amount)) for a in report.unpaid_amount] == [("EUR", "80.00"), ("RON", "260.00")]
    assert report.unpaid_complete

    bounded = await daily_report(db.records, directory.get(tenant), DAY, max_scan=3)
    assert not bounded.unpaid_complete


async def test_published_once_per_tenant_and_day_and_mailed_to_the_owner(
    cfg: StackConfig,
    audit: tuple[AuditDb, AsyncCollection[Document]],
    tenants: tuple[str, TenantDirectory],
    bus: Bus,
    store: DocumentStore,
) -> None:
    (db, runs), (tenant, directory) = audit, tenants
    await ChainWriter(db.records, db.tombstones).append(
        [from_event(message(e, i)) for i, e in enumerate(known_day(tenant))]
    )
    at_seven = datetime(2026, 11, 21, 5, 0, 30, tzinfo=UTC)  # 07:00:30 in Bucharest
    before_seven = at_seven - timedelta(minutes=1)

    def task(now: datetime) -> DailyReports:
        return DailyReports(db.records, runs, directory, bus.publisher, now=lambda: now)

    assert await task(before_seven).publish_due() == 0
    # Two replicas at the report hour, then a restarted one: one publication between them.
    first, second = await asyncio.gather(task(at_seven).publish_due(), task(at_seven).publish_due())
    again = await task(at_seven + timedelta(hours=3)).publish_due()
    assert (sorted([first, second]), again) == ([0, 1], 0)

    [published] = await bus.events("report.due")
    assert str(published.event_id) == report_event_id(tenant, DAY)
    assert isinstance(published.data, ReportDueV1)
    assert (published.data.owner_email, published.data.locale) == (OWNER, "ro")
    assert published.data.report.unpaid == 3

    # The email sender as its bootstrap wires it, handed the event twice (a redelivery).
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_settings(cfg).url, tz_aware=True)
    mongo = client[mongo_settings(cfg).database]
    suffix = uuid.uuid4().hex[:8]
    try:
        smtp = SmtpSettings(host=HOST, port=cfg.smtp_port, timeout_s=5, local_hostname="test")
        links = LinkMaker(
            LinkSigner.from_settings(LINKS),
            ShortLinks(mongo[f"short_links_{suffix}"], b"test-link-secret"),
            base_url=LINKS.base_url,
            ttl_s=LINKS.ttl_s,
        )
        channel = EmailChannel(
            store=store, mailer=SmtpMailer(smtp), links=links, default_sender=("Factura", "reports@factura.example")
        )
        for _ in range(2):
            sender = Sender(
                producer=PRODUCER,
                adapters=[channel],
                ledger=DeliveryLedger(mongo[f"deliveries_{suffix}"]),
                publisher=bus.publisher,
                tenants=directory,
                suppressions=suppression_store(mongo[f"suppressions_{suffix}"]),
            )
            await sender.handle(message(published))
    finally:
        await client.close()

    mid = f"<{published.event_id}.email@factura.example>"
    [mail] = [m for m in read_messages(cfg.maildir) if m["Message-ID"] == mid]
    assert mail["To"] == OWNER
    assert mail["Subject"] == "Furnizor SRL: raportul zilei 20 nov. 2026"
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None and html is not None
    body = text.get_content().replace("\xa0", " ")  # Babel writes a no-break space before the currency
    assert "De încasat: 80,00 EUR, 260,00 RON" in body
    assert "Facturi neachitate: 3" in body
    assert "hard_bounce: 1" in body
    assert "Furnizor SRL" in html.get_content()
    # The redelivery re-published the recorded outcome (the same event, which audit stores once).
    outcomes = {e.event_id: e for e in await bus.events("delivery.succeeded") if e.causation_id == published.event_id}
    [outcome] = outcomes.values()
    assert isinstance(outcome.data, DeliverySucceededV2)
    assert (outcome.data.notice.purpose, outcome.data.recipient) == ("report", OWNER)
