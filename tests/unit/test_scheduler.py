"""The scheduler's decisions as pure functions: what is paid, what is refused, what each reminder says.

The timer and the sweep (when each occurrence goes out) run on the real servers in
``tests/integration/test_scheduler.py``; the calendar itself is in ``test_reminder_plan.py``.
The builders at the top are shared with the integration tests and ``test_effectiveness.py``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from factura.common.envelope import Envelope, child_of, make_event
from factura.common.events import (
    CURRENT_VERSION,
    DocumentRef,
    FieldError,
    InvoiceCancelledV1,
    InvoiceCreatedV1,
    InvoiceRejectedV2,
    InvoiceRenderedV1,
    PaymentReceivedV1,
    ReceiptDueV1,
    ReminderDueV2,
    TicketDueV1,
    parse_event,
    summary_of,
)
from factura.common.reminders import Occurrence, ReminderPlan, occurrences
from factura.common.schemas import EXAMPLES_DIR
from factura.common.topics import event_topics
from factura.scheduler.decisions import (
    InvoiceInfo,
    RecordedPayment,
    Refusal,
    ScheduleState,
    is_open,
    is_rejected,
    occurrence_event,
    outstanding,
    paid_amount,
    payment_from_document,
    receipt_event,
    recorded_payment,
    refusals,
    unmatched_event,
)
from factura.scheduler.settings import Settings

TENANT = "harinas-sur"
TODAY = date(2026, 12, 10)
PAID_AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
_INVOICE = json.loads((EXAMPLES_DIR / "invoice.created.v1.json").read_text(encoding="utf-8"))
_RENDERED = json.loads((EXAMPLES_DIR / "invoice.rendered.v1.json").read_text(encoding="utf-8"))


def invoice_created(
    number: str,
    *,
    due: date = TODAY - timedelta(days=3),
    currency: str = "EUR",
    total: str = "100.00",
    tenant: str = TENANT,
) -> Envelope[InvoiceCreatedV1]:
    """An ``invoice.created`` with its own event id (each call is a new version of ``number``)."""
    raw: dict[str, Any] = _INVOICE | {"event_id": str(uuid.uuid4()), "tenant_id": tenant, "invoice_id": number}
    raw["correlation_id"] = raw["event_id"]
    raw["data"] = _INVOICE["data"] | {
        "invoice_number": number,
        "due_date": due.isoformat(),
        "currency": currency,
        "total": total,
    }
    return parse_event(json.dumps(raw))


def payment_received(
    invoice_id: str,
    amount: str,
    currency: str = "EUR",
    *,
    payment_id: str | None = None,
    tenant: str = TENANT,
    paid_at: datetime = PAID_AT,
) -> Envelope[PaymentReceivedV1]:
    event_id = uuid.uuid4()
    return make_event(
        event_id=event_id,
        type="payment.received",
        schema_version=CURRENT_VERSION["payment.received"],
        data=PaymentReceivedV1(
            payment_id=payment_id or f"P-{uuid.uuid4().hex[:8]}",
            amount=Decimal(amount),
            currency=currency,
            paid_at=paid_at,
            method="sepa_transfer",
        ),
        tenant_id=tenant,
        invoice_id=invoice_id,
        correlation_id=str(event_id),
        causation_id=None,
        producer="ingest",
    )


def invoice_rejected(created: Envelope[InvoiceCreatedV1], stage: str = "render") -> Envelope[InvoiceRejectedV2]:
    """What the renderer publishes for ``created`` (caused by it, same invoice id)."""
    return child_of(
        created,
        type="invoice.rejected",
        schema_version=CURRENT_VERSION["invoice.rejected"],
        data=InvoiceRejectedV2.model_validate(
            {
                "source_topic": "invoice.created",
                "source_offset": "invoice.created/0/1",
                "stage": stage,
                "reasons": [FieldError(field="lines", message="too many lines to render")],
                "erp_reference": created.data.invoice_number,
            }
        ),
        producer="renderer",
    )


def invoice_rendered(created: Envelope[InvoiceCreatedV1]) -> Envelope[InvoiceRenderedV1]:
    """What the renderer publishes for ``created``: the document reminders link to."""
    number = created.data.invoice_number
    document = _RENDERED["data"]["document"] | {"key": f"{created.tenant_id}/{number}.pdf", "filename": f"{number}.pdf"}
    data = _RENDERED["data"] | {"document": document, "invoice": summary_of(created.data).model_dump(mode="json")}
    return child_of(
        created,
        type="invoice.rendered",
        schema_version=CURRENT_VERSION["invoice.rendered"],
        data=InvoiceRenderedV1.model_validate(data),
        producer="renderer",
    )


def invoice_cancelled(invoice_id: str, *, tenant: str = TENANT) -> Envelope[InvoiceCancelledV1]:
    """What ingest publishes for a full credit note from the ERP."""
    event_id = uuid.uuid4()
    return make_event(
        event_id=event_id,
        type="invoice.cancelled",
        schema_version=CURRENT_VERSION["invoice.cancelled"],
        data=InvoiceCancelledV1(
            kind="credit_note", credit_note_number=f"R-{invoice_id}", cancelled_at=PAID_AT, erp_source="sap-s4"
        ),
        tenant_id=tenant,
        invoice_id=invoice_id,
        correlation_id=str(event_id),
        causation_id=None,
        producer="ingest",
    )


def state_of(
    created: Envelope[InvoiceCreatedV1] | None,
    payments: Sequence[Envelope[PaymentReceivedV1]] = (),
    rejected_causes: set[str | None] | None = None,
    *,
    cancelled: bool = False,
    document: DocumentRef | None = None,
) -> ScheduleState:
    invoice = None
    if created is not None:
        invoice = InvoiceInfo(summary_of(created.data), created.correlation_id, str(created.event_id))
    return ScheduleState(
        tenant_id=TENANT,
        invoice_id=created.data.invoice_number if created is not None else "F-1",
        invoice=invoice,
        payments=tuple(recorded_payment(p) for p in payments),
        rejected_causes=frozenset(rejected_causes or set()),
        document=document,
        cancelled=cancelled,
    )


# --- payments that count ---------------------------------------------------------------------------


def test_a_payment_alone_is_no_invoice_and_never_open() -> None:
    state = state_of(None, [payment_received("F-1", "5.00")])
    assert not is_open(state) and paid_amount(state) == 0
    assert refusals(state) == []  # judged when the invoice arrives, or as unknown_invoice after the grace period


def test_paid_in_full_closes_partial_leaves_it_open_with_what_is_owed() -> None:
    created = invoice_created("F-1", total="100.00")
    full = state_of(created, [payment_received("F-1", "60.00"), payment_received("F-1", "40.00")])
    assert not is_open(full) and outstanding(full) == 0
    partial = state_of(created, [payment_received("F-1", "60.00")])
    assert is_open(partial) and paid_amount(partial) == Decimal("60.00") and outstanding(partial) == Decimal("40.00")
    assert is_open(state_of(created))


def test_a_payment_id_counts_once_even_if_recorded_twice() -> None:
    created = invoice_created("F-1", total="100.00")
    p = payment_received("F-1", "60.00", payment_id="P-1")
    again = payment_received("F-1", "60.00", payment_id="P-1")  # redelivered under another event id
    state = state_of(created, [p, again])
    assert paid_amount(state) == Decimal("60.00") and is_open(state) and refusals(state) == []


def test_payments_stored_before_currencies_were_kept_still_count() -> None:
    legacy = payment_from_document({"payment_id": "P-old", "amount": "100.00"})
    assert legacy.currency is None and legacy.data is None
    created = invoice_created("F-1", total="100.00")
    state = ScheduleState(TENANT, "F-1", state_of(created).invoice, payments=(legacy,))
    assert refusals(state) == [] and not is_open(state)


def test_stored_payment_round_trips() -> None:
    event = payment_received("F-1", "12.34", "RON")
    stored = {
        "payment_id": event.data.payment_id,
        "amount": "12.34",
        "event_id": str(event.event_id),
        "correlation_id": event.correlation_id,
        "data": event.data.model_dump(mode="json"),
    }
    assert (
        payment_from_document(stored)
        == recorded_payment(event)
        == RecordedPayment(
            event.data.payment_id, Decimal("12.34"), "RON", str(event.event_id), event.correlation_id, event.data
        )
    )


# --- payments that match nothing owed ------------------------------------------------------------


def test_payment_in_another_currency_is_refused_and_not_counted() -> None:
    created = invoice_created("F-1", currency="EUR", total="100.00")
    usd = payment_received("F-1", "100.00", "USD")
    state = state_of(created, [usd, payment_received("F-1", "30.00", "EUR")])
    [refusal] = refusals(state)
    assert refusal.payment.payment_id == usd.data.payment_id
    assert (refusal.reason, refusal.invoice_currency, refusal.amount) == ("currency_mismatch", "EUR", Decimal("100"))
    assert "USD" in refusal.detail and "EUR" in refusal.detail
    assert paid_amount(state) == Decimal("30.00") and is_open(state)


def test_a_payment_before_its_invoice_is_judged_when_the_invoice_arrives() -> None:
    usd = payment_received("F-1", "100.00", "USD")
    assert refusals(state_of(None, [usd])) == []  # nothing to compare with yet
    assert [r.payment.payment_id for r in refusals(state_of(invoice_created("F-1"), [usd]))] == [usd.data.payment_id]


def test_the_payment_that_crosses_the_total_is_refused_for_the_excess_only() -> None:
    created = invoice_created("F-1", total="100.00")
    first, second, third = (payment_received("F-1", a) for a in ("60.00", "70.00", "20.00"))
    state = state_of(created, [first, second, third])
    found = {r.payment.payment_id: r for r in refusals(state)}
    assert set(found) == {second.data.payment_id, third.data.payment_id}  # the first one fits
    assert found[second.data.payment_id].amount == Decimal("30.00")  # 60 + 70 - 100
    assert found[third.data.payment_id].amount == Decimal("20.00")  # all of it: the total was reached
    assert {r.reason for r in found.values()} == {"overpayment"}
    assert "30.00 EUR" in found[second.data.payment_id].detail
    assert not is_open(state) and outstanding(state) == 0
    # Exactly the total is no overpayment; another currency does not count toward the excess.
    assert refusals(state_of(created, [first, payment_received("F-1", "40.00")])) == []
    [usd] = refusals(state_of(created, [first, payment_received("F-1", "70.00", "USD")]))
    assert usd.reason == "currency_mismatch"


def test_every_payment_of_a_cancelled_invoice_is_refused_and_it_is_closed() -> None:
    created = invoice_created("F-1", total="100.00")
    payments = [payment_received("F-1", "30.00"), payment_received("F-1", "50.00", "USD")]
    state = state_of(created, payments, cancelled=True)
    assert not is_open(state)
    found = refusals(state)
    assert [(r.payment.payment_id, r.reason, r.amount) for r in found] == [
        (payments[0].data.payment_id, "invoice_cancelled", Decimal("30.00")),
        (payments[1].data.payment_id, "invoice_cancelled", Decimal("50.00")),
    ]
    assert "cancelled" in found[0].detail


def test_unmatched_event_has_one_id_whichever_event_revealed_it() -> None:
    usd = payment_received("F-1", "100.00", "USD")
    eur_payment = payment_received("F-1", "10.00")
    v1, v2 = invoice_created("F-1"), invoice_created("F-1")  # same currency, two versions
    # payment first (state as the invoice handler sees it) vs invoice first (as the payment handler sees it)
    a = unmatched_event(state_of(v1, [usd, eur_payment]), refusals(state_of(v1, [usd, eur_payment]))[0])
    b = unmatched_event(state_of(v2, [eur_payment, usd]), refusals(state_of(v2, [eur_payment, usd]))[0])
    assert a.event_id == b.event_id
    assert a.causation_id == usd.event_id and a.correlation_id == usd.correlation_id and a.invoice_id == "F-1"
    gbp = invoice_created("F-1", currency="GBP")
    c = unmatched_event(state_of(gbp, [usd]), refusals(state_of(gbp, [usd]))[0])
    assert c.event_id != a.event_id  # another invoice currency is another refusal
    parsed = parse_event(a.model_dump_json())  # valid on the wire
    assert parsed.type == "payment.unmatched" and parsed.data.payment == usd.data
    assert parsed.data.reason == "currency_mismatch" and parsed.data.invoice_currency == "EUR"


def test_unmatched_events_carry_the_reason_and_the_amount_not_counted() -> None:
    created = invoice_created("F-1", total="100.00")
    over = payment_received("F-1", "130.00")
    [refusal] = refusals(state_of(created, [over]))
    event = parse_event(unmatched_event(state_of(created, [over]), refusal).model_dump_json())
    assert event.schema_version == 2 and event.producer == "scheduler"
    assert (event.data.reason, event.data.unmatched_amount, event.data.invoice_currency) == (
        "overpayment",
        Decimal("30.00"),
        "EUR",
    )
    # What the sweep publishes for a payment whose invoice never came: no invoice currency to name.
    orphan = state_of(None, [over])
    unknown = unmatched_event(orphan, Refusal(orphan.payments[0], "unknown_invoice", None, over.data.amount))
    parsed = parse_event(unknown.model_dump_json())
    assert (parsed.data.reason, parsed.data.invoice_currency, parsed.data.unmatched_amount) == (
        "unknown_invoice",
        None,
        Decimal("130.00"),
    )
    assert "no invoice" in parsed.data.detail and parsed.causation_id == over.event_id
    assert unknown.event_id != event.event_id


# --- render rejections ---------------------------------------------------------------------------


def test_an_invoice_rejected_at_render_is_closed() -> None:
    created = invoice_created("F-1")
    rejected = invoice_rejected(created)
    assert rejected.causation_id == created.event_id and rejected.invoice_id == "F-1"
    state = state_of(created, rejected_causes={str(created.event_id)})
    assert is_rejected(state) and not is_open(state)


def test_a_rejection_without_cause_rejects_whatever_version() -> None:
    assert not is_open(state_of(invoice_created("F-1"), rejected_causes={None}))


def test_a_corrected_version_that_renders_is_open_again() -> None:
    v1, v2 = invoice_created("F-1"), invoice_created("F-1")
    state = state_of(v2, rejected_causes={str(v1.event_id)})
    assert not is_rejected(state) and is_open(state)


def test_rejection_beats_a_partial_payment() -> None:
    created = invoice_created("F-1", total="100.00")
    assert not is_open(state_of(created, [payment_received("F-1", "1.00")], {str(created.event_id)}))


# --- what each occurrence publishes --------------------------------------------------------------

PLAN = ReminderPlan.model_validate(
    {
        "steps": [
            {"name": "before-5", "offset_days": -5, "channels": ["email"]},
            {"name": "due", "offset_days": 0},
            {"name": "after-3", "offset_days": 3, "channels": ["sms", "email"]},
        ],
        "repeat": {"every_days": 7, "max_times": 2},
        "escalation": {"after_days": 20, "every_days": 7, "max_times": 1},
        "ticket": {"after_days": 25, "url": "https://helpdesk.example.com/hooks/factura"},
    }
)


def occurrence(due: date, key: str) -> Occurrence:
    return next(o for o in occurrences(PLAN, due) if o.key == key)


def test_a_reminder_carries_step_occurrence_days_channels_and_the_document() -> None:
    due = date(2026, 3, 16)
    created = invoice_created("F-1", due=due, total="100.00")
    document = invoice_rendered(created).data.document
    state = state_of(created, document=document)

    first = parse_event(occurrence_event(state, occurrence(due, "due#1")).model_dump_json())
    assert first.type == "reminder.due" and first.schema_version == 2 and isinstance(first.data, ReminderDueV2)
    assert (first.data.step, first.data.occurrence, first.data.days_from_due) == ("due", 1, 0)
    assert first.data.channels is None  # the tenant's [delivery] policy decides
    assert first.data.outstanding is None  # nothing paid yet: the total is what is owed
    assert first.data.document == document and first.data.due_date == due
    assert first.data.invoice == summary_of(created.data)
    assert (first.causation_id, first.correlation_id) == (created.event_id, created.correlation_id)
    assert (first.tenant_id, first.invoice_id, first.producer) == (TENANT, "F-1", "scheduler")

    repeat = occurrence_event(state, occurrence(due, "after-3#3")).data
    assert (repeat.step, repeat.occurrence, repeat.days_from_due, repeat.channels) == (
        "after-3",
        3,
        17,
        ["sms", "email"],
    )
    call = occurrence_event(state, occurrence(due, "call#1")).data
    assert (call.step, call.occurrence, call.days_from_due, call.channels) == ("call", 1, 20, ["voice"])


def test_after_a_partial_payment_reminders_show_what_is_still_owed() -> None:
    due = date(2026, 3, 16)
    created = invoice_created("F-1", due=due, total="100.00")
    partial = state_of(created, [payment_received("F-1", "40.00"), payment_received("F-1", "5.00", "USD")])
    assert occurrence_event(partial, occurrence(due, "after-3#1")).data.outstanding == Decimal("60.00")


def test_the_ticket_is_a_ticket_due_with_the_amount_owed() -> None:
    due = date(2026, 3, 16)
    created = invoice_created("F-1", due=due, total="100.00")
    ticket = parse_event(occurrence_event(state_of(created), occurrence(due, "ticket#1")).model_dump_json())
    assert ticket.type == "ticket.due" and isinstance(ticket.data, TicketDueV1)
    assert (ticket.data.step, ticket.data.days_from_due, ticket.data.outstanding) == ("ticket", 25, Decimal("100.00"))


def test_occurrence_ids_depend_on_invoice_due_date_and_key_only() -> None:
    """The idempotency key of a reminder: a republished occurrence (a crash before the timer moved,
    a second sweeper, a redelivered invoice version) has the same id; another occurrence does not."""
    due = date(2026, 3, 16)
    v1, v2 = invoice_created("F-1", due=due), invoice_created("F-1", due=due)
    key = "after-3#2"
    ids = {
        occurrence_event(state, occurrence(due, key)).event_id
        for state in (state_of(v1), state_of(v2), state_of(v1, [payment_received("F-1", "10.00")]))
    }
    assert len(ids) == 1
    others = {occurrence_event(state_of(v1), o).event_id for o in occurrences(PLAN, due) if o.key != key}
    assert len(others) == len(occurrences(PLAN, due)) - 1 and ids.isdisjoint(others)
    moved = invoice_created("F-1", due=due + timedelta(days=7))  # a new due date is a new plan
    assert occurrence_event(state_of(moved), occurrence(due + timedelta(days=7), key)).event_id not in ids
    other_invoice = invoice_created("F-2", due=due)
    assert occurrence_event(state_of(other_invoice), occurrence(due, key)).event_id not in ids


def test_the_receipt_names_what_was_paid_and_when_with_one_id_per_invoice() -> None:
    created = invoice_created("F-1", total="100.00")
    payments = [payment_received("F-1", "60.00"), payment_received("F-1", "40.00")]
    receipt = parse_event(receipt_event(state_of(created, payments), PAID_AT).model_dump_json())
    assert receipt.type == "receipt.due" and isinstance(receipt.data, ReceiptDueV1)
    assert (receipt.data.paid, receipt.data.paid_at) == (Decimal("100.00"), PAID_AT)
    assert receipt.causation_id == created.event_id
    again = receipt_event(state_of(created, list(reversed(payments))), PAID_AT)  # a redelivery, another order
    assert again.event_id == receipt.event_id


# --- wiring --------------------------------------------------------------------------------------


def test_audit_consumes_what_the_scheduler_publishes() -> None:
    """Audit subscribes to every enveloped topic of the registry; the scheduler's are among them."""
    names = {t.name for t in event_topics()}
    assert {"payment.unmatched", "reminder.due", "receipt.due", "ticket.due", "invoice.cancelled"} <= names


def test_lease_term_defaults_to_three_ticks_and_must_outlive_a_tick() -> None:
    assert Settings(tick_seconds=2).lease_ttl == timedelta(seconds=6)
    assert Settings(tick_seconds=2, lease_seconds=30).lease_ttl == timedelta(seconds=30)
    with pytest.raises(ValidationError, match="lease_seconds"):
        Settings(tick_seconds=60, lease_seconds=60)


def test_the_unknown_invoice_grace_period_defaults_to_a_day() -> None:
    assert Settings().unknown_invoice_grace_s == 86_400
    with pytest.raises(ValidationError, match="unknown_invoice_grace_s"):
        Settings(unknown_invoice_grace_s=0)
