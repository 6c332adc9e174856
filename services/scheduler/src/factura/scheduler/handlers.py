"""Scheduler handlers (record state, refuse payments) and the sweep that publishes reminder.due."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from factura.common.envelope import Envelope, utcnow
from factura.common.errors import InvalidMessage
from factura.common.events import (
    FieldError,
    InvoiceCreatedV1,
    InvoiceRejectedV1,
    InvoiceRenderedV1,
    PaymentReceivedV1,
)
from factura.common.kafka.consumer import Message
from factura.common.kafka.producer import Publisher
from factura.common.metrics import counter
from factura.scheduler.decisions import (
    Outcome,
    Refusal,
    ScheduleState,
    decide,
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


class SchedulerHandlers:
    def __init__(
        self, publisher: Publisher, schedules: Schedules, lease: Lease, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._publisher = publisher
        self._schedules = schedules
        self._lease = lease
        self._clock = clock
        #: Ticks this replica swept / left to another replica (tests and logs read them).
        self.swept = 0
        self.skipped = 0

    async def on_invoice_created(self, message: Message[Envelope[InvoiceCreatedV1]]) -> None:
        state = await self._schedules.record_invoice(message.value)
        # Payments recorded before their invoice are judged now (a redelivery republishes the same ids).
        await self._refuse(state, refusals(state))

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

    async def on_invoice_rejected(self, message: Message[Envelope[InvoiceRejectedV1]]) -> None:
        """A render rejection: no document went out, so no reminder may follow. Ingest rejections
        never became an invoice (and may name the invoice a refused *payment* pointed at): ignored."""
        event = message.value
        if event.data.stage != "render" or event.invoice_id is None:
            return
        await self._schedules.record_rejection(event, event.invoice_id)

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
