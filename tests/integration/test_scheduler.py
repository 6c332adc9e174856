"""The scheduler on the real MongoDB-wire server and broker, with simulated time: each tenant's plan
goes out once per occurrence, payments and cancellations close it, one replica sweeps.

Every test has its own topics and collections, and its own tenant configs in a tmp dir. Time is a
:class:`Clock` the test moves; the plan below (UTC, 09:00 to 18:00 on weekdays) gives an invoice
due on Monday 16 March 2026 the instants in :data:`SENT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection

from factura.common.delivery.effectiveness import ChannelEffectiveness
from factura.common.envelope import Envelope, utcnow
from factura.common.events import summary_of
from factura.common.kafka.consumer import Batched, Message
from factura.common.kafka.producer import Publisher
from factura.common.lease import Lease
from factura.common.mongo import Document, create_client, database
from factura.common.pii import COLLECTION as CUSTOMER_KEYS
from factura.common.pii import ERASED, field_cipher, is_token
from factura.common.reminders import Cursor
from factura.common.settings import MongoSettings
from factura.common.tenants import TenantConfigError, TenantDirectory
from factura.common.topics import REGISTRY
from factura.devstack.config import StackConfig
from factura.scheduler.bootstrap import bootstrap
from factura.scheduler.decisions import InvoiceInfo, ScheduleState, refusals
from factura.scheduler.handlers import SchedulerHandlers
from factura.scheduler.schedule import NEVER, Schedules
from factura.scheduler.settings import Settings
from factura.scheduler.tickets import HelpdeskSettings
from tests.conftest import mongo_settings
from tests.kafka_helpers import Bus, isolated
from tests.pii_keys import TEST_PII, pii_cipher
from tests.unit.test_scheduler import (
    TENANT,
    invoice_cancelled,
    invoice_created,
    invoice_rejected,
    invoice_rendered,
    payment_received,
)
from tests.waiting import until

pytestmark = pytest.mark.integration
LEASE = "reminder-sweep"
#: Tenants of the tmp config dir: the same plan, each with one switch (``TENANT`` sends receipts).
REANCHOR, MADRID, ALWAYS = "reanchor", "madrid", "always"
PLAN = """
[[reminders.steps]]
name = "before-5"
offset_days = -5
channels = ["email"]

[[reminders.steps]]
name = "due"
offset_days = 0

[[reminders.steps]]
name = "after-3"
offset_days = 3
channels = ["sms", "email"]

[reminders.repeat]
every_days = 7
max_times = 2

[reminders.escalation]
after_days = 20
every_days = 7
max_times = 1

