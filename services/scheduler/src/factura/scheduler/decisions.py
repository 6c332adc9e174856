"""What the scheduler decides, as pure functions of one invoice's recorded state.

No I/O here: :mod:`factura.scheduler.schedule` turns a MongoDB document into a
:class:`ScheduleState`, these functions decide, and the handlers act (publish, mark). Every
decision depends only on the state and the date passed in, so the order in which events arrived
(a payment before its invoice, a rejection before the invoice it rejects) cannot change it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Any

from factura.common.envelope import Envelope, make_event, stable_id
from factura.common.events import (
    CURRENT_VERSION,
    DocumentRef,
    InvoiceSummary,
    PaymentReceivedV1,
    PaymentUnmatchedV2,
    ReminderDueV2,
    UnmatchedReason,
)

PRODUCER = "scheduler"


@dataclass(frozen=True)
class InvoiceInfo:
    """The current version of the invoice (the last ``invoice.created`` seen for its number)."""

    summary: InvoiceSummary
    correlation_id: str
    cause_event_id: str


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
    reminded: bool = False
    #: The document delivered for the invoice (from ``invoice.rendered``), linked from reminders.
    document: DocumentRef | None = None


@dataclass(frozen=True)
class Refusal:
    payment: RecordedPayment
    reason: UnmatchedReason
    invoice_currency: str

    @property
    def detail(self) -> str:
        return f"payment in {self.payment.currency}, invoice in {self.invoice_currency}: not counted toward the invoice"


class Outcome(StrEnum):
    REMIND = "remind"
    NO_INVOICE = "no_invoice"  # only payments or a rejection seen so far
    REJECTED = "rejected"  # the current version was refused at render: nothing was sent, nothing to remind
    PAID = "paid"
    NOT_DUE = "not_due"
    REMINDED = "reminded"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    days_overdue: int = 0
    paid: Decimal = Decimal("0")


def distinct_payments(state: ScheduleState) -> list[RecordedPayment]:
    """One entry per payment id (the first recorded wins), in the order recorded."""
    seen: set[str] = set()
    out = []
    for p in state.payments:
        if p.payment_id not in seen:
            seen.add(p.payment_id)
            out.append(p)
    return out


def refusals(state: ScheduleState) -> list[Refusal]:
    """Payments that cannot count toward the invoice: today, those in another currency.

    Empty while the invoice is unknown: a payment that arrives first is judged when it arrives.
    """
    if state.invoice is None:
        return []
    currency = state.invoice.summary.currency
    return [
        Refusal(p, "currency_mismatch", currency)
        for p in distinct_payments(state)
        if p.currency is not None and p.currency != currency
    ]


def paid_amount(state: ScheduleState) -> Decimal:
    """Sum of the payments that count: same currency as the invoice (or recorded without one)."""
    if state.invoice is None:
        return Decimal("0")
    refused = {r.payment.payment_id for r in refusals(state)}
    return sum((p.amount for p in distinct_payments(state) if p.payment_id not in refused), Decimal("0"))


def is_rejected(state: ScheduleState) -> bool:
    """The current invoice version was refused at render. A corrected version (new event id) is not."""
    if state.invoice is None:
        return bool(state.rejected_causes)
    return None in state.rejected_causes or state.invoice.cause_event_id in state.rejected_causes


def decide(state: ScheduleState, today: date) -> Decision:
    """Whether the one ``overdue`` reminder goes out for this invoice today."""
    if state.invoice is None:
        return Decision(Outcome.NO_INVOICE)
    if is_rejected(state):
        return Decision(Outcome.REJECTED)
    if state.reminded:
        return Decision(Outcome.REMINDED)
    due = state.invoice.summary.due_date
    if due >= today:
        return Decision(Outcome.NOT_DUE)
    paid = paid_amount(state)
    if paid >= state.invoice.summary.total:
        return Decision(Outcome.PAID, paid=paid)
    return Decision(Outcome.REMIND, days_overdue=(today - due).days, paid=paid)


def reminder_event(state: ScheduleState, decision: Decision) -> Envelope[ReminderDueV2]:
    """The ``reminder.due`` for a REMIND decision. Same invoice, due date and kind → same event id,
    so a sweep that crashes before marking, or a second sweeper, publishes a duplicate audit ignores."""
    assert state.invoice is not None and decision.outcome is Outcome.REMIND
    summary = state.invoice.summary
    kind = "overdue"
    return make_event(
        event_id=stable_id(state.tenant_id, state.invoice_id, "reminder", kind, summary.due_date.isoformat()),
        type="reminder.due",
        schema_version=CURRENT_VERSION["reminder.due"],
        data=ReminderDueV2(
            step=kind,
            due_date=summary.due_date,
            days_from_due=decision.days_overdue,
            invoice=summary,
            document=state.document,
        ),
        tenant_id=state.tenant_id,
        invoice_id=state.invoice_id,
        correlation_id=state.invoice.correlation_id,
        causation_id=uuid.UUID(state.invoice.cause_event_id),
        producer=PRODUCER,
    )


def unmatched_event(state: ScheduleState, refusal: Refusal) -> Envelope[PaymentUnmatchedV2]:
    """The ``payment.unmatched`` recording a refusal, caused by the payment.

    Its id depends only on the payment, the reason and the invoice's currency, never on which
    event revealed the mismatch: the payment handler and the invoice handler may both find it
    (payment first or invoice first, or both at once) and publish one event, twice at most.
    """
    p = refusal.payment
    assert p.data is not None and p.event_id is not None and p.correlation_id is not None
    parts = ("payment.unmatched", p.payment_id, refusal.reason, refusal.invoice_currency)
    return make_event(
        event_id=stable_id(state.tenant_id, state.invoice_id, *parts),
        type="payment.unmatched",
        schema_version=CURRENT_VERSION["payment.unmatched"],
        data=PaymentUnmatchedV2(
            reason=refusal.reason, detail=refusal.detail, payment=p.data, invoice_currency=refusal.invoice_currency
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
