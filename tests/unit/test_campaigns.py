"""Overdue campaigns as pure functions: the request's validation, which invoices a filter selects
(and why others are left out), and the reminder each one gets, down to what the senders make of it.

The API, the store and the runner on the real servers: ``tests/integration/test_campaigns.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from factura.common.delivery.sender import request_of
from factura.common.events import DocumentRef, ReminderDueV2, parse_event
from factura.common.tenants import TenantConfig
from factura.email_sender.message import phase_of
from factura.scheduler.campaigns.matching import (
    STEP,
    Match,
    TooMany,
    campaign_event,
    due_window,
    event_id,
    exclusion,
    judge,
    select,
)
from factura.scheduler.campaigns.model import CampaignFilter, CampaignRequest
from factura.scheduler.decisions import ScheduleState
from factura.sms_sender.texts import kind
from tests.unit.test_scheduler import (
    TENANT,
    invoice_created,
    invoice_rendered,
    payment_received,
    state_of,
)

TODAY = date(2026, 3, 18)


def open_invoice(
    number: str, days_overdue: int, *, total: str = "100.00", currency: str = "EUR", paid: str | None = None
) -> ScheduleState:
    """A rendered invoice ``days_overdue`` days past due on :data:`TODAY` (partly paid: ``paid``)."""
    created = invoice_created(number, due=TODAY - timedelta(days=days_overdue), total=total, currency=currency)
    payments = [payment_received(number, paid, currency)] if paid else []
    return state_of(created, payments, document=document_of(created))


def document_of(created: Any) -> DocumentRef:
    return invoice_rendered(created).data.document


def flt(lo: int = 10, hi: int = 30, **more: Any) -> CampaignFilter:
    return CampaignFilter.model_validate({"overdue_days": {"min": lo, "max": hi}, **more})


# --- the request ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"overdue_days": {"min": 30, "max": 10}}, "overdue_days"),
        ({"overdue_days": {"min": 0, "max": 10}}, "overdue_days.min"),
        ({"overdue_days": {"min": 1, "max": 99_999}}, "overdue_days.max"),
        ({"overdue_days": {"min": 1}}, "overdue_days.max"),
        ({"overdue_days": {"min": 1, "max": 2}, "amount": {"min": "9", "max": "1"}}, "amount"),
        ({"overdue_days": {"min": 1, "max": 2}, "amount": {"min": "-1"}}, "amount.min"),
        ({"overdue_days": {"min": 1, "max": 2}, "currency": "eur"}, "currency"),
        ({"overdue_days": {"min": 1, "max": 2}, "customer_id": ""}, "customer_id"),
        ({"overdue_days": {"min": 1, "max": 2}, "campaign_id": "a b"}, "campaign_id"),
        ({"overdue_days": {"min": 1, "max": 2}, "days": 3}, "days"),
        ({"overdue_days": {"min": 1, "max": 2}, "tenant_id": "Bad Tenant"}, "tenant_id"),
        ({"overdue_days": {"min": 1, "max": 2}, "limit": 0}, "limit"),
    ],
)
def test_a_bad_request_names_its_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        CampaignRequest.model_validate({"tenant_id": TENANT} | body)
    assert field in {".".join(str(p) for p in e["loc"]) for e in raised.value.errors()}


def test_the_same_campaign_is_recognised_whatever_the_spelling_and_not_by_limit_or_dry_run() -> None:
    base = {"tenant_id": TENANT, "overdue_days": {"min": 10, "max": 30}, "amount": {"min": 500}, "name": "Q1"}
    same = {"name": "Q1", "amount": {"min": "500.00"}, "overdue_days": {"max": 30, "min": 10}, "tenant_id": TENANT}
    first = CampaignRequest.model_validate(base)
    assert first.digest() == CampaignRequest.model_validate(same | {"limit": 5, "dry_run": True}).digest()
    assert first.digest() != CampaignRequest.model_validate(base | {"customer_id": "C-1"}).digest()
    assert first.digest() != CampaignRequest.model_validate(base | {"name": "Q2"}).digest()
    assert first.filter == CampaignFilter.model_validate(
        {"overdue_days": {"min": 10, "max": 30}, "amount": {"min": "500"}}
    )


# --- matching -------------------------------------------------------------------------------------


def test_overdue_days_select_both_ends_included_in_the_tenants_local_date() -> None:
    verdicts = {days: judge(open_invoice(f"F-{days}", days), flt(10, 30), TODAY) for days in (5, 9, 10, 20, 30, 31, 40)}
    assert [d for d, v in verdicts.items() if isinstance(v, Match)] == [10, 20, 30]
    assert verdicts[20] == Match("F-20", "C-1042", TODAY - timedelta(days=20), 20, Decimal("100.00"), "EUR")
    assert due_window(flt(10, 30), TODAY) == (date(2026, 2, 16), date(2026, 3, 8))


def erased(state: ScheduleState) -> ScheduleState:
    """The state as read after the customer's contact data was erased."""
    assert state.invoice is not None
    return dataclasses.replace(state, invoice=dataclasses.replace(state.invoice, contact_lost="customer_erased"))