[reminders.ticket]
after_days = 25
url = "http://127.0.0.1:9/hooks/factura"
"""
SWITCHES = {
    TENANT: "receipt = true",
    REANCHOR: "reanchor_on_partial = true",
    MADRID: 'timezone = "Europe/Madrid"',
    ALWAYS: "[reminders.window]\nalways = true",
}
DUE = date(2026, 3, 16)  # a Monday


def at(day: date, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def ms(instant: datetime) -> int:
    return int(instant.timestamp() * 1000)


#: When each occurrence of PLAN goes out for an invoice due on DUE (UTC tenants).
SENT = {
    "before-5#1": at(date(2026, 3, 11), 9),
    "due#1": at(DUE, 9),
    "after-3#1": at(date(2026, 3, 19), 9),
    "after-3#2": at(date(2026, 3, 26), 9),
    "after-3#3": at(date(2026, 4, 2), 9),
    "call#1": at(date(2026, 4, 6), 9),  # day 20 is a Sunday: Monday
    "ticket#1": at(date(2026, 4, 10), 9),
}


def tenants_in(root: Path) -> TenantDirectory:
    for tenant, switch in SWITCHES.items():
        (root / tenant).mkdir()
        (root / tenant / "tenant.toml").write_text(f"[reminders]\n{switch}\n{PLAN}", encoding="utf-8")
    return TenantDirectory(root)


class Clock:
    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or utcnow()

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Env:
    cfg: StackConfig
    bus: Bus
    collection: AsyncCollection[Document]
    schedules: Schedules
    leases: AsyncCollection[Document]
    effectiveness: ChannelEffectiveness
    tenants: TenantDirectory

    @property
    def publisher(self) -> Publisher:
        return self.bus.publisher

    def lease(self, owner: str, ttl_s: float, clock: Callable[[], datetime] = utcnow) -> Lease:
        return Lease(self.leases, LEASE, owner=owner, ttl=timedelta(seconds=ttl_s), clock=clock)

    def handlers(
        self,
        lease: Lease | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
        schedules: Schedules | None = None,
        grace: timedelta = timedelta(days=1),
    ) -> SchedulerHandlers:
        return SchedulerHandlers(
            self.publisher,
            schedules or self.schedules,
            lease or self.lease("solo", 30, clock),
            effectiveness=self.effectiveness,
            tenants=self.tenants,
            clock=clock,
            unknown_invoice_grace=grace,
        )

    async def events(self, logical: str) -> list[Envelope[Any]]:
        """Exactly what is on the topic now (publish waits for the broker's ack, so this is final)."""
        return await self.bus.events(logical)

    async def state(self, invoice_id: str, tenant: str = TENANT) -> ScheduleState:
        state = await self.schedules.state(tenant, invoice_id)
        assert state is not None
        return state


@asynccontextmanager
async def environment(cfg: StackConfig, tenants: TenantDirectory | None = None) -> AsyncIterator[Env]:
    """Own topic prefix and own collections: tests never see each other's state."""
    async with isolated(cfg, client_id="test-scheduler") as bus:
        mongo = mongo_settings(cfg)
        client = create_client(mongo)
        suffix = uuid.uuid4().hex[:6]
        db = database(client, mongo)
        collection = db[f"schedules_{suffix}"]
        schedules = Schedules(collection, pii_cipher(db))
        await schedules.ensure_indexes()
        effectiveness = ChannelEffectiveness(db[f"channel_deliveries_{suffix}"], db[f"channel_credits_{suffix}"])
        try:
            yield Env(
                cfg,
                bus,
                collection,
                schedules,
                db[f"leases_{suffix}"],
                effectiveness,
                tenants or TenantDirectory(None),
            )
        finally:
            await client.close()


def message(event: Envelope[Any]) -> Message[Envelope[Any]]:
    return Message(REGISTRY[event.type], 0, 0, event.partition_key, {}, event.model_dump_json().encode(), event)


def new_number() -> str:
    return f"F-{uuid.uuid4().hex[:8]}"


def key_of(invoice: Envelope[Any], occurrence: str) -> str:
    """What a sweep returns for a published occurrence."""
    return f"{invoice.tenant_id}/{invoice.data.invoice_number}/{occurrence}"


async def tick_at(handlers: SchedulerHandlers, clock: Clock, when: datetime) -> list[str]:
    clock.now = when
    swept = await handlers.tick()
    assert swept is not None, "the only replica did not get the sweep lease"
    return swept


def closed(state: ScheduleState) -> bool:
    return state.next_key == "" and state.next_due_ms == NEVER


async def sweep_the_rest_of_the_plan(handlers: SchedulerHandlers, clock: Clock) -> list[str]:
    """Tick at every later instant of the plan (and long after): what went out."""
    swept: list[str] = []
    for when in [*SENT.values(), SENT["ticket#1"] + timedelta(days=60)]:
        if when > clock.now:
            swept += await tick_at(handlers, clock, when)
    return swept


# --- the plan, occurrence by occurrence -----------------------------------------------------------


async def test_each_occurrence_goes_out_once_at_its_time_with_a_deterministic_id(
    cfg: StackConfig, tmp_path: Path
) -> None:
    clock = Clock(at(date(2026, 3, 2), 10))
    async with environment(cfg, tenants_in(tmp_path)) as env:
        handlers = env.handlers(clock=clock)
        created = invoice_created(new_number(), due=DUE)
        number = created.data.invoice_number
        await handlers.on_invoice_created(message(created))
        rendered = invoice_rendered(created)
        await handlers.on_invoice_rendered(message(rendered))
        state = await env.state(number)
        assert (state.next_key, state.next_due_ms) == ("before-5#1", ms(SENT["before-5#1"]))
        await handlers.on_invoice_created(message(created))  # a redelivery changes nothing
        assert (await env.state(number)).next_key == "before-5#1"

        assert await tick_at(handlers, clock, clock.now) == []
        for occurrence, when in SENT.items():
            assert await tick_at(handlers, clock, when - timedelta(milliseconds=1)) == []
            assert await tick_at(handlers, clock, when) == [key_of(created, occurrence)]
            assert await tick_at(handlers, clock, when) == []  # once
        assert closed(await env.state(number))  # the plan is over
        assert await tick_at(handlers, clock, clock.now + timedelta(days=365)) == []

        reminders = await env.events("reminder.due")
        assert [(e.data.step, e.data.occurrence, e.data.days_from_due, e.data.channels) for e in reminders] == [
            ("before-5", 1, -5, ["email"]),
            ("due", 1, 0, None),
            ("after-3", 1, 3, ["sms", "email"]),
            ("after-3", 2, 10, ["sms", "email"]),
            ("after-3", 3, 17, ["sms", "email"]),
            ("call", 1, 20, ["voice"]),
        ]
        assert len({e.event_id for e in reminders}) == len(reminders)
        for e in reminders:
            assert e.schema_version == 2 and e.data.due_date == DUE and e.data.outstanding is None
            assert e.data.document == rendered.data.document  # the reminder links the delivered document
            assert (e.causation_id, e.correlation_id, e.invoice_id) == (
                created.event_id,
                created.correlation_id,
                number,
            )
        [ticket] = await env.events("ticket.due")
        assert (ticket.data.step, ticket.data.days_from_due, ticket.data.outstanding) == ("ticket", 25, Decimal("100"))

        # The ids depend on invoice, due date and occurrence only: the same plan replayed by a
        # scheduler that lost all its state publishes the very same ids.
        async with environment(cfg, env.tenants) as replay:
            again = replay.handlers(clock=Clock(SENT["before-5#1"]))
            await again.on_invoice_created(message(invoice_created(number, due=DUE)))  # another version, same dates
            await again.tick()
            [first] = await replay.events("reminder.due")
            assert first.event_id == reminders[0].event_id


async def test_a_late_invoice_gets_only_its_most_recent_past_occurrence(cfg: StackConfig, tmp_path: Path) -> None:
    clock = Clock(at(date(2026, 3, 20), 10))  # day 4: before-5, due and after-3 are past
    async with environment(cfg, tenants_in(tmp_path)) as env:
        handlers = env.handlers(clock=clock)
        late = invoice_created(new_number(), due=DUE)
        await handlers.on_invoice_created(message(late))
        state = await env.state(late.data.invoice_number)
        assert (state.next_key, state.next_due_ms) == ("after-3#1", ms(SENT["after-3#1"]))
        assert await tick_at(handlers, clock, clock.now) == [key_of(late, "after-3#1")]
        assert await tick_at(handlers, clock, clock.now) == []
        assert (await env.state(late.data.invoice_number)).next_key == "after-3#2"

        # Arriving after the whole plan: its last occurrence (the ticket), once.
        ancient = invoice_created(new_number(), due=DUE - timedelta(days=70))
        await handlers.on_invoice_created(message(ancient))
        assert await tick_at(handlers, clock, clock.now) == [key_of(ancient, "ticket#1")]
        assert await tick_at(handlers, clock, clock.now) == []
        assert closed(await env.state(ancient.data.invoice_number))

        [reminder] = await env.events("reminder.due")
        assert (reminder.invoice_id, reminder.data.step, reminder.data.days_from_due) == (
            late.data.invoice_number,
            "after-3",
            3,
        )
        assert [t.invoice_id for t in await env.events("ticket.due")] == [ancient.data.invoice_number]


async def test_an_occurrence_found_due_outside_the_window_goes_out_at_the_next_window_start_once(
    cfg: StackConfig, tmp_path: Path
) -> None:
    """Madrid is UTC+1 in March: its 09:00 to 18:00 window is 08:00 to 17:00 UTC."""
    clock = Clock(at(date(2026, 3, 2), 10))
    async with environment(cfg, tenants_in(tmp_path)) as env:
        handlers = env.handlers(clock=clock)
        created = invoice_created(new_number(), due=DUE, tenant=MADRID)
        number = created.data.invoice_number
        await handlers.on_invoice_created(message(created))
        assert (await env.state(number, MADRID)).next_due_ms == ms(at(date(2026, 3, 11), 8))
        assert await tick_at(handlers, clock, at(date(2026, 3, 11), 8)) == [key_of(created, "before-5#1")]

        # Down all Monday: due#1 (08:00 UTC) is found at 18:30 Madrid, after the window closed.
        assert await tick_at(handlers, clock, at(DUE, 17, 30)) == []
        state = await env.state(number, MADRID)
        assert (state.next_key, state.next_due_ms) == ("due#1", ms(at(date(2026, 3, 17), 8)))  # Tuesday 09:00
        assert await tick_at(handlers, clock, at(DUE, 23)) == []
        assert await tick_at(handlers, clock, at(date(2026, 3, 17), 8)) == [key_of(created, "due#1")]
        assert await tick_at(handlers, clock, at(date(2026, 3, 17), 8)) == []

        # Down for an hour inside the window: sent as soon as it is back.
        assert await tick_at(handlers, clock, at(date(2026, 3, 19), 10)) == [key_of(created, "after-3#1")]
        reminders = await env.events("reminder.due")
        assert [(e.data.step, e.data.days_from_due) for e in reminders] == [
            ("before-5", -5),
            ("due", 0),
            ("after-3", 3),
        ]


# --- payments and cancellations -------------------------------------------------------------------


async def test_payment_in_full_closes_the_timer_at_once_and_sends_the_receipt(cfg: StackConfig, tmp_path: Path) -> None:
    clock = Clock(at(DUE, 10))
    async with environment(cfg, tenants_in(tmp_path)) as env:
        handlers = env.handlers(clock=clock)
        created = invoice_created(new_number(), due=DUE, total="100.00")
        number = created.data.invoice_number
        await handlers.on_invoice_created(message(created))
        assert await tick_at(handlers, clock, clock.now) == [key_of(created, "due#1")]

        await handlers.on_payment_received(message(payment_received(number, "40.00", paid_at=clock.now)))
        assert (await env.state(number)).next_key == "after-3#1"  # partial: the plan goes on
        assert await tick_at(handlers, clock, SENT["after-3#1"]) == [key_of(created, "after-3#1")]

        # No receipt for a tenant that does not ask for one (handled first: the receipt read below is exact).
        quiet = invoice_created(new_number(), due=DUE, total="50.00", tenant=REANCHOR)
        await handlers.on_invoice_created(message(quiet))
        await handlers.on_payment_received(
            message(payment_received(quiet.data.invoice_number, "50.00", tenant=REANCHOR))
        )
        assert closed(await env.state(quiet.data.invoice_number, REANCHOR))

        rest = payment_received(number, "60.00", paid_at=clock.now + timedelta(hours=2))
        await handlers.on_payment_received(message(rest))
        assert closed(await env.state(number))  # at once: no tick needed
        await handlers.on_payment_received(message(rest))  # redelivered

        receipts = await env.events("receipt.due")
        assert len(receipts) == 2 and len({r.event_id for r in receipts}) == 1  # the redelivery: the same id
        assert receipts[0].invoice_id == number and receipts[0].data.paid == Decimal("100.00")
        assert receipts[0].data.paid_at == rest.data.paid_at
        assert await sweep_the_rest_of_the_plan(handlers, clock) == []
        reminders = await env.events("reminder.due")
        assert [(e.data.step, e.data.outstanding) for e in reminders if e.invoice_id == number] == [
            ("due", None),
            ("after-3", Decimal("60.00")),  # what is still owed after the partial payment
        ]


async def test_a_partial_payment_re_anchors_the_plan_when_the_tenant_says_so(cfg: StackConfig, tmp_path: Path) -> None:
    clock = Clock(at(DUE, 10))
    paid_on = date(2026, 3, 17)  # Tuesday, day 1
    async with environment(cfg, tenants_in(tmp_path)) as env:
        handlers = env.handlers(clock=clock)
        anchored = invoice_created(new_number(), due=DUE, tenant=REANCHOR)
        plain = invoice_created(new_number(), due=DUE)
        for invoice in (anchored, plain):
            await handlers.on_invoice_created(message(invoice))
        assert sorted(await tick_at(handlers, clock, clock.now)) == sorted(
            key_of(i, "due#1") for i in (anchored, plain)
        )

        clock.now = at(paid_on, 10)
        for invoice in (anchored, plain):
            number, tenant = invoice.data.invoice_number, invoice.tenant_id
            await handlers.on_payment_received(
                message(payment_received(number, "40.00", tenant=tenant, paid_at=clock.now))
            )
        state = await env.state(anchored.data.invoice_number, REANCHOR)
        assert state.anchor == paid_on
        assert (state.next_key, state.next_due_ms) == ("after-3#1", ms(at(date(2026, 3, 20), 9)))  # payment day + 3
        unmoved = await env.state(plain.data.invoice_number)
        assert (unmoved.anchor, unmoved.next_due_ms) == (None, ms(SENT["after-3#1"]))

        assert await tick_at(handlers, clock, SENT["after-3#1"]) == [key_of(plain, "after-3#1")]
        assert await tick_at(handlers, clock, at(date(2026, 3, 20), 9)) == [key_of(anchored, "after-3#1")]
        assert (await env.state(anchored.data.invoice_number, REANCHOR)).next_due_ms == ms(at(date(2026, 3, 27), 9))
        by_invoice = {e.invoice_id: e.data for e in await env.events("reminder.due") if e.data.step == "after-3"}
        assert by_invoice[anchored.data.invoice_number].days_from_due == 4
        assert by_invoice[plain.data.invoice_number].days_from_due == 3
        assert {d.outstanding for d in by_invoice.values()} == {Decimal("60.00")}


async def test_a_cancellation_closes_the_plan_and_payments_after_it_are_unmatched(
    cfg: StackConfig, tmp_path: Path
) -> None:
    clock = Clock(at(DUE, 10))
    async with environment(cfg, tenants_in(tmp_path)) as env:
        handlers = env.handlers(clock=clock)
        created = invoice_created(new_number(), due=DUE, total="100.00")
        number = created.data.invoice_number
        await handlers.on_invoice_created(message(created))
        assert await tick_at(handlers, clock, clock.now) == [key_of(created, "due#1")]
        before = payment_received(number, "30.00")
        await handlers.on_payment_received(message(before))

        await handlers.on_invoice_cancelled(message(invoice_cancelled(number)))
        assert closed(await env.state(number))  # at once
        after = payment_received(number, "70.00")  # would have completed it
        await handlers.on_payment_received(message(after))

        # A cancellation that overtakes its invoice: the invoice never starts a plan.
        overtaken = invoice_created(new_number(), due=DUE)
        await handlers.on_invoice_cancelled(message(invoice_cancelled(overtaken.data.invoice_number)))
        await handlers.on_invoice_created(message(overtaken))
        assert closed(await env.state(overtaken.data.invoice_number))

        unmatched = await env.events("payment.unmatched")
        assert {(e.data.payment.payment_id, e.data.reason, e.data.unmatched_amount) for e in unmatched} == {
            (before.data.payment_id, "invoice_cancelled", Decimal("30.00")),
            (after.data.payment_id, "invoice_cancelled", Decimal("70.00")),
        }
        assert {e.invoice_id for e in unmatched} == {number}
        assert await sweep_the_rest_of_the_plan(handlers, clock) == []
        assert [e.invoice_id for e in await env.events("reminder.due")] == [number]  # due#1 only
        assert await env.events("receipt.due") == []  # a refused payment completes nothing


async def test_an_overpayment_is_unmatched_for_the_excess_and_no_reminder_follows(
    cfg: StackConfig, tmp_path: Path
) -> None:
    clock = Clock(at(DUE, 10))
    async with environment(cfg, tenants_in(tmp_path)) as env:
        handlers = env.handlers(clock=clock)
        created = invoice_created(new_number(), due=DUE, total="100.00")
        number = created.data.invoice_number
        await handlers.on_invoice_created(message(created))
        await handlers.on_payment_received(message(payment_received(number, "60.00")))
        over = payment_received(number, "70.00")
        await handlers.on_payment_received(message(over))

        [unmatched] = await env.events("payment.unmatched")
        assert (unmatched.data.reason, unmatched.data.unmatched_amount, unmatched.data.invoice_currency) == (
            "overpayment",
            Decimal("30.00"),
            "EUR",
        )
        assert unmatched.causation_id == over.event_id and unmatched.invoice_id == number
        assert await sweep_the_rest_of_the_plan(handlers, clock) == []
        assert closed(await env.state(number))
        assert await env.events("reminder.due") == []


async def test_an_overpaid_invoice_is_closed_at_once_with_a_receipt(cfg: StackConfig, tmp_path: Path) -> None:
    clock = Clock(at(DUE, 10))
    async with environment(cfg, tenants_in(tmp_path)) as env:
        handlers = env.handlers(clock=clock)
        created = invoice_created(new_number(), due=DUE, total="100.00")
        await handlers.on_invoice_created(message(created))
        await handlers.on_payment_received(message(payment_received(created.data.invoice_number, "130.00")))
        assert closed(await env.state(created.data.invoice_number))
        assert [r.invoice_id for r in await env.events("receipt.due")] == [created.data.invoice_number]


async def test_a_payment_whose_invoice_never_comes_is_unmatched_after_the_grace_period(
    cfg: StackConfig, tmp_path: Path
) -> None:
    t0 = at(DUE, 10)
    clock = Clock(t0)
    grace = timedelta(hours=6)
    async with environment(cfg, tenants_in(tmp_path)) as env:
        handlers = env.handlers(clock=clock, grace=grace)
        lost = payment_received(new_number(), "25.00")
        second = payment_received(lost.invoice_id or "", "5.00")
        in_time = invoice_created(new_number(), due=DUE)
        early = payment_received(in_time.data.invoice_number, "10.00")
        for payment in (lost, early):
            await handlers.on_payment_received(message(payment))
        clock.now = t0 + timedelta(hours=2)
        await handlers.on_payment_received(message(second))  # the grace counts from the first payment
        await handlers.on_invoice_created(message(in_time))
        assert (await env.state(in_time.data.invoice_number)).next_key == "due#1"

        assert await tick_at(handlers, clock, t0 + grace - timedelta(milliseconds=1)) == [key_of(in_time, "due#1")]
        assert await env.events("payment.unmatched") == []
        assert await tick_at(handlers, clock, t0 + grace) == []
        unmatched = await env.events("payment.unmatched")
        assert {(e.data.payment.payment_id, e.data.reason, e.data.unmatched_amount) for e in unmatched} == {
            (lost.data.payment_id, "unknown_invoice", Decimal("25.00")),
            (second.data.payment_id, "unknown_invoice", Decimal("5.00")),
        }
        assert {(e.invoice_id, e.data.invoice_currency) for e in unmatched} == {(lost.invoice_id, None)}
        reported = await env.state(lost.invoice_id or "")
        assert reported is not None and reported.next_due_ms == NEVER  # no timer left, the plan may still start
        assert await tick_at(handlers, clock, t0 + 2 * grace) == []
        assert len(await env.events("payment.unmatched")) == 2  # reported once


async def test_an_invoice_arriving_after_its_payment_was_reported_unknown_still_gets_its_plan(
    cfg: StackConfig, tmp_path: Path
) -> None:
    clock = Clock(at(DUE, 10))
    async with environment(cfg, tenants_in(tmp_path)) as env:
        handlers = env.handlers(clock=clock, grace=timedelta(hours=1))
        created = invoice_created(new_number(), due=DUE, total="100.00")
        await handlers.on_payment_received(message(payment_received(created.data.invoice_number, "10.00")))
        await tick_at(handlers, clock, clock.now + timedelta(hours=1))
        assert len(await env.events("payment.unmatched")) == 1
        await handlers.on_invoice_created(message(created))
        assert (await env.state(created.data.invoice_number)).next_key == "due#1"


async def test_payments_in_another_currency_are_refused_in_either_order(cfg: StackConfig, tmp_path: Path) -> None:
    clock = Clock(at(date(2026, 3, 23), 10))  # day 7: after-3#1 is the most recent past occurrence
    async with environment(cfg, tenants_in(tmp_path)) as env:
        handlers = env.handlers(clock=clock)

        # Invoice first, then a USD payment (refused) and a partial EUR one (counted).
        i1 = invoice_created(new_number(), due=DUE, currency="EUR", total="100.00")
        await handlers.on_invoice_created(message(i1))
        usd1 = payment_received(i1.data.invoice_number, "100.00", "USD")
        await handlers.on_payment_received(message(usd1))
        await handlers.on_payment_received(message(payment_received(i1.data.invoice_number, "40.00", "EUR")))

        # Payment first: nothing to compare with until the invoice arrives, then refused.
        n2 = new_number()
        usd2 = payment_received(n2, "250.00", "USD")
        await handlers.on_payment_received(message(usd2))
        state = await env.state(n2)
        assert state.invoice is None and refusals(state) == []
        i2 = invoice_created(n2, due=DUE, currency="EUR", total="250.00")
        await handlers.on_invoice_created(message(i2))
        await handlers.on_invoice_created(message(i2))  # redelivery: the same event again

        # Paid in full in its own currency before the invoice came: neither refused nor reminded.
        i3 = invoice_created(new_number(), due=DUE, currency="RON", total="75.50")
        await handlers.on_payment_received(message(payment_received(i3.data.invoice_number, "75.50", "RON")))
        await handlers.on_invoice_created(message(i3))
        assert closed(await env.state(i3.data.invoice_number))

        events = await env.events("payment.unmatched")
        assert len(events) == 3  # i1 once, i2 twice (redelivery)
        by_id = {e.event_id: e for e in events}
        assert len(by_id) == 2  # the redelivery republished the same event id: audit keeps one
        by_payment = {e.data.payment.payment_id: e for e in by_id.values()}
        assert set(by_payment) == {usd1.data.payment_id, usd2.data.payment_id}
        for payment, invoice in ((usd1, i1), (usd2, i2)):
            e = by_payment[payment.data.payment_id]
            assert e.producer == "scheduler" and e.data.reason == "currency_mismatch"
            assert e.data.invoice_currency == "EUR" and e.data.payment.currency == "USD"
            assert e.invoice_id == invoice.data.invoice_number and e.tenant_id == TENANT
            assert e.causation_id == payment.event_id and e.correlation_id == payment.correlation_id

        # Refused payments do not count: i1 (40 of 100 EUR) and i2 (0 of 250 EUR) are reminded, i3 is paid.
        swept = await tick_at(handlers, clock, clock.now)
        assert sorted(swept) == sorted(key_of(i, "after-3#1") for i in (i1, i2))
        owed = {e.invoice_id: e.data.outstanding for e in await env.events("reminder.due")}
        assert owed == {i1.data.invoice_number: Decimal("60.00"), i2.data.invoice_number: None}


async def test_invoices_rejected_at_render_get_no_reminder(cfg: StackConfig, tmp_path: Path) -> None:
    clock = Clock(at(DUE, 10))
    async with environment(cfg, tenants_in(tmp_path)) as env:
        handlers = env.handlers(clock=clock)

        # Rejected after it was recorded.
        rejected = invoice_created(new_number(), due=DUE)
        await handlers.on_invoice_created(message(rejected))
        await handlers.on_invoice_rejected(message(invoice_rejected(rejected)))
        # The rejection overtakes the invoice (another topic, another partition).
        overtaken = invoice_created(new_number(), due=DUE)
        await handlers.on_invoice_rejected(message(invoice_rejected(overtaken)))
        await handlers.on_invoice_created(message(overtaken))
        # An ingest rejection naming this invoice (a refused payment pointed at it) changes nothing.
        ingest_only = invoice_created(new_number(), due=DUE)
        await handlers.on_invoice_created(message(ingest_only))
        await handlers.on_invoice_rejected(message(invoice_rejected(ingest_only, stage="ingest")))

        assert await tick_at(handlers, clock, clock.now) == [key_of(ingest_only, "due#1")]
        for invoice in (rejected, overtaken):
            state = await env.state(invoice.data.invoice_number)
            assert closed(state) and str(invoice.event_id) in state.rejected_causes
        assert len(await sweep_the_rest_of_the_plan(handlers, clock)) == len(SENT) - 2  # after due#1
        assert {e.invoice_id for e in await env.events("reminder.due")} == {ingest_only.data.invoice_number}


async def test_a_corrected_version_that_renders_is_reminded(cfg: StackConfig, tmp_path: Path) -> None:
    clock = Clock(at(DUE, 10))
    async with environment(cfg, tenants_in(tmp_path)) as env:
        handlers = env.handlers(clock=clock)
        v1 = invoice_created(new_number(), due=DUE)
        await handlers.on_invoice_created(message(v1))
        await handlers.on_invoice_rejected(message(invoice_rejected(v1)))
        v2 = invoice_created(v1.data.invoice_number, due=DUE)
        await handlers.on_invoice_created(message(v2))
        assert await tick_at(handlers, clock, clock.now) == [key_of(v2, "due#1")]


# --- personal data -------------------------------------------------------------------------------


async def test_contact_data_is_stored_encrypted_and_an_erased_customer_gets_no_more_reminders(
    cfg: StackConfig, tmp_path: Path
) -> None:
    clock = Clock(at(date(2026, 3, 2), 10))
    async with environment(cfg, tenants_in(tmp_path)) as env:
        handlers = env.handlers(clock=clock)
        created = invoice_created(new_number(), due=DUE)
        customer = created.data.customer.model_copy(update={"customer_id": f"C-{uuid.uuid4().hex[:8]}"})
        created = created.model_copy(update={"data": created.data.model_copy(update={"customer": customer})})
        number = created.data.invoice_number
        await handlers.on_invoice_created(message(created))
        await handlers.on_invoice_rendered(message(invoice_rendered(created)))

        raw = await env.collection.find_one({"invoice_id": number})
        assert raw is not None and customer.email and customer.phone
        stored = raw["summary"]["customer"]
        assert all(is_token(stored[field]) for field in ("name", "email", "phone"))
        assert not {customer.name, customer.email, customer.phone} & set(map(str, stored.values()))
        assert stored["customer_id"] == customer.customer_id  # what the erasure and the credits key on
        assert (await env.state(number)).invoice == InvoiceInfo(
            summary_of(created.data), created.correlation_id, str(created.event_id)
        )
        assert await tick_at(handlers, clock, SENT["before-5#1"]) == [key_of(created, "before-5#1")]

        # Erased: another process (no cached key) finds the contact data gone at the next occurrence.
        assert await pii_cipher(env.collection.database).erase(TENANT, customer.customer_id)
        after = Schedules(env.collection, pii_cipher(env.collection.database))
        assert await tick_at(env.handlers(clock=clock, schedules=after), clock, SENT["due#1"]) == []
        state = await after.state(TENANT, number)
        assert state is not None and state.invoice is not None and closed(state)
        assert state.invoice.contact_lost == "customer_erased"
        left = state.invoice.summary
        assert (left.customer.name, left.customer.email, left.customer.phone) == (ERASED, None, None)
        assert (left.invoice_number, left.total, left.due_date) == (number, created.data.total, DUE)  # fiscal
        raw = await env.collection.find_one({"invoice_id": number})
        assert raw is not None and raw["stopped"] == "customer_erased" and raw["open_amount"] > 0  # still owed
        assert [e.data.step for e in await env.events("reminder.due")] == ["before-5"]


# --- the timer under races and crashes ------------------------------------------------------------


class RacingSchedules(Schedules):
    """Runs ``meanwhile`` once, right after a sweep read what is due: an event handled in between."""

    meanwhile: Callable[[], Awaitable[None]] | None = None

    async def due(self, now_ms: int, limit: int) -> list[ScheduleState]:
        found = await super().due(now_ms, limit)
        if self.meanwhile is not None:
            hook, self.meanwhile = self.meanwhile, None
            await hook()
        return found


class CrashingSchedules(Schedules):
    """Fails the next move of a timer once ``crash`` is set: the process dies after publishing."""

    crash = False

    async def plan(
        self, state: ScheduleState, *, cursor: Cursor | None, key: str, due_ms: int, fresh: bool = False
    ) -> bool:
        if self.crash:
            self.crash = False
            raise ConnectionError("MongoDB went away")
        return await super().plan(state, cursor=cursor, key=key, due_ms=due_ms, fresh=fresh)


async def test_a_sweep_racing_a_payment_never_revives_the_closed_schedule(cfg: StackConfig, tmp_path: Path) -> None:
    clock = Clock(at(DUE, 10))
    async with environment(cfg, tenants_in(tmp_path)) as env:
        racing = RacingSchedules(env.collection, pii_cipher(env.collection.database))
        sweeper = env.handlers(clock=clock, schedules=racing)
        consumer = env.handlers(clock=clock)  # the event handlers of the same (or another) replica
        created = invoice_created(new_number(), due=DUE, total="100.00")
        number = created.data.invoice_number
        await consumer.on_invoice_created(message(created))
        stale = await env.state(number)
        assert stale.next_key == "due#1"

        async def pay() -> None:
            await consumer.on_payment_received(message(payment_received(number, "100.00")))

        racing.meanwhile = pay
        # The sweep read the timer before the payment: it still sends due#1 (the payment came
        # second), but its compare-and-set on due#1 loses to the payment's close.
        assert await tick_at(sweeper, clock, clock.now) == [key_of(created, "due#1")]
        assert racing.meanwhile is None
        assert closed(await env.state(number))
        assert await sweep_the_rest_of_the_plan(sweeper, clock) == []
        assert len(await env.events("reminder.due")) == 1
        # The same compare-and-set, asked directly with the stale view.
        assert not await env.schedules.plan(stale, cursor=None, key="after-3#1", due_ms=ms(SENT["after-3#1"]))
        assert closed(await env.state(number))


async def test_a_crash_between_publishing_and_moving_the_timer_republishes_the_same_event_id(
    cfg: StackConfig, tmp_path: Path
) -> None:
    clock = Clock(at(DUE, 10))
    async with environment(cfg, tenants_in(tmp_path)) as env:
        crashing = CrashingSchedules(env.collection, pii_cipher(env.collection.database))
        handlers = env.handlers(clock=clock, schedules=crashing)
        created = invoice_created(new_number(), due=DUE)
        number = created.data.invoice_number
        await handlers.on_invoice_created(message(created))

        crashing.crash = True
        with pytest.raises(ConnectionError):
            await handlers.tick()
        [published] = await env.events("reminder.due")
        assert (await env.state(number)).next_key == "due#1"  # the timer did not move

        restarted = env.handlers(clock=clock)  # the same replica after a restart
        assert await tick_at(restarted, clock, clock.now) == [key_of(created, "due#1")]
        assert await tick_at(restarted, clock, clock.now) == []
        first, again = await env.events("reminder.due")
        assert first.event_id == again.event_id == published.event_id  # the senders' ledger keeps one
        assert (await env.state(number)).next_key == "after-3#1"


# --- one sweeper ----------------------------------------------------------------------------------


async def record_overdue(handlers: SchedulerHandlers, count: int, today: date) -> list[str]:
    """Invoices of the always-open tenant due yesterday: due#1 is due at once, after-3#1 in two days."""
    invoices = [invoice_created(new_number(), due=today - timedelta(days=1), tenant=ALWAYS) for _ in range(count)]
    for invoice in invoices:
        await handlers.on_invoice_created(message(invoice))
    return [key_of(i, "due#1") for i in invoices]


async def test_one_lease_holder_sweeps_and_another_takes_over_after_expiry(cfg: StackConfig, tmp_path: Path) -> None:
    async with environment(cfg, tenants_in(tmp_path)) as env:
        clock = Clock(at(DUE, 10))
        today = clock.now.date()
        lease_a, lease_b = env.lease("a", 30, clock), env.lease("b", 30, clock)
        a, b = env.handlers(lease_a, clock=clock), env.handlers(lease_b, clock=clock)

        first = await record_overdue(a, 3, today)
        assert sorted(await a.tick() or []) == sorted(first)
        assert await b.tick() is None  # a holds the lease: b does not sweep
        second = await record_overdue(b, 1, today)
        assert await b.tick() is None
        clock.now += timedelta(seconds=20)  # a renews within its term
        assert await a.tick() == second
        assert await b.tick() is None and await lease_b.holder() == "a"

        third = await record_overdue(a, 1, today)
        clock.now += timedelta(seconds=31)  # a stopped renewing (dead): its term ran out
        assert not lease_a.held()
        assert await b.tick() == third
        assert await a.tick() is None and not lease_a.held() and lease_b.held()
        assert await lease_a.holder() == "b"

        await lease_b.release()  # clean stop: a takes over at once, no waiting for expiry
        assert await a.tick() == []
        assert (a.swept, a.skipped, b.swept, b.skipped) == (3, 1, 1, 3)
        reminders = await env.events("reminder.due")
        assert sorted(f"{e.tenant_id}/{e.invoice_id}/due#1" for e in reminders) == sorted(first + second + third)


async def test_concurrent_acquirers_of_a_free_lease_get_one_winner(cfg: StackConfig) -> None:
    async with environment(cfg) as env:
        leases = [env.lease(f"r{i}", 30) for i in range(8)]
        won = await asyncio.gather(*(lease.acquire() for lease in leases))
        assert sum(won) == 1
        winner = leases[won.index(True)]
        assert await winner.holder() == winner.owner
        renewed = await asyncio.gather(*(lease.acquire() for lease in leases))
        assert renewed == won  # the holder renews, nobody else gets in


async def test_two_running_replicas_one_sweeps_dead_holder_replaced_clean_stop_hands_over(
    cfg: StackConfig, tmp_path: Path
) -> None:
    async with environment(cfg, tenants_in(tmp_path)) as env:
        tick_s, ttl_s = 0.1, 3.0
        today = utcnow().date()
        replicas = {name: env.handlers(env.lease(name, ttl_s)) for name in ("a", "b")}
        overdue = await record_overdue(replicas["a"], 4, today)
        stopping = {name: asyncio.Event() for name in replicas}
        tasks = {n: asyncio.create_task(h.run_sweeps(stopping[n], tick_s)) for n, h in replicas.items()}
        try:
            # Both replicas tick repeatedly; only one of them ever sweeps.
            await until(lambda: all(h.swept + h.skipped >= 5 for h in replicas.values()))
            sweepers = [n for n, h in replicas.items() if h.swept > 0]
            assert len(sweepers) == 1, {n: (h.swept, h.skipped) for n, h in replicas.items()}
            holder = sweepers[0]
            other = "b" if holder == "a" else "a"
            assert replicas[other].swept == 0 and replicas[other].skipped >= 5
            assert sorted(reminded(await env.events("reminder.due"))) == sorted(overdue)

            # The holder dies (no release): after the term the other replica sweeps the new invoice.
            dead = tasks.pop(holder)
            dead.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dead
            late = await record_overdue(replicas[other], 1, today)
            await until(lambda: replicas[other].swept > 0, timeout_s=ttl_s + 10)
            await until_events(env, "reminder.due", len(overdue) + 1)
            assert sorted(reminded(await env.events("reminder.due"))) == sorted(overdue + late)

            # A clean stop releases: a fresh replica sweeps on its very first tick.
            stopping[other].set()
            await asyncio.wait_for(tasks.pop(other), 10)
            fresh = env.handlers(env.lease("c", ttl_s))
            assert await fresh.tick() == [] and fresh.swept == 1
        finally:
            for name, task in tasks.items():
                stopping[name].set()
                await asyncio.wait_for(task, 10)


def reminded(events: list[Envelope[Any]]) -> list[str]:
    return [f"{e.tenant_id}/{e.invoice_id}/{e.data.step}#{e.data.occurrence}" for e in events]


async def until_events(env: Env, logical: str, expected: int, timeout_s: float = 20.0) -> None:
    """Wait until ``expected`` records are on the topic (and no more)."""
    for _ in range(int(timeout_s / 0.1)):
        count = len(await env.events(logical))
        if count >= expected:
            assert count == expected
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{logical}: fewer than {expected} records in time")


# --- wiring ---------------------------------------------------------------------------------------


async def test_bootstrap_wires_the_tenants_plans_and_the_topics(cfg: StackConfig, tmp_path: Path) -> None:
    tenants = tmp_path / "tenants"
    tenants.mkdir()
    tenants_in(tenants)
    mongo = MongoSettings(url=cfg.mongo_url, database=f"{cfg.mongo_database}_{uuid.uuid4().hex[:6]}")
    async with isolated(cfg, client_id="test-scheduler-bootstrap") as bus:
        async with AsyncExitStack() as stack:
            settings = Settings(
                mongo=mongo, tenants_dir=tenants, helpdesk=HelpdeskSettings(secret="s" * 16), pii=TEST_PII
            )
            wiring = await bootstrap(settings, bus.publisher, stack)
            assert set(wiring.routes) == {
                "invoice.created",
                "invoice.rejected",
                "invoice.rendered",
                "invoice.cancelled",
                "payment.received",
                "delivery.succeeded",
                "ticket.due",
            }
            assert set(wiring.checks) == {"mongo"} and len(wiring.tasks) == 2  # the sweep, the campaign runner
            await wiring.checks["mongo"]()

            # The handlers read the tenant's plan: the always-open window starts at 00:00, not 09:00.
            due = utcnow().date() + timedelta(days=30)
            created = invoice_created(new_number(), due=due, tenant=ALWAYS)
            handler = wiring.routes["invoice.created"]
            assert not isinstance(handler, Batched)
            await handler(message(created))
            client = create_client(mongo)
            try:
                db = database(client, mongo)
                state = await Schedules(db["schedules"], field_cipher(db[CUSTOMER_KEYS], TEST_PII)).state(
                    ALWAYS, created.data.invoice_number
                )
            finally:
                await client.close()
            assert state is not None and state.next_key == "before-5#1"
            assert state.next_due_ms == ms(at(due - timedelta(days=5)))

        async with AsyncExitStack() as stack:  # without a helpdesk, tickets are not routed
            wiring = await bootstrap(Settings(mongo=mongo, tenants_dir=tenants), bus.publisher, stack)
            assert "ticket.due" not in wiring.routes

        (tenants / MADRID / "tenant.toml").write_text('[reminders]\ntimezone = "CEST"\n', encoding="utf-8")
        async with AsyncExitStack() as stack:
            with pytest.raises(TenantConfigError, match=r"madrid/tenant\.toml(.|\n)*reminders\.timezone"):
                await bootstrap(Settings(mongo=mongo, tenants_dir=tenants), bus.publisher, stack)
