"""The scheduler's decisions as pure functions: what is paid, what is refused, what gets reminded.

The builders at the top are shared with ``tests/integration/test_scheduler.py``.
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
    FieldError,
    InvoiceCreatedV1,
    InvoiceRejectedV1,
    PaymentReceivedV1,
    parse_event,
    summary_of,
)
from factura.common.schemas import EXAMPLES_DIR
from factura.common.topics import event_topics
from factura.scheduler.decisions import (
    InvoiceInfo,
    Outcome,
    RecordedPayment,
    ScheduleState,
    decide,
    paid_amount,
    payment_from_document,
    recorded_payment,
    refusals,
    reminder_event,
    unmatched_event,
)
from factura.scheduler.settings import Settings

TENANT = "harinas-sur"
TODAY = date(2026, 12, 10)
_INVOICE = json.loads((EXAMPLES_DIR / "invoice.created.v1.json").read_text(encoding="utf-8"))


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
    invoice_id: str, amount: str, currency: str = "EUR", *, payment_id: str | None = None, tenant: str = TENANT
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
            paid_at=datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
            method="sepa_transfer",
        ),
        tenant_id=tenant,
        invoice_id=invoice_id,
        correlation_id=str(event_id),
        causation_id=None,
        producer="ingest",
    )


def invoice_rejected(created: Envelope[InvoiceCreatedV1], stage: str = "render") -> Envelope[InvoiceRejectedV1]:
    """What the renderer publishes for ``created`` (caused by it, same invoice id)."""
    return child_of(
        created,
        type="invoice.rejected",
        schema_version=CURRENT_VERSION["invoice.rejected"],
        data=InvoiceRejectedV1.model_validate(
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


def state_of(
    created: Envelope[InvoiceCreatedV1] | None,
    payments: Sequence[Envelope[PaymentReceivedV1]] = (),
    rejected_causes: set[str | None] | None = None,
    *,
    reminded: bool = False,
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
        reminded=reminded,
    )


# --- reminders -------------------------------------------------------------------------------------


def test_unpaid_invoice_past_due_is_reminded_with_days_overdue() -> None:
    decision = decide(state_of(invoice_created("F-1", due=TODAY - timedelta(days=3))), TODAY)
    assert decision.outcome is Outcome.REMIND and decision.days_overdue == 3 and decision.paid == 0


@pytest.mark.parametrize("days", [0, -1, -30])
def test_not_yet_overdue_on_or_before_the_due_date(days: int) -> None:
    assert decide(state_of(invoice_created("F-1", due=TODAY - timedelta(days=days))), TODAY).outcome is Outcome.NOT_DUE


def test_a_payment_alone_is_no_invoice_and_never_reminded() -> None:
    assert decide(state_of(None, [payment_received("F-1", "5.00")]), TODAY).outcome is Outcome.NO_INVOICE


def test_paid_in_full_is_not_reminded_partial_is() -> None:
    created = invoice_created("F-1", total="100.00")
    full = state_of(created, [payment_received("F-1", "60.00"), payment_received("F-1", "40.00")])
    assert decide(full, TODAY).outcome is Outcome.PAID
    partial = decide(state_of(created, [payment_received("F-1", "60.00")]), TODAY)
    assert partial.outcome is Outcome.REMIND and partial.paid == Decimal("60.00")


def test_already_reminded_is_not_reminded_again() -> None:
    assert decide(state_of(invoice_created("F-1"), reminded=True), TODAY).outcome is Outcome.REMINDED


def test_a_payment_id_counts_once_even_if_recorded_twice() -> None:
    created = invoice_created("F-1", total="100.00")
    p = payment_received("F-1", "60.00", payment_id="P-1")
    again = payment_received("F-1", "60.00", payment_id="P-1")  # redelivered under another event id
    assert paid_amount(state_of(created, [p, again])) == Decimal("60.00")


# --- currency ------------------------------------------------------------------------------------


def test_payment_in_another_currency_is_refused_and_not_counted() -> None:
    created = invoice_created("F-1", currency="EUR", total="100.00")
    usd = payment_received("F-1", "100.00", "USD")
    state = state_of(created, [usd, payment_received("F-1", "30.00", "EUR")])
    [refusal] = refusals(state)
    assert refusal.payment.payment_id == usd.data.payment_id
    assert (refusal.reason, refusal.invoice_currency) == ("currency_mismatch", "EUR")
    assert "USD" in refusal.detail and "EUR" in refusal.detail
    assert paid_amount(state) == Decimal("30.00")
    assert decide(state, TODAY).outcome is Outcome.REMIND


def test_a_payment_before_its_invoice_is_judged_when_the_invoice_arrives() -> None:
    usd = payment_received("F-1", "100.00", "USD")
    assert refusals(state_of(None, [usd])) == []  # nothing to compare with yet
    assert [r.payment.payment_id for r in refusals(state_of(invoice_created("F-1"), [usd]))] == [usd.data.payment_id]


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


def test_payments_stored_before_currencies_were_kept_still_count() -> None:
    legacy = payment_from_document({"payment_id": "P-old", "amount": "100.00"})
    assert legacy.currency is None and legacy.data is None
    created = invoice_created("F-1", total="100.00")
    state = ScheduleState(TENANT, "F-1", state_of(created).invoice, payments=(legacy,))
    assert refusals(state) == [] and decide(state, TODAY).outcome is Outcome.PAID


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


# --- render rejections ---------------------------------------------------------------------------


def test_an_invoice_rejected_at_render_gets_no_reminder() -> None:
    created = invoice_created("F-1")
    rejected = invoice_rejected(created)
    assert rejected.causation_id == created.event_id and rejected.invoice_id == "F-1"
    assert decide(state_of(created, rejected_causes={str(created.event_id)}), TODAY).outcome is Outcome.REJECTED


def test_a_rejection_without_cause_rejects_whatever_version() -> None:
    assert decide(state_of(invoice_created("F-1"), rejected_causes={None}), TODAY).outcome is Outcome.REJECTED


def test_a_corrected_version_that_renders_is_reminded_again() -> None:
    v1, v2 = invoice_created("F-1"), invoice_created("F-1")
    assert decide(state_of(v2, rejected_causes={str(v1.event_id)}), TODAY).outcome is Outcome.REMIND


def test_rejection_beats_payment_and_reminder_state() -> None:
    created = invoice_created("F-1", total="100.00")
    state = state_of(created, [payment_received("F-1", "1.00")], {str(created.event_id)})
    assert decide(state, TODAY).outcome is Outcome.REJECTED


# --- events and wiring ---------------------------------------------------------------------------


def test_reminder_event_is_deterministic_and_valid() -> None:
    created = invoice_created("F-1", due=TODAY - timedelta(days=4))
    state = state_of(created)
    first = reminder_event(state, decide(state, TODAY))
    later = reminder_event(state, decide(state, TODAY + timedelta(days=1)))
    assert first.event_id == later.event_id  # one overdue reminder per invoice and due date
    assert first.data.days_from_due == 4 and first.data.step == "overdue" and first.causation_id == created.event_id
    assert parse_event(first.model_dump_json()).type == "reminder.due"


def test_audit_consumes_payment_unmatched() -> None:
    """Audit subscribes to every enveloped topic of the registry; the new one is among them."""
    assert "payment.unmatched" in {t.name for t in event_topics()}


def test_lease_term_defaults_to_three_ticks_and_must_outlive_a_tick() -> None:
    assert Settings(tick_seconds=2).lease_ttl == timedelta(seconds=6)
    assert Settings(tick_seconds=2, lease_seconds=30).lease_ttl == timedelta(seconds=30)
    with pytest.raises(ValidationError, match="lease_seconds"):
        Settings(tick_seconds=60, lease_seconds=60)