def test_paid_cancelled_rejected_unrendered_and_erased_invoices_are_left_out_with_their_reason() -> None:
    created = invoice_created("F-1", due=TODAY - timedelta(days=20))
    document = document_of(created)
    cases = {
        "paid": state_of(created, [payment_received("F-1", "100.00")], document=document),
        "cancelled": state_of(created, cancelled=True, document=document),
        "rejected": state_of(created, rejected_causes={str(created.event_id)}, document=document),
        "not_rendered": state_of(created),
        "customer_erased": erased(state_of(created, document=document)),
    }
    for reason, state in cases.items():
        assert exclusion(state) == reason
        assert judge(state, flt(), TODAY) == reason
    assert exclusion(state_of(created, [payment_received("F-1", "99.99")], document=document)) is None
    # An invoice the filter does not select is no exclusion at all: not counted.
    assert judge(cases["paid"], flt(1, 5), TODAY) is None
    assert judge(state_of(None, [payment_received("F-1", "5.00")]), flt(), TODAY) is None


def test_amount_is_what_is_still_owed_and_currency_and_customer_must_match() -> None:
    partly = open_invoice("F-1", 20, total="1000.00", paid="700.00")  # owes 300
    assert judge(partly, flt(amount={"min": "250", "max": "300"}), TODAY) == Match(
        "F-1", "C-1042", TODAY - timedelta(days=20), 20, Decimal("300.00"), "EUR"
    )
    assert judge(partly, flt(amount={"min": "300.01"}), TODAY) is None
    assert judge(partly, flt(amount={"max": "299.99"}), TODAY) is None
    assert isinstance(judge(partly, flt(currency="EUR"), TODAY), Match)
    assert judge(partly, flt(currency="RON"), TODAY) is None
    assert isinstance(judge(partly, flt(customer_id="C-1042"), TODAY), Match)
    assert judge(partly, flt(customer_id="C-9"), TODAY) is None


class Source:
    """Schedules as the indexed query would return them: every one due in the asked range."""

    def __init__(self, *states: ScheduleState) -> None:
        self.states = states
        self.asked: list[tuple[str, date, date]] = []

    async def due_between(self, tenant_id: str, first: date, last: date) -> AsyncIterator[ScheduleState]:
        self.asked.append((tenant_id, first, last))
        for state in self.states:
            assert state.invoice is not None
            if first <= state.invoice.summary.due_date <= last:
                yield state


async def test_select_sorts_by_due_date_counts_exclusions_and_refuses_past_the_cap() -> None:
    created = invoice_created("F-paid", due=TODAY - timedelta(days=15))
    paid = state_of(created, [payment_received("F-paid", "100.00")], document=document_of(created))
    source = Source(
        open_invoice("F-b", 12), open_invoice("F-a", 12), open_invoice("F-c", 25), paid, open_invoice("F-x", 31)
    )
    selection = await select(source, TENANT, flt(10, 30), TODAY, cap=3)
    assert [m.invoice_id for m in selection.matches] == ["F-c", "F-a", "F-b"]
    assert selection.excluded == {"paid": 1}
    # The query asks one day more on each side (due dates rewritten as text on the local server).
    assert source.asked == [(TENANT, date(2026, 2, 15), date(2026, 3, 9))]
    with pytest.raises(TooMany, match="more than 2 invoices"):
        await select(source, TENANT, flt(10, 30), TODAY, cap=2)


# --- the reminder -----------------------------------------------------------------------------------


def test_the_reminder_has_a_campaign_step_a_stable_id_and_what_is_still_owed() -> None:
    state = open_invoice("F-1", 20, total="1000.00", paid="700.00")
    event = campaign_event(state, "march", TODAY)
    assert event.event_id == event_id(TENANT, "F-1", "march") == campaign_event(state, "march", TODAY).event_id
    assert event.event_id != campaign_event(state, "april", TODAY).event_id
    assert state.invoice is not None
    assert event.correlation_id == state.invoice.correlation_id
    assert str(event.causation_id) == state.invoice.cause_event_id
    data = parse_event(event.model_dump_json()).data
    assert isinstance(data, ReminderDueV2)
    assert (data.step, data.days_from_due, data.outstanding, data.channels) == (STEP, 20, Decimal("300.00"), None)
    assert data.document == state.document
    assert campaign_event(open_invoice("F-2", 20), "march", TODAY).data.outstanding is None  # nothing paid


def test_the_senders_deliver_a_campaign_reminder_with_their_overdue_wording() -> None:
    event = campaign_event(open_invoice("F-1", 20), "march", TODAY)
    request = request_of(event, TenantConfig.default(TENANT))
    assert request is not None
    assert request.notice.purpose == "reminder:campaign" and request.notice.days_from_due == 20
    assert phase_of(request.notice) == ("after", 20)  # email: the overdue subject and text
    assert kind(request.notice.purpose, request.notice.days_from_due) == "overdue"  # SMS
