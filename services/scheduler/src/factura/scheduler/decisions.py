"""What the scheduler decides, as pure functions of one invoice's recorded state.

No I/O here: :mod:`factura.scheduler.schedule` turns a MongoDB document into a
:class:`ScheduleState`, these functions decide, and the handlers act (publish, mark). Every
decision depends only on the state and the date passed in, so the order in which events arrived
(a payment before its invoice, a rejection before the invoice it rejects) cannot change it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from factura.common.envelope import Envelope, make_event, stable_id
from factura.common.events import (
    CURRENT_VERSION,
    DocumentRef,
    InvoiceSummary,
    PaymentReceivedV1,
    PaymentUnmatchedV2,
    ReceiptDueV1,
    ReminderDueV2,
    TicketDueV1,
    UnmatchedReason,
)
from factura.common.reminders import Cursor, Occurrence

PRODUCER = "scheduler"


@dataclass(frozen=True)
class InvoiceInfo:
    """The current version of the invoice (the last ``invoice.created`` seen for its number)."""

    summary: InvoiceSummary
    correlation_id: str
    cause_event_id: str
    #: Why the customer's contact data cannot be read any more (``customer_erased``: their data key
    #: was destroyed), in which case ``summary.customer`` holds no contact data; ``None`` normally.
    contact_lost: str | None = None


@dataclass(frozen=True)
class RecordedPayment:
    payment_id: str
    amount: Decimal
    #: ``None`` only for payments recorded before currencies were kept: counted, as they were then.
    currency: str | None
    event_id: str | None = None
    correlation_id: str | None = None
    data: PaymentReceivedV1 | None = None


@dataclass(frozen=True)
class ScheduleState:
    tenant_id: str
    invoice_id: str
    invoice: InvoiceInfo | None
    payments: tuple[RecordedPayment, ...] = ()
    #: ``causation_id`` of every render rejection seen (the ``invoice.created`` it refused); ``None``
    #: when a rejection did not say which version it refused.
    rejected_causes: frozenset[str | None] = field(default_factory=frozenset)
    #: The document delivered for the invoice (from ``invoice.rendered``), linked from reminders.
    document: DocumentRef | None = None
    #: ``invoice.cancelled`` seen: cancelled or fully credited by the ERP.
    cancelled: bool = False
    #: The last occurrence of the plan handled (or skipped as already past): ``(at_ms, key)``.
    cursor: Cursor | None = None
    #: The occurrence the timer waits for ("" once nothing is pending; None before the plan started).
    next_key: str | None = None
    next_due_ms: int | None = None
    #: Re-anchor date after a partial payment, when the tenant's plan says so.
    anchor: date | None = None


@dataclass(frozen=True)
class Refusal:
    payment: RecordedPayment
    reason: UnmatchedReason
    invoice_currency: str | None
    #: The part of the payment not counted (all of it but for an overpayment).
    amount: Decimal | None = None

    @property
    def detail(self) -> str:
        if self.reason == "currency_mismatch":
            return f"payment in {self.payment.currency}, invoice in {self.invoice_currency}: not counted"
        if self.reason == "overpayment":
            return f"{self.amount} {self.invoice_currency} more than the invoice's total: the excess is not matched"
        if self.reason == "invoice_cancelled":
            return "the invoice was cancelled or fully credited: the payment matches nothing owed"
        return "no invoice with this number arrived: the payment matches nothing"


def reachable(state: ScheduleState) -> bool:
    """Whether the customer can still be written to: not when their contact data was erased."""
    return state.invoice is not None and state.invoice.contact_lost is None


def distinct_payments(state: ScheduleState) -> list[RecordedPayment]:
    """One entry per payment id (the first recorded wins), in the order recorded."""
    seen: set[str] = set()
    out = []
    for p in state.payments:
        if p.payment_id not in seen:
            seen.add(p.payment_id)
            out.append(p)
    return out


def _currency_refusals(state: ScheduleState) -> list[Refusal]:
    if state.invoice is None:
        return []
    currency = state.invoice.summary.currency
    return [
        Refusal(p, "currency_mismatch", currency, p.amount)
        for p in distinct_payments(state)
        if p.currency is not None and p.currency != currency
    ]


def paid_amount(state: ScheduleState) -> Decimal:
    """Sum of the payments that count: same currency as the invoice (or recorded without one)."""
    if state.invoice is None:
        return Decimal("0")
    refused = {r.payment.payment_id for r in _currency_refusals(state)}
    return sum((p.amount for p in distinct_payments(state) if p.payment_id not in refused), Decimal("0"))


def refusals(state: ScheduleState) -> list[Refusal]:
    """Payments (or parts of them) that match nothing owed: another currency (not counted), the
    excess above the total (the payment that crossed it; counted up to the total), any payment of a
    cancelled invoice. Empty while the invoice is unknown: such a payment is judged when the invoice
    arrives, or reported as ``unknown_invoice`` when the grace period ends (see the sweep)."""
    if state.invoice is None:
        return []
    currency = state.invoice.summary.currency
    if state.cancelled:
        return [Refusal(p, "invoice_cancelled", currency, p.amount) for p in distinct_payments(state)]
    found = _currency_refusals(state)
    refused = {r.payment.payment_id for r in found}
    total, running = state.invoice.summary.total, Decimal("0")
    for p in distinct_payments(state):
        if p.payment_id in refused:
            continue
        before, running = running, running + p.amount
        if running > total:
            found.append(Refusal(p, "overpayment", currency, running - max(before, total)))
    return found


def outstanding(state: ScheduleState) -> Decimal:
    assert state.invoice is not None
    return max(state.invoice.summary.total - paid_amount(state), Decimal("0"))


def is_open(state: ScheduleState) -> bool:
    """Reminders may still go out: the invoice is known, was delivered, is neither cancelled nor paid."""
    return (
        state.invoice is not None
        and not is_rejected(state)
        and not state.cancelled
        and paid_amount(state) < state.invoice.summary.total
    )


def is_rejected(state: ScheduleState) -> bool:
    """The current invoice version was refused at render. A corrected version (new event id) is not."""
    if state.invoice is None:
        return bool(state.rejected_causes)
    return None in state.rejected_causes or state.invoice.cause_event_id in state.rejected_causes


def _flow_event(state: ScheduleState, event_type: str, data: Any, *parts: str) -> Envelope[Any]:
    """An event the plan emits for this invoice: deterministic id (invoice, due date, ``parts``), so
    a sweep that crashes before moving its cursor, or a second sweeper, republishes the same one."""
    assert state.invoice is not None
    due = state.invoice.summary.due_date.isoformat()
    return make_event(
        event_id=stable_id(state.tenant_id, state.invoice_id, event_type, due, *parts),
        type=event_type,
        schema_version=CURRENT_VERSION[event_type],
        data=data,
        tenant_id=state.tenant_id,
        invoice_id=state.invoice_id,
        correlation_id=state.invoice.correlation_id,
        causation_id=uuid.UUID(state.invoice.cause_event_id),
        producer=PRODUCER,
    )


def occurrence_event(state: ScheduleState, occurrence: Occurrence) -> Envelope[Any]:
    """``reminder.due`` for a reminder step, a repeat or an escalation call; ``ticket.due`` for the ticket.

    A re-anchored plan (after a partial payment) is a new series: its ids carry the anchor, so a
    step sent before the payment and due again after it goes out again rather than being taken
    for a duplicate.
    """
    assert state.invoice is not None
    series = (occurrence.key, state.anchor.isoformat()) if state.anchor else (occurrence.key,)
    summary = state.invoice.summary
    owed = outstanding(state)
    if occurrence.kind == "ticket":
        data: Any = TicketDueV1(
            step=occurrence.step, days_from_due=occurrence.days_from_due, outstanding=owed, invoice=summary
        )
        return _flow_event(state, "ticket.due", data, *series)
    data = ReminderDueV2(
        step=occurrence.step,
        due_date=summary.due_date,
        days_from_due=occurrence.days_from_due,
        invoice=summary,
        document=state.document,
        channels=list(occurrence.channels) if occurrence.channels else None,
        outstanding=owed if owed < summary.total else None,
        occurrence=occurrence.occurrence,
    )
    return _flow_event(state, "reminder.due", data, *series)


def receipt_event(state: ScheduleState, paid_at: datetime) -> Envelope[ReceiptDueV1]:
    """The thank-you message once the invoice is paid in full (one per invoice and due date)."""
    assert state.invoice is not None
    data = ReceiptDueV1(
        invoice=state.invoice.summary, paid=paid_amount(state), paid_at=paid_at, document=state.document
    )
    return _flow_event(state, "receipt.due", data)


def unmatched_event(state: ScheduleState, refusal: Refusal) -> Envelope[PaymentUnmatchedV2]:
    """The ``payment.unmatched`` recording a refusal, caused by the payment.

    Its id depends only on the payment, the reason and the invoice's currency, never on which
    event revealed the mismatch: the payment handler and the invoice handler may both find it
    (payment first or invoice first, or both at once) and publish one event, twice at most.
    """
    p = refusal.payment
    assert p.data is not None and p.event_id is not None and p.correlation_id is not None
    parts = ("payment.unmatched", p.payment_id, refusal.reason, refusal.invoice_currency or "")
    return make_event(
        event_id=stable_id(state.tenant_id, state.invoice_id, *parts),
        type="payment.unmatched",
        schema_version=CURRENT_VERSION["payment.unmatched"],
        data=PaymentUnmatchedV2(
            reason=refusal.reason,
            detail=refusal.detail,
            payment=p.data,
            invoice_currency=refusal.invoice_currency,
            unmatched_amount=refusal.amount,
        ),
        tenant_id=state.tenant_id,
        invoice_id=state.invoice_id,
        correlation_id=p.correlation_id,
        causation_id=uuid.UUID(p.event_id),
        producer=PRODUCER,
    )


def recorded_payment(event: Envelope[PaymentReceivedV1]) -> RecordedPayment:
    payment = event.data
    return RecordedPayment(
        payment_id=payment.payment_id,
        amount=payment.amount,
        currency=payment.currency,
        event_id=str(event.event_id),
        correlation_id=event.correlation_id,
        data=payment,
    )


def payment_from_document(doc: dict[str, Any]) -> RecordedPayment:
    """A stored payment entry; entries written before currencies were kept have only id and amount."""
    data = PaymentReceivedV1.model_validate(doc["data"]) if "data" in doc else None
    return RecordedPayment(
        payment_id=str(doc["payment_id"]),
        amount=Decimal(str(doc["amount"])),
        currency=data.currency if data is not None else None,
        event_id=doc.get("event_id"),
        correlation_id=doc.get("correlation_id"),
        data=data,
    )
