"""Scheduler handlers (record state, refuse payments, credit channels) and the sweep that publishes reminder.due."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from factura.common.delivery.effectiveness import ChannelEffectiveness
from factura.common.delivery.policy import MostEffective
from factura.common.envelope import Envelope, utcnow
from factura.common.errors import InvalidMessage
from factura.common.events import (
    DeliverySucceededV2,
    FieldError,
    InvoiceCreatedV1,
    InvoiceRejectedV1,
    InvoiceRenderedV1,
    PaymentReceivedV1,
)
from factura.common.kafka.consumer import Message
from factura.common.kafka.producer import Publisher
from factura.common.metrics import counter
from factura.common.tenants import TenantDirectory
from factura.scheduler.decisions import (
    Outcome,
    Refusal,
    ScheduleState,
    decide,
    distinct_payments,
    paid_amount,
    refusals,
    reminder_event,
    unmatched_event,
)
from factura.scheduler.lease import Lease
from factura.scheduler.schedule import Schedules

REMINDERS = counter("reminders_published_total", "reminder.due events published.", ("kind",))
UNMATCHED = counter("payments_unmatched_total", "Payments not counted toward their invoice.", ("reason",))
SWEEPS = counter("reminder_sweeps_total", "Scheduler ticks, by whether this replica swept.", ("outcome",))
log = logging.getLogger(__name__)


def paid_in_full_at(state: ScheduleState) -> datetime | None:
    """When the invoice became paid in full: the ``paid_at`` of the payment that completed it,
    counting payments in ``paid_at`` order (so the answer does not depend on arrival order).

    ``None`` while not paid in full, or when every counted payment predates recorded payment data.
    """
    if state.invoice is None or paid_amount(state) < state.invoice.summary.total:
        return None
    refused = {r.payment.payment_id for r in refusals(state)}
    counted = [p for p in distinct_payments(state) if p.payment_id not in refused]
    running = sum((p.amount for p in counted if p.data is None), Decimal("0"))  # old entries: no time, paid first
    for payment in sorted((p.data for p in counted if p.data is not None), key=lambda d: d.paid_at):
        running += payment.amount
        if running >= state.invoice.summary.total:
            return payment.paid_at
    return None


class SchedulerHandlers:
    def __init__(
        self,
        publisher: Publisher,
        schedules: Schedules,
        lease: Lease,
        *,
        effectiveness: ChannelEffectiveness,
        tenants: TenantDirectory,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._publisher = publisher
        self._schedules = schedules
        self._lease = lease
        self._effectiveness = effectiveness
        self._tenants = tenants
        self._clock = clock
        #: Ticks this replica swept / left to another replica (tests and logs read them).
        self.swept = 0
        self.skipped = 0

    async def on_invoice_created(self, message: Message[Envelope[InvoiceCreatedV1]]) -> None:
        state = await self._schedules.record_invoice(message.value)
        # Payments recorded before their invoice are judged now (a redelivery republishes the same ids).
        await self._refuse(state, refusals(state))
        await self._credit(state)

    async def on_invoice_rendered(self, message: Message[Envelope[InvoiceRenderedV1]]) -> None:
        event = message.value
        await self._schedules.record_document(event, event.invoice_id or event.data.invoice.invoice_number)

    async def on_payment_received(self, message: Message[Envelope[PaymentReceivedV1]]) -> None:
        event = message.value
        if event.invoice_id is None:
            raise InvalidMessage([FieldError(field="invoice_id", message="a payment must name its invoice")])
        state = await self._schedules.record_payment(event, event.invoice_id)
        mine = event.data.payment_id
        await self._refuse(state, [r for r in refusals(state) if r.payment.payment_id == mine])
        await self._credit(state)

    async def on_invoice_rejected(self, message: Message[Envelope[InvoiceRejectedV1]]) -> None:
        """A render rejection: no document went out, so no reminder may follow. Ingest rejections
        never became an invoice (and may name the invoice a refused *payment* pointed at): ignored."""
        event = message.value
        if event.data.stage != "render" or event.invoice_id is None:
            return
        await self._schedules.record_rejection(event, event.invoice_id)

    async def on_delivery_succeeded(self, message: Message[Envelope[Any]]) -> None:
        """Remember which channel reached the customer, for the most effective channel rule.
        Version 1 events name no customer (and predate the rule): skipped."""
        event = message.value
        if isinstance(event.data, DeliverySucceededV2):
            await self._effectiveness.record_delivery(event)

    async def _credit(self, state: ScheduleState) -> None:
        """Credit a channel once the invoice is paid in full. Learnt for every tenant, with the
        tenant's window or the default one, so the history is there when a tenant turns the mode on."""
        paid_at = paid_in_full_at(state)
        if paid_at is None or state.invoice is None:
            return
        mode = self._tenants.get(state.tenant_id).delivery.most_effective or MostEffective()
        await self._effectiveness.credit_payment(
            state.tenant_id, state.invoice_id, state.invoice.summary.customer.customer_id, paid_at, mode.window_days
        )

    async def _refuse(self, state: ScheduleState, found: list[Refusal]) -> None:
        for refusal in found:
            await self._publisher.publish(unmatched_event(state, refusal))
            UNMATCHED.labels(reason=refusal.reason).inc()
            log.warning(
                "payment not counted toward its invoice",
                extra={"payment_id": refusal.payment.payment_id, "reason": refusal.reason, "detail": refusal.detail},
            )

    async def tick(self) -> list[str] | None:
        """Take or renew the sweep lease, then sweep. ``None`` when another replica holds it."""
        if not await self._lease.acquire():
            self.skipped += 1
            SWEEPS.labels(outcome="other_replica").inc()
            return None
        swept = await self.sweep()
        self.swept += 1
        SWEEPS.labels(outcome="swept").inc()
        return swept

    async def sweep(self) -> list[str]:
        """Publish one overdue reminder per invoice :func:`decide` says is due. Returns their keys.

        Only while this replica holds the lease: checked (and renewed when half spent) before each
        reminder, so a sweep that outlives its term stops instead of racing the new holder.
        """
        now = self._clock()
        published: list[str] = []
        async for state in self._schedules.candidates(now.date()):
            decision = decide(state, now.date())
            if decision.outcome is not Outcome.REMIND:
                continue
            if not await self._lease.keep():
                log.warning("sweep lease lost mid-sweep; stopping", extra={"lease": self._lease.name})
                break
            # Crash before mark_reminded: the next sweep republishes the same event id (harmless).
            await self._publisher.publish(reminder_event(state, decision))
            await self._schedules.mark_reminded(state.tenant_id, state.invoice_id, now)
            REMINDERS.labels(kind="overdue").inc()
            published.append(f"{state.tenant_id}/{state.invoice_id}")
        return published

    async def run_sweeps(self, stopping: asyncio.Event, every_s: float) -> None:
        """Tick until ``stopping`` is set, then release the lease (a clean stop hands over at once).

        A crash or cancellation skips the release: the lease then expires after its ttl and
        another replica takes over.
        """
        while not stopping.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("reminder sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=every_s)
        try:
            await self._lease.release()
        except Exception:
            log.exception("could not release the sweep lease; it expires by itself")
