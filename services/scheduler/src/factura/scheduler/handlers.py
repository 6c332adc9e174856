"""Scheduler handlers (record state, judge payments, move each invoice's timer, credit channels) and
the sweep that publishes what the reminder plans say is due: ``reminder.due`` (steps, repeats,
escalation calls), ``ticket.due``, ``payment.unmatched`` for payments whose invoice never came."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from prometheus_client import Gauge

from factura.common.delivery.effectiveness import ChannelEffectiveness
from factura.common.delivery.policy import MostEffective
from factura.common.envelope import Envelope, utcnow
from factura.common.errors import InvalidMessage
from factura.common.events import (
    DeliverySucceededV2,
    FieldError,
    InvoiceCancelledV1,
    InvoiceCreatedV1,
    InvoiceRejectedV2,
    InvoiceRenderedV1,
    PaymentReceivedV1,
)
from factura.common.kafka.consumer import Message
from factura.common.kafka.producer import Publisher
from factura.common.lease import Lease
from factura.common.metrics import PREFIX, counter
from factura.common.reminders import (
    Occurrence,
    ReminderPlan,
    first_for_new_invoice,
    local_date,
    next_after,
    next_window_start,
    window_open,
)
from factura.common.tenants import TenantDirectory
from factura.scheduler.decisions import (
    RecordedPayment,
    Refusal,
    ScheduleState,
    distinct_payments,
    is_open,
    occurrence_event,
    paid_amount,
    reachable,
    receipt_event,
    refusals,
    unmatched_event,
)
from factura.scheduler.schedule import NEVER, Schedules

REMINDERS = counter("reminders_published_total", "Plan occurrences published, by kind.", ("kind",))
RESCHEDULED = counter("reminders_rescheduled_total", "Occurrences found due outside the send window, moved.", ())
RECEIPTS = counter("receipts_published_total", "receipt.due events published.", ())
UNMATCHED = counter("payments_unmatched_total", "Payments not counted toward their invoice.", ("reason",))
STOPPED = counter(
    "reminders_stopped_total",
    "Open invoices whose reminders stopped because the customer can no longer be reached, by reason.",
    ("reason",),
)
SWEEPS = counter("reminder_sweeps_total", "Scheduler ticks, by whether this replica swept.", ("outcome",))
APPLIED = counter(
    "payments_applied_total",
    "Payments that lowered what their invoice owes, by whether a reminder occurrence was behind the "
    "invoice's plan when the payment came (after_reminder).",
    ("after_reminder",),
)
OVERDUE_INVOICES = Gauge(
    f"{PREFIX}overdue_invoices",
    "Open invoices past their due date, per currency (set by the replica holding the sweep lease: use max()).",
    ["currency"],
)
OVERDUE_AMOUNT = Gauge(
    f"{PREFIX}overdue_amount",
    "What open invoices past their due date still owe, per currency (set by the sweep lease holder: use max()).",
    ["currency"],
)
log = logging.getLogger(__name__)
#: ``next_key`` of a schedule that has payments but no invoice yet: its timer is the grace period;
#: once the payments were reported ``unknown_invoice``, the schedule waits without a timer (a late
#: invoice still starts its plan, a further payment starts a new grace period).
ORPHAN = "unknown-invoice"
REPORTED = "unknown-invoice-reported"
#: Rounds of one sweep (each a batch of due schedules) before it leaves the rest to the next tick.
MAX_ROUNDS = 1000


def _labelled(gauge: Gauge) -> list[tuple[str, ...]]:
    """Label values the gauge has been set for."""
    return [tuple(sample.labels.values()) for metric in gauge.collect() for sample in metric.samples]


def counted_payments(state: ScheduleState) -> list[RecordedPayment]:
    """Payments that count toward the invoice: an overpayment counts up to the total (only its
    excess is unmatched); a payment in another currency does not."""
    refused = {r.payment.payment_id for r in refusals(state) if r.reason == "currency_mismatch"}
    return [p for p in distinct_payments(state) if p.payment_id not in refused]


def paid_in_full_at(state: ScheduleState) -> datetime | None:
    """When the invoice became paid in full: the ``paid_at`` of the payment that completed it,
    counting payments in ``paid_at`` order (so the answer does not depend on arrival order).

    ``None`` while not paid in full, or when every counted payment predates recorded payment data.
    """
    if state.invoice is None or state.cancelled or paid_amount(state) < state.invoice.summary.total:
        return None
    counted = counted_payments(state)
    running = sum((p.amount for p in counted if p.data is None), Decimal("0"))  # old entries: no time, paid first
    for payment in sorted((p.data for p in counted if p.data is not None), key=lambda d: d.paid_at):
        running += payment.amount
        if running >= state.invoice.summary.total:
            return payment.paid_at
    return None


@dataclass(frozen=True)
class Firing:
    """A due occurrence of one invoice's plan: the event to publish, then where its timer goes."""

    state: ScheduleState
    occurrence: Occurrence
    event: Envelope[Any]
    upcoming: Occurrence | None


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
        unknown_invoice_grace: timedelta = timedelta(days=1),
        batch: int = 1000,
    ) -> None:
        self._publisher = publisher
        self._schedules = schedules
        self._lease = lease
        self._effectiveness = effectiveness
        self._tenants = tenants
        self._clock = clock
        self._grace_ms = int(unknown_invoice_grace.total_seconds() * 1000)
        self._batch = batch
        #: Ticks this replica swept / left to another replica (tests and logs read them).
        self.swept = 0
        self.skipped = 0
        for after_reminder in ("true", "false"):  # a rate of 0 from startup, not "no data"
            APPLIED.labels(after_reminder)

    def _now_ms(self) -> int:
        return int(self._clock().timestamp() * 1000)

    def _plan(self, state: ScheduleState) -> ReminderPlan:
        return self._tenants.get(state.tenant_id).reminders

    # -- events --------------------------------------------------------------------------------

    async def on_invoice_created(self, message: Message[Envelope[InvoiceCreatedV1]]) -> None:
        state, lowered = await self._schedules.record_invoice_owed(message.value)
        if lowered:  # payments that came before their invoice count now; no reminder can have gone out
            APPLIED.labels(after_reminder="false").inc(len(counted_payments(state)))
        # Payments recorded before their invoice are judged now (a redelivery republishes the same ids).
        await self._refuse(state, refusals(state))
        await self._credit(state)
        await self._schedule(state)
        paid_at = paid_in_full_at(state)
        if paid_at is not None and self._plan(state).receipt and reachable(state):  # paid before its invoice came
            await self._publisher.publish(receipt_event(state, paid_at))

    async def on_invoice_rendered(self, message: Message[Envelope[InvoiceRenderedV1]]) -> None:
        event = message.value
        await self._schedules.record_document(event, event.invoice_id or event.data.invoice.invoice_number)

    async def on_payment_received(self, message: Message[Envelope[PaymentReceivedV1]]) -> None:
        event = message.value
        if event.invoice_id is None:
            raise InvalidMessage([FieldError(field="invoice_id", message="a payment must name its invoice")])
        state, lowered = await self._schedules.apply_payment(event, event.invoice_id)
        if lowered:
            # A cursor means an occurrence of the plan is behind the invoice: sent, or (for an
            # invoice that came late) skipped as past while the latest past one goes out at once.
            APPLIED.labels(after_reminder="true" if state.cursor is not None else "false").inc()
        mine = event.data.payment_id
        await self._refuse(state, [r for r in refusals(state) if r.payment.payment_id == mine])
        await self._credit(state)
        if state.invoice is None:  # its invoice may still come; if not, the sweep reports it
            if state.next_key in (None, REPORTED):
                await self._schedules.plan(
                    state, cursor=None, key=ORPHAN, due_ms=self._now_ms() + self._grace_ms, fresh=state.next_key is None
                )
            return
        paid_at = paid_in_full_at(state)
        if paid_at is not None:
            await self._schedules.close(state.tenant_id, state.invoice_id)  # every pending step, at once
            if self._plan(state).receipt and reachable(state):
                await self._publisher.publish(receipt_event(state, paid_at))
                RECEIPTS.inc()
            return
        plan = self._plan(state)
        counted = counted_payments(state)
        if plan.reanchor_on_partial and any(p.payment_id == mine for p in counted):
            # From the latest payment that counts, whatever order the payments arrive in.
            latest = max(p.data.paid_at for p in counted if p.data is not None)
            anchor = local_date(plan, int(latest.timestamp() * 1000))
            if anchor != state.anchor:
                await self._schedules.set_anchor(state.tenant_id, state.invoice_id, anchor)
                await self._schedule(dataclasses.replace(state, anchor=anchor))

    async def on_invoice_cancelled(self, message: Message[Envelope[InvoiceCancelledV1]]) -> None:
        event = message.value
        if event.invoice_id is None:
            raise InvalidMessage([FieldError(field="invoice_id", message="a cancellation must name its invoice")])
        state = await self._schedules.record_cancellation(event, event.invoice_id)
        await self._schedules.close(state.tenant_id, state.invoice_id)
        await self._refuse(state, refusals(state))

    async def on_invoice_rejected(self, message: Message[Envelope[InvoiceRejectedV2]]) -> None:
        """A render rejection: no document went out, so no reminder may follow. Ingest rejections
        never became an invoice (and may name the invoice a refused *payment* pointed at): ignored."""
        event = message.value
        if event.data.stage != "render" or event.invoice_id is None:
            return
        await self._schedules.record_rejection(event, event.invoice_id)
        await self._schedules.close(event.tenant_id, event.invoice_id)

    async def on_delivery_succeeded(self, message: Message[Envelope[Any]]) -> None:
        """Remember which channel reached the customer, for the most effective channel rule.
        Version 1 events name no customer (and predate the rule): skipped."""
        event = message.value
        if isinstance(event.data, DeliverySucceededV2):
            await self._effectiveness.record_delivery(event)

    # -- the timer -----------------------------------------------------------------------------

    async def _schedule(self, state: ScheduleState) -> None:
        """Start the invoice's plan (a late invoice starts at its most recent past occurrence: sent
        once, older ones skipped), or re-plan it after a corrected invoice or a re-anchor."""
        if state.invoice is None:
            return
        if not is_open(state):
            await self._schedules.close(state.tenant_id, state.invoice_id)
            return
        if not reachable(state):
            await self._stop(state)
            return
        plan, due = self._plan(state), state.invoice.summary.due_date
        # A fresh plan (or one closed before anything was sent and open again: a corrected version
        # after a render rejection) starts at the most recent past occurrence; otherwise it goes on
        # from its cursor, so an occurrence missed while the sweep was down is still sent, once.
        restart = state.next_key in (None, ORPHAN, REPORTED) or (state.next_key == "" and state.cursor is None)
        cursor = first_for_new_invoice(plan, due, self._now_ms(), anchor=state.anchor) if restart else state.cursor
        upcoming = next_after(plan, due, cursor, anchor=state.anchor)
        await self._schedules.plan(
            state,
            cursor=cursor,
            key=upcoming.key if upcoming else "",
            due_ms=upcoming.at_ms if upcoming else NEVER,
            fresh=state.next_key is None,
        )

    async def _stop(self, state: ScheduleState) -> None:
        """Stop an open invoice's reminders for good: its customer's contact data was erased. The
        invoice still owes (the overdue figures keep it); the reason stays on the schedule."""
        reason = state.invoice.contact_lost if state.invoice else None
        await self._schedules.close(state.tenant_id, state.invoice_id, stopped=reason)
        STOPPED.labels(reason=reason).inc()
        log.warning(
            "reminders stopped: the customer cannot be reached",
            extra={"tenant_id": state.tenant_id, "invoice_id": state.invoice_id, "reason": reason},
        )

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
                "payment not matched to what the invoice owes",
                extra={"payment_id": refusal.payment.payment_id, "reason": refusal.reason, "detail": refusal.detail},
            )

    # -- the sweep -----------------------------------------------------------------------------

    async def tick(self) -> list[str] | None:
        """Take or renew the sweep lease, then sweep. ``None`` when another replica holds it."""
        if not await self._lease.acquire():
            self.skipped += 1
            SWEEPS.labels(outcome="other_replica").inc()
            OVERDUE_INVOICES.clear()  # the holder's figures are the ones; none stale from here
            OVERDUE_AMOUNT.clear()
            return None
        swept = await self.sweep()
        self.swept += 1
        SWEEPS.labels(outcome="swept").inc()
        await self.measure_overdue()
        return swept

    async def measure_overdue(self) -> None:
        """Set the overdue gauges from one aggregation. A currency with nothing overdue reads 0: one
        seen before, and each tenant's own currency (so the series exist before anything is late)."""
        try:
            overdue = await self._schedules.overdue(self._clock().date())
        except Exception:  # the gauges wait for the next tick; the sweep itself went through
            log.warning("overdue gauges not refreshed", exc_info=True)
            return
        for gauge in (OVERDUE_INVOICES, OVERDUE_AMOUNT):
            known = {key[0] for key in _labelled(gauge)} | {tenant.delivery.currency for tenant in self._tenants}
            for currency in known - overdue.keys():
                gauge.labels(currency).set(0)
        for currency, figures in overdue.items():
            OVERDUE_INVOICES.labels(currency).set(figures.invoices)
            OVERDUE_AMOUNT.labels(currency).set(figures.amount)

    async def sweep(self) -> list[str]:
        """Publish every occurrence that is due, then move each timer past it. Returns the keys
        (``tenant/invoice/occurrence``) published.

        Due schedules come in batches of ``batch``: the batch's events are published together and
        only once the broker has acknowledged all of them do their timers move, so a crash in
        between republishes the same event ids (harmless) and never skips one. Only while this
        replica holds the lease: checked (and renewed when half spent) before each batch, so a
        sweep that outlives its term stops instead of racing the new holder. An occurrence found
        due outside the tenant's send window (the service was down) moves to the next window
        start: sent then, once.
        """
        now_ms = self._now_ms()
        published: list[str] = []
        for _ in range(MAX_ROUNDS):  # a bound, never reached: every round moves each timer it saw
            if not await self._lease.keep():
                log.warning("sweep lease lost mid-sweep; stopping", extra={"lease": self._lease.name})
                return published
            due = await self._schedules.due(now_ms, self._batch)
            firings = [f for f in [await self._prepare(state, now_ms) for state in due] if f is not None]
            await asyncio.gather(*(self._publisher.publish(f.event) for f in firings))
            await asyncio.gather(*(self._advance(f) for f in firings))
            published += [f"{f.state.tenant_id}/{f.state.invoice_id}/{f.occurrence.key}" for f in firings]
            # Another round while anything fired: a timer may have moved onto an occurrence due at
            # the same instant (a repeat shifted onto a call's Monday), which goes out now, not a tick later.
            if len(due) < self._batch and not firings:
                return published
        log.warning("sweep stopped after %d rounds with occurrences still due", MAX_ROUNDS)
        return published

    async def _prepare(self, state: ScheduleState, now_ms: int) -> Firing | None:
        """The event to publish for a due schedule, or ``None`` after handling what needs no event
        (closing a schedule that is no longer open, re-planning, waiting for the send window)."""
        if state.next_key == ORPHAN:
            await self._orphaned(state)
            return None
        if state.invoice is None or not is_open(state):
            await self._schedules.close(state.tenant_id, state.invoice_id)
            return None
        if not reachable(state):
            await self._stop(state)
            return None
        plan, due = self._plan(state), state.invoice.summary.due_date
        occurrence = next_after(plan, due, state.cursor, anchor=state.anchor)
        if occurrence is None or occurrence.key != state.next_key:  # the plan changed: re-plan, send nothing
            await self._schedules.plan(
                state,
                cursor=state.cursor,
                key=occurrence.key if occurrence else "",
                due_ms=occurrence.at_ms if occurrence else NEVER,
            )
            return None
        if not window_open(plan, now_ms):
            RESCHEDULED.inc()
            await self._schedules.plan(
                state, cursor=state.cursor, key=occurrence.key, due_ms=next_window_start(plan, now_ms)
            )
            return None
        upcoming = next_after(plan, due, occurrence.cursor, anchor=state.anchor)
        return Firing(state, occurrence, occurrence_event(state, occurrence), upcoming)

    async def _advance(self, firing: Firing) -> None:
        REMINDERS.labels(kind=firing.occurrence.kind).inc()
        upcoming = firing.upcoming
        await self._schedules.plan(
            firing.state,
            cursor=firing.occurrence.cursor,
            key=upcoming.key if upcoming else "",
            due_ms=upcoming.at_ms if upcoming else NEVER,
        )

    async def _orphaned(self, state: ScheduleState) -> None:
        """A payment whose invoice never arrived within the grace period: ``payment.unmatched``."""
        for payment in distinct_payments(state):
            await self._publisher.publish(
                unmatched_event(state, Refusal(payment, "unknown_invoice", None, payment.amount))
            )
            UNMATCHED.labels(reason="unknown_invoice").inc()
        await self._schedules.plan(state, cursor=None, key=REPORTED, due_ms=NEVER)

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
