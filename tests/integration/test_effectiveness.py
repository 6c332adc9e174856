"""The most effective channel on the real MongoDB-wire server and broker: the store, the scheduler
crediting from real events, and ingest recording the learnt channel in ``invoice.created``."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from factura.common.delivery.effectiveness import ChannelEffectiveness
from factura.common.envelope import Envelope, make_event
from factura.common.events import (
    CURRENT_VERSION,
    Channel,
    DeliverySucceededV2,
    InvoiceCreatedV1,
    Notice,
    PaymentReceivedV1,
    parse_event,
    summary_of,
)
from factura.common.mongo import create_client, database
from factura.common.schemas import EXAMPLES_DIR
from factura.common.tenants import TenantDirectory
from factura.devstack.config import StackConfig
from factura.ingest.handlers import IngestHandlers
from factura.scheduler.handlers import SchedulerHandlers
from tests.conftest import mongo_settings
from tests.integration.test_scheduler import environment, message
from tests.kafka_helpers import isolated
from tests.unit.test_ingest_handlers import erp_message
from tests.unit.test_scheduler import invoice_created, payment_received

pytestmark = pytest.mark.integration
T0 = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
CUSTOMER = "C-1042"  # the customer of the examples
ERP_EXAMPLE: dict[str, Any] = json.loads((EXAMPLES_DIR / "erp.invoice.v1.json").read_text(encoding="utf-8"))
ORDER: list[Channel] = ["email", "sms", "voice", "push"]


@asynccontextmanager
async def own_store(cfg: StackConfig) -> AsyncIterator[ChannelEffectiveness]:
    """A store on collections of this test alone."""
    mongo = mongo_settings(cfg)
    client = create_client(mongo)
    db = database(client, mongo)
    suffix = uuid.uuid4().hex[:6]
    store = ChannelEffectiveness(db[f"channel_deliveries_{suffix}"], db[f"channel_credits_{suffix}"])
    await store.ensure_indexes()
    try:
        yield store
    finally:
        await client.close()


def created(number: str, tenant: str = "harinas-sur", customer: str = CUSTOMER) -> Envelope[InvoiceCreatedV1]:
    event = invoice_created(number, tenant=tenant)
    data = event.data.model_copy(update={"customer": event.data.customer.model_copy(update={"customer_id": customer})})
    return event.model_copy(update={"data": data})


def delivered(
    invoice: Envelope[InvoiceCreatedV1], channel: Channel, at: datetime, purpose: str = "invoice"
) -> Envelope[DeliverySucceededV2]:
    event = make_event(
        event_id=uuid.uuid4(),
        type="delivery.succeeded",
        schema_version=CURRENT_VERSION["delivery.succeeded"],
        data=DeliverySucceededV2(
            channel=channel,
            recipient="someone",
            provider_message_id=uuid.uuid4().hex,
            notice=Notice(purpose=purpose, invoice=summary_of(invoice.data)),
        ),
        tenant_id=invoice.tenant_id,
        invoice_id=invoice.invoice_id,
        correlation_id=invoice.correlation_id,
        causation_id=invoice.event_id,
        producer=f"{channel}-sender",
    )
    return event.model_copy(update={"occurred_at": at})


def paid(invoice_id: str, amount: str, at: datetime, tenant: str = "harinas-sur") -> Envelope[PaymentReceivedV1]:
    event = payment_received(invoice_id, amount, tenant=tenant)
    return event.model_copy(update={"data": event.data.model_copy(update={"paid_at": at})})


async def credit(
    store: ChannelEffectiveness, channel: Channel, paid_at: datetime, *, tenant: str = "harinas-sur"
) -> Channel | None:
    """One invoice of CUSTOMER delivered on ``channel`` a day before it was paid in full."""
    invoice = created(f"F-{uuid.uuid4().hex[:8]}", tenant)
    await store.record_delivery(delivered(invoice, channel, paid_at - timedelta(days=1)))
    return await store.credit_payment(tenant, invoice.data.invoice_number, CUSTOMER, paid_at, 14)


async def credits(store: ChannelEffectiveness) -> list[dict[str, Any]]:
    return [doc async for doc in store._credits.find({})]


# --- the store -------------------------------------------------------------------------------------


async def test_a_paid_invoice_credits_its_last_delivery_before_the_payment_once(cfg: StackConfig) -> None:
    async with own_store(cfg) as store:
        invoice = created("F-1")
        pay_at = T0 + timedelta(days=10)
        await store.record_delivery(delivered(invoice, "email", T0))
        reminder = delivered(invoice, "sms", pay_at - timedelta(hours=3), purpose="reminder:after-3")
        await store.record_delivery(reminder)
        await store.record_delivery(reminder)  # redelivered
        await store.record_delivery(delivered(invoice, "push", pay_at + timedelta(hours=1)))  # after the payment

        assert await store.credit_payment("harinas-sur", "F-1", CUSTOMER, pay_at, 14) == "sms"
        # A redelivered payment, or a later payment of the same invoice: the first credit stands.
        assert await store.credit_payment("harinas-sur", "F-1", CUSTOMER, pay_at + timedelta(days=2), 14) == "sms"
        [doc] = await credits(store)
        assert doc["from_event"] == str(reminder.event_id)
        assert (
            await store.best_channel(
                "harinas-sur", CUSTOMER, before=pay_at + timedelta(days=1), order=ORDER, min_payments=1
            )
            == "sms"
        )


async def test_a_delivery_outside_the_window_is_not_credited(cfg: StackConfig) -> None:
    async with own_store(cfg) as store:
        pay_at = T0 + timedelta(days=20)
        for number, window in (("F-14", 14), ("F-16", 16)):
            invoice = created(number)
            await store.record_delivery(delivered(invoice, "email", pay_at - timedelta(days=15)))
            got = await store.credit_payment("harinas-sur", number, CUSTOMER, pay_at, window)
            assert got == (None if window == 14 else "email")


async def test_a_delivery_recorded_after_the_payment_still_gets_the_credit(cfg: StackConfig) -> None:
    """Deliveries and payments come on different topics: either may be handled first."""
    async with own_store(cfg) as store:
        invoice = created("F-1")
        pay_at = T0 + timedelta(days=5)
        assert await store.credit_payment("harinas-sur", "F-1", CUSTOMER, pay_at, 14) is None
        await store.record_delivery(delivered(invoice, "voice", pay_at - timedelta(days=2)))
        assert await store.credit_payment("harinas-sur", "F-1", CUSTOMER, pay_at, 14) == "voice"
        await store.record_delivery(delivered(invoice, "sms", pay_at - timedelta(days=1)))  # later: takes it
        await store.record_delivery(delivered(invoice, "email", pay_at - timedelta(days=3)))  # earlier: does not
        await store.record_delivery(delivered(invoice, "push", pay_at + timedelta(days=1)))  # after the payment
        await store.record_delivery(delivered(invoice, "push", pay_at - timedelta(days=15)))  # outside the window
        [doc] = await credits(store)
        assert doc["channel"] == "sms"


async def test_only_payments_before_the_cutoff_count(cfg: StackConfig) -> None:
    async with own_store(cfg) as store:
        cutoff = T0 + timedelta(days=30)
        for days in (1, 2):
            await credit(store, "sms", cutoff - timedelta(days=days))
        for days in (0, 1, 2):  # at or after the cutoff: a newer invoice's own history, not this one's
            await credit(store, "email", cutoff + timedelta(days=days))
        assert await store.best_channel("harinas-sur", CUSTOMER, before=cutoff, order=ORDER, min_payments=2) == "sms"
        later = cutoff + timedelta(days=5)
        assert await store.best_channel("harinas-sur", CUSTOMER, before=later, order=ORDER, min_payments=2) == "email"


async def test_ties_go_to_the_tenant_order_and_min_payments_is_enforced(cfg: StackConfig) -> None:
    async with own_store(cfg) as store:
        for channel in ("email", "sms", "sms", "email"):
            await credit(store, channel, T0)
        before = T0 + timedelta(days=1)
        ask = store.best_channel
        assert await ask("harinas-sur", CUSTOMER, before=before, order=["sms", "email"], min_payments=4) == "sms"
        assert await ask("harinas-sur", CUSTOMER, before=before, order=["email", "sms"], min_payments=4) == "email"
        assert await ask("harinas-sur", CUSTOMER, before=before, order=["email", "sms"], min_payments=5) is None
        assert await ask("harinas-sur", "C-OTHER", before=before, order=ORDER, min_payments=1) is None
        assert await ask("other-tenant", CUSTOMER, before=before, order=ORDER, min_payments=1) is None


# --- the scheduler: real events in, credits out ----------------------------------------------------


def tenants_dir(root: Path) -> TenantDirectory:
    """``learning``: the mode on (3-day window, 2 payments); ``harinas-sur``: defaults, mode off."""
    (root / "learning").mkdir()
    (root / "learning" / "tenant.toml").write_text(
        '[delivery]\nchannels = ["email", "sms"]\n[delivery.most_effective]\nwindow_days = 3\nmin_payments = 2\n',
        encoding="utf-8",
    )
    return TenantDirectory(root)


async def test_the_scheduler_credits_the_channel_when_the_invoice_is_paid_in_full(
    cfg: StackConfig, tmp_path: Path
) -> None:
    async with environment(cfg) as env:
        handlers = SchedulerHandlers(
            env.publisher,
            env.schedules,
            env.lease("a", 30),
            effectiveness=env.effectiveness,
            tenants=tenants_dir(tmp_path),
        )
        pay_at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)

        # harinas-sur (mode off): still learnt, with the default 14-day window.
        invoice = created("F-1")
        await handlers.on_invoice_created(message(invoice))
        await handlers.on_delivery_succeeded(message(delivered(invoice, "email", pay_at - timedelta(days=10))))
        await handlers.on_delivery_succeeded(
            message(parse_event((EXAMPLES_DIR / "delivery.succeeded.v1.json").read_bytes()))
        )
        await handlers.on_payment_received(message(paid("F-1", "60.00", pay_at - timedelta(days=1))))
        assert await credits(env.effectiveness) == []  # partly paid: nothing credited
        second = paid("F-1", "40.00", pay_at)
        await handlers.on_payment_received(message(second))
        await handlers.on_payment_received(message(second))  # redelivered
        [doc] = await credits(env.effectiveness)
        assert (doc["_id"], doc["channel"], doc["customer_id"]) == ("harinas-sur/F-1", "email", CUSTOMER)

        # A payment before its invoice: credited when the invoice arrives.
        early = created("F-2")
        await handlers.on_delivery_succeeded(message(delivered(early, "sms", pay_at - timedelta(days=1))))
        await handlers.on_payment_received(message(paid("F-2", "100.00", pay_at)))
        assert len(await credits(env.effectiveness)) == 1
        await handlers.on_invoice_created(message(early))
        by_id = {d["_id"]: d["channel"] for d in await credits(env.effectiveness)}
        assert by_id["harinas-sur/F-2"] == "sms"

        # learning: the tenant's own 3-day window.
        for number, days, expected in (("L-1", 2, "sms"), ("L-2", 4, None)):
            invoice = created(number, "learning")
            await handlers.on_invoice_created(message(invoice))
            await handlers.on_delivery_succeeded(message(delivered(invoice, "sms", pay_at - timedelta(days=days))))
            await handlers.on_payment_received(message(paid(number, "100.00", pay_at, "learning")))
            by_id = {d["_id"]: d["channel"] for d in await credits(env.effectiveness)}
            assert by_id[f"learning/{number}"] == expected


# --- ingest: the learnt channel travels in invoice.created -----------------------------------------


async def test_ingest_records_the_learnt_channel_only_where_the_tenant_asks(cfg: StackConfig, tmp_path: Path) -> None:
    issued = datetime(2026, 11, 2, tzinfo=UTC)  # the ERP example's issue date
    async with own_store(cfg) as store, isolated(cfg, client_id="test-effectiveness") as bus:
        for tenant in ("learning", "harinas-sur"):
            for days in (3, 10):
                await credit(store, "sms", issued - timedelta(days=days), tenant=tenant)
            for days in (0, 1, 2):  # paid on or after the issue date: not known when the invoice was issued
                await credit(store, "email", issued + timedelta(days=days), tenant=tenant)

        handlers = IngestHandlers(bus.publisher, tenants_dir(tmp_path), store)
        cases = {
            "L-LEARNT": ("learning", {}),
            "H-MODE-OFF": ("harinas-sur", {}),
            "L-PREFERS": ("learning", {"preferred_channel": "email"}),
        }
        for number, (tenant, stated) in cases.items():
            payload = ERP_EXAMPLE | {
                "tenant_id": tenant,
                "invoice_number": number,
                "customer": ERP_EXAMPLE["customer"] | stated,
            }
            raw = json.dumps(payload).encode()
            await handlers.on_erp_invoice(erp_message(raw))
            await handlers.on_erp_invoice(erp_message(raw))  # redelivered: the same answer, the same event

        events = await bus.events("invoice.created")
        assert len(events) == 6 and len({e.event_id for e in events}) == 3
        learnt = {e.data.invoice_number: e.data.customer.effective_channel for e in events}
        assert learnt == {"L-LEARNT": "sms", "H-MODE-OFF": None, "L-PREFERS": None}
        assert {e.data.invoice_number: e.data.customer.preferred_channel for e in events}["L-PREFERS"] == "email"
