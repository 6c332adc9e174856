"""Scheduler handlers (state) and the sweep that publishes reminder.due (decision)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from factura.common.envelope import Envelope, make_event, stable_id, utcnow
from factura.common.events import CURRENT_VERSION, InvoiceCreatedV1, PaymentReceivedV1, ReminderDueV1
from factura.common.kafka.consumer import Message
from factura.common.kafka.producer import Publisher
from factura.common.metrics import counter
from factura.scheduler.schedule import Schedules

PRODUCER = "scheduler"
REMINDERS = counter("reminders_published_total", "reminder.due events published.", ("kind",))
log = logging.getLogger(__name__)


class SchedulerHandlers:
    def __init__(self, publisher: Publisher, schedules: Schedules, clock: Callable[[], datetime] = utcnow) -> None:
        self._publisher = publisher
        self._schedules = schedules
        self._clock = clock

    async def on_invoice_created(self, message: Message[Envelope[InvoiceCreatedV1]]) -> None:
        await self._schedules.record_invoice(message.value)

    async def on_payment_received(self, message: Message[Envelope[PaymentReceivedV1]]) -> None:
        await self._schedules.record_payment(message.value)

    async def sweep(self) -> int:
        """Publish one overdue reminder per unpaid invoice past due. Returns how many."""
        now = self._clock()
        published = 0
        async for item in self._schedules.overdue(now.date()):
            kind = "overdue"
            # Same invoice, due date and kind → same event id: a crash before mark_reminded is harmless.
            event = make_event(
                event_id=stable_id(
                    item.tenant_id, item.invoice_id, "reminder", kind, item.summary.due_date.isoformat()
                ),
                type="reminder.due",
                schema_version=CURRENT_VERSION["reminder.due"],
                data=ReminderDueV1(
                    kind=kind,
                    due_date=item.summary.due_date,
                    days_overdue=(now.date() - item.summary.due_date).days,
                    invoice=item.summary,
                ),
                tenant_id=item.tenant_id,
                invoice_id=item.invoice_id,
                correlation_id=item.correlation_id,
                causation_id=uuid.UUID(item.cause_event_id),
                producer=PRODUCER,
            )
            await self._publisher.publish(event)
            await self._schedules.mark_reminded(item.tenant_id, item.invoice_id, now)
            REMINDERS.labels(kind=kind).inc()
            published += 1
        return published

    async def run_sweeps(self, stopping: asyncio.Event, every_s: float) -> None:
        while not stopping.is_set():
            try:
                await self.sweep()
            except Exception:
                log.exception("reminder sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=every_s)
