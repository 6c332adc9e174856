"""Scheduler metrics: payments applied (after a reminder or not) and the overdue gauges.

The handlers run here against a fake schedule store; what the store itself decides (whether a
payment lowered what is owed, the overdue aggregation) runs on the real MongoDB-wire server in
``tests/integration/test_metrics_overdue.py``.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any, cast

from prometheus_client import REGISTRY

from factura.common.delivery.effectiveness import ChannelEffectiveness
from factura.common.envelope import Envelope
from factura.common.events import PaymentReceivedV1
from factura.common.kafka.consumer import Message
from factura.common.kafka.producer import Publisher
from factura.common.lease import Lease
from factura.common.tenants import TenantDirectory
from factura.common.topics import PAYMENT_RECEIVED
from factura.scheduler.decisions import ScheduleState
from factura.scheduler.handlers import SchedulerHandlers
from factura.scheduler.schedule import Overdue, Schedules
from tests.unit.test_scheduler import TODAY, invoice_created, payment_received, state_of


class Store:
    """Answers ``apply_payment`` with a prepared state; ``overdue`` with prepared figures."""

    def __init__(self, state: ScheduleState | None = None, lowered: bool = True) -> None:
        self.state, self.lowered = state, lowered
        self.figures: dict[str, Overdue] = {}

    async def apply_payment(self, event: Envelope[PaymentReceivedV1], invoice_id: str) -> tuple[ScheduleState, bool]:
        assert self.state is not None
        return self.state, self.lowered

    async def due(self, now_ms: int, limit: int) -> list[ScheduleState]:
        return []

    async def overdue(self, today: Any) -> dict[str, Overdue]:
        return self.figures


class HeldLease:
    name = "reminder-sweep"

    def __init__(self, held: bool = True) -> None:
        self.held = held

    async def acquire(self) -> bool:
        return self.held

    async def keep(self) -> bool:
        return self.held


def handlers(store: Store, lease: HeldLease | None = None) -> SchedulerHandlers:
    return SchedulerHandlers(
        cast(Publisher, None),
        cast(Schedules, store),
        cast(Lease, lease or HeldLease()),
        effectiveness=cast(ChannelEffectiveness, None),
        tenants=TenantDirectory(None),
        clock=lambda: datetime(TODAY.year, TODAY.month, TODAY.day, 12, tzinfo=UTC),
    )


def applied(after_reminder: str) -> float:
    value = REGISTRY.get_sample_value("factura_payments_applied_total", {"after_reminder": after_reminder})
    assert value is not None, f"{after_reminder} is not exposed"
    return value


def gauge(name: str, currency: str) -> float | None:
    return REGISTRY.get_sample_value(f"factura_overdue_{name}", {"currency": currency})


def partly_paid(cursor: tuple[int, str] | None) -> tuple[ScheduleState, Message[Envelope[PaymentReceivedV1]]]:
    payment = payment_received("F-1", "40.00")
    state = dataclasses.replace(state_of(invoice_created("F-1", total="100.00"), [payment]), cursor=cursor)
    return state, Message(PAYMENT_RECEIVED, 0, 1, None, {}, b"", payment)


async def test_a_payment_is_applied_after_a_reminder_when_the_plan_has_moved_on() -> None:
    state, message = partly_paid(cursor=(1, "after-3#1"))
    subject = handlers(Store(state))
    before, other = applied("true"), applied("false")
    await subject.on_payment_received(message)
    assert applied("true") == before + 1 and applied("false") == other


async def test_a_payment_before_any_reminder_is_applied_without_one() -> None:
    state, message = partly_paid(cursor=None)
    subject = handlers(Store(state))
    before = applied("false")
    await subject.on_payment_received(message)
    assert applied("false") == before + 1


async def test_a_payment_that_lowered_nothing_is_not_applied() -> None:
    state, message = partly_paid(cursor=None)  # a redelivery, another currency: the store says so
    subject = handlers(Store(state, lowered=False))
    before = applied("false"), applied("true")
    await subject.on_payment_received(message)
    assert (applied("false"), applied("true")) == before


async def test_the_lease_holder_sets_the_overdue_gauges_and_zeroes_what_is_no_longer_overdue() -> None:
    store = Store()
    subject = handlers(store)
    store.figures = {"EUR": Overdue(3, 250.5), "RON": Overdue(1, 10.0)}
    await subject.tick()
    assert (gauge("invoices", "EUR"), gauge("amount", "EUR")) == (3, 250.5)
    assert (gauge("invoices", "RON"), gauge("amount", "RON")) == (1, 10.0)
    store.figures = {"EUR": Overdue(2, 200.0)}
    await subject.tick()
    assert (gauge("invoices", "EUR"), gauge("amount", "RON"), gauge("invoices", "RON")) == (2, 0, 0)


async def test_a_replica_without_the_lease_exposes_no_overdue_figures() -> None:
    store = Store()
    store.figures = {"EUR": Overdue(3, 250.5)}
    await handlers(store).tick()
    assert gauge("invoices", "EUR") == 3
    await handlers(store, HeldLease(held=False)).tick()
    assert gauge("invoices", "EUR") is None and gauge("amount", "EUR") is None
