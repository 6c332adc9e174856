"""Which invoices a campaign reminds, and the ``reminder.due`` each one gets: pure functions of an
invoice's schedule, the filter and the tenant's local date, plus :func:`select`, which walks the
schedules an indexed query returns.

An invoice is eligible when the scheduler itself would still remind it (:func:`is_open`: known,
not refused at render, not cancelled, not paid in full) **and** its document was rendered. The
plan's own reminders go out before rendering is seen too, because they start at the due date and
a renderer may lag; a campaign targets invoices already overdue, where no rendering means the
customer never got the invoice: a first message saying "overdue" would be wrong and its link
would lead nowhere. Such invoices are counted as ``not_rendered`` so the operator sees them.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Literal, Protocol

from factura.common.envelope import Envelope, make_event, stable_id
from factura.common.events import CURRENT_VERSION, InvoiceSummary, ReminderDueV2
from factura.scheduler.campaigns.model import AmountRange, CampaignFilter
from factura.scheduler.decisions import PRODUCER, ScheduleState, is_open, is_rejected, outstanding, reachable

#: The step of every campaign reminder: the message purpose is ``reminder:campaign``. Senders word
#: a reminder by ``days_from_due`` (after the due date: the overdue wording), not by step name.
STEP = "campaign"
Exclusion = Literal["paid", "cancelled", "rejected", "not_rendered", "customer_erased"]


@dataclass(frozen=True)
class Match:
    invoice_id: str
    customer_id: str
    due_date: date
    days_overdue: int
    outstanding: Decimal
    currency: str


class TooMany(Exception):
    """More invoices match than one campaign may send to."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"more than {cap} invoices match; narrow overdue_days, amount, currency or customer_id")
        self.cap = cap


@dataclass(frozen=True)
class Selection:
    """The matching invoices (by due date, then invoice id), and how many were left out, by reason,
    of those the filter otherwise selected."""

    matches: list[Match]
    excluded: dict[str, int] = field(default_factory=dict)


class ScheduleSource(Protocol):
    def due_between(self, tenant_id: str, first: date, last: date) -> AsyncIterator[ScheduleState]: ...


def exclusion(state: ScheduleState) -> Exclusion | None:
    """Why a known invoice gets no campaign reminder; ``None`` when it is eligible."""
    if is_rejected(state):
        return "rejected"
    if state.cancelled:
        return "cancelled"
    if not is_open(state):  # known, not rejected, not cancelled: what is left is paid in full
        return "paid"
    if state.document is None:
        return "not_rendered"
    if not reachable(state):  # their contact data was erased: there is no one to write to
        return "customer_erased"
    return None


def due_window(flt: CampaignFilter, today: date) -> tuple[date, date]:
    """The due dates ``flt.overdue_days`` selects on ``today``: earliest, latest."""
    return today - timedelta(days=flt.overdue_days.max), today - timedelta(days=flt.overdue_days.min)


def _selects(summary: InvoiceSummary, flt: CampaignFilter, days: int) -> bool:
    return (
        flt.overdue_days.min <= days <= flt.overdue_days.max
        and (flt.customer_id is None or summary.customer.customer_id == flt.customer_id)
        and (flt.currency is None or summary.currency == flt.currency)
    )


def _in_range(owed: Decimal, amount: AmountRange | None) -> bool:
    return amount is None or ((amount.min is None or owed >= amount.min) and (amount.max is None or owed <= amount.max))


def judge(state: ScheduleState, flt: CampaignFilter, today: date) -> Match | Exclusion | None:
    """The invoice's :class:`Match`, the reason it is left out, or ``None`` when the filter does not
    select it at all. Amounts are compared after eligibility: a paid invoice owes nothing."""
    if state.invoice is None:
        return None
    summary = state.invoice.summary
    days = (today - summary.due_date).days
    if not _selects(summary, flt, days):
        return None
    reason = exclusion(state)
    if reason is not None:
        return reason
    owed = outstanding(state)
    if not _in_range(owed, flt.amount):
        return None
    return Match(state.invoice_id, summary.customer.customer_id, summary.due_date, days, owed, summary.currency)


async def select(source: ScheduleSource, tenant_id: str, flt: CampaignFilter, today: date, *, cap: int) -> Selection:
    """Every invoice of the tenant the filter selects on ``today``; :class:`TooMany` past ``cap``.

    The query asks for a day more on each side than the window: the local MongoDB-wire server keeps
    a re-written due date as text, and the exact comparison is :func:`judge`'s anyway.
    """
    first, last = due_window(flt, today)
    matches: list[Match] = []
    excluded: Counter[str] = Counter()
    async for state in source.due_between(tenant_id, first - timedelta(days=1), last + timedelta(days=1)):
        verdict = judge(state, flt, today)
        if isinstance(verdict, Match):
            if len(matches) == cap:
                raise TooMany(cap)
            matches.append(verdict)
        elif verdict is not None:
            excluded[verdict] += 1
    matches.sort(key=lambda m: (m.due_date, m.invoice_id))
    return Selection(matches, dict(excluded))


def event_id(tenant_id: str, invoice_id: str, campaign_id: str) -> uuid.UUID:
    """The same for every attempt at one campaign's reminder of one invoice: the senders' ledger
    drops the repeats of a retried request, a resumed campaign or a second runner."""
    return stable_id(tenant_id, "reminder.due", invoice_id, STEP, campaign_id)


def campaign_event(state: ScheduleState, campaign_id: str, today: date) -> Envelope[ReminderDueV2]:
    """The ``reminder.due`` of one campaign for one open invoice, as of ``today`` (local date).

    Correlated with the invoice's own flow and caused by its current version, as the plan's
    reminders are, so the audit trail shows it among the invoice's messages. No channel order:
    the tenant's delivery policy chooses (its most effective channel rule included).
    """
    assert state.invoice is not None
    summary = state.invoice.summary
    owed = outstanding(state)
    data = ReminderDueV2(
        step=STEP,
        due_date=summary.due_date,
        days_from_due=(today - summary.due_date).days,
        invoice=summary,
        document=state.document,
        outstanding=owed if owed < summary.total else None,
    )
    return make_event(
        event_id=event_id(state.tenant_id, state.invoice_id, campaign_id),
        type="reminder.due",
        schema_version=CURRENT_VERSION["reminder.due"],
        data=data,
        tenant_id=state.tenant_id,
        invoice_id=state.invoice_id,
        correlation_id=state.invoice.correlation_id,
        causation_id=uuid.UUID(state.invoice.cause_event_id),
        producer=PRODUCER,
    )
