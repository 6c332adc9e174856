"""The collections cycle in simulated time on the local stack (issue 8's "Done when").

The scheduler's real handlers run over the real MongoDB-wire server and broker with an injected
clock; :mod:`tests.collections_harness` moves it hour by hour over 60 days and ticks at each hour.
Every check is on what reached the broker (read back from the test's own topics) and on the
simulated instant each event was published at. Run with ``-s`` to see the wall time of a cycle.
"""

from __future__ import annotations

import time as timer
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from factura.common.envelope import Envelope
from factura.common.ledger import DeliveryLedger
from factura.devstack.config import StackConfig
from factura.scheduler.tickets import HelpdeskClient, HelpdeskSettings, TicketHandlers
from tests.collections_harness import (
    OCCURRENCE_TYPES,
    Due,
    Faults,
    Identity,
    Plan,
    Simulation,
    Tenant,
    When,
    cancelled,
    expected,
    identity,
    invoice_created,
    invoice_rendered,
    occurrence_of,
    payment,
    simulation,
)

pytestmark = pytest.mark.integration

#: A Monday: the simulations start here and run 60 days, across Madrid's switch to summer time (29 March).
START = datetime(2026, 2, 23, tzinfo=UTC)
DAYS_60 = START + timedelta(days=60)
MADRID = Tenant("acme-madrid", "Europe/Madrid", "EUR", holidays=(date(2026, 3, 19), date(2026, 4, 3)))
SAO_PAULO = Tenant("acme-saopaulo", "America/Sao_Paulo", "BRL", holidays=(date(2026, 4, 3), date(2026, 4, 21)))
TOKYO = Tenant("acme-tokyo", "Asia/Tokyo", "JPY", holidays=(date(2026, 3, 20),))
THREE_ZONES = [MADRID, SAO_PAULO, TOKYO]

Key = tuple[str, str]  # (tenant, invoice)


@dataclass
class Owed:
    """What one invoice should get: its tenant, and the occurrences of its plan still owed."""

    tenant: Tenant
    due: date
    occurrences: list[Due]


def number(prefix: str = "F") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def open_invoice(sim: Simulation, tenant: Tenant, due: date, total: str = "100.00", prefix: str = "F") -> str:
    """``invoice.created`` then ``invoice.rendered``, as ingest and the renderer publish them."""
    created = invoice_created(tenant, number(prefix), due, total)
    await sim.deliver(created)
    await sim.deliver(invoice_rendered(created))
    return created.data.invoice_number


def up_to(tenant: Tenant, dues: list[Due], instant: datetime) -> list[Due]:
    """The occurrences whose send time comes before ``instant``."""
    return [d for d in dues if tenant.first_send(d.nominal) < instant]


def after_send(tenant: Tenant, dues: list[Due], k: int) -> datetime:
    """Local noon on the day the ``k``-th occurrence goes out (0: a week before the first one)."""
    if k == 0:
        return tenant.first_send(dues[0].nominal) - timedelta(days=7) + timedelta(hours=3)
    return tenant.first_send(dues[k - 1].nominal) + timedelta(hours=3)


async def assert_each_once(
    sim: Simulation, owed: dict[Key, Owed], *, exact_time: bool = True, crashed: bool = False
) -> list[Envelope[Any]]:
    """Every occurrence owed reached the broker under one event id, nothing else did, and each went
    out inside its tenant's window, not before its nominal day. Duplicates of one id only where
    ``crashed``. Returns what is on the bus.

    ``exact_time``: at the first window opening from its nominal day, also when several
    occurrences of one invoice fall on that instant (a weekend moved a repeat onto a call's
    Monday): the sweep sends them all in that tick.
    """
    on_bus = await sim.on_bus(*OCCURRENCE_TYPES)
    sent = sim.sent(*OCCURRENCE_TYPES)
    assert Counter(e.event_id for e in on_bus) == Counter(s.event.event_id for s in sent)
    end = sim.clock.now  # occurrences after the simulated period are not owed yet
    want = {
        identity(*key, d): (o.tenant, d)
        for key, o in owed.items()
        for d in o.occurrences
        if o.tenant.first_send(d.nominal) < end
    }
    ids: dict[Identity, set[uuid.UUID]] = defaultdict(set)
    for event in on_bus:
        ids[occurrence_of(event)].add(event.event_id)
    missing, extra = set(want) - set(ids), set(ids) - set(want)
    assert not missing and not extra, f"skipped {sorted(missing)[:5]} ({len(missing)}), extra {sorted(extra)[:5]}"
    doubled = {k: v for k, v in ids.items() if len(v) > 1}
    assert not doubled, f"two event ids for one occurrence: {list(doubled.items())[:3]}"
    if not crashed:
        assert len(on_bus) == len(ids), "a duplicate record without any crash"
    for s in sent:
        tenant, due = want[occurrence_of(s.event)]
        local = s.at.astimezone(tenant.zone)
        assert tenant.in_window(s.at), f"{occurrence_of(s.event)} sent at {local}, outside the window"
        assert local.date() >= due.nominal, f"{occurrence_of(s.event)} sent {local}, before its day {due.nominal}"
        if exact_time:
            when = tenant.first_send(due.nominal)
            assert s.at == when, f"{occurrence_of(s.event)} sent {local}, not {when.astimezone(tenant.zone)}"
        assert s.event.type == due.event_type
        assert s.event.data.days_from_due == due.days_from_due
        if due.step == "call":
            assert s.event.data.channels == ["voice"]
    return on_bus


def report(name: str, sim: Simulation, started: float) -> None:
    print(
        f"\n{name}: {timer.perf_counter() - started:.1f} s wall for {(sim.clock.now - START).days} simulated days,"
        f" {sim.ticks} ticks, {len(sim.publisher.sent)} events published, {len(sim.faults.kills)} kills"
    )


async def test_a_60_day_cycle_in_three_time_zones_sends_every_occurrence_once_inside_the_window(
    cfg: StackConfig, tmp_path: Path
) -> None:
    started = timer.perf_counter()
    async with simulation(cfg, tmp_path, THREE_ZONES, START) as sim:
        owed: dict[Key, Owed] = {}
        for i in range(300):
            tenant = THREE_ZONES[i % 3]
            due = START.date() + timedelta(days=7 + i % 8)  # due any day of the week, weekends too
            invoice = await open_invoice(sim, tenant, due)
            owed[(tenant.tenant_id, invoice)] = Owed(tenant, due, expected(tenant.plan, due))
        await sim.run_until(DAYS_60)

        on_bus = await assert_each_once(sim, owed)
        per_invoice = Counter((e.tenant_id, e.invoice_id) for e in on_bus)
        assert set(per_invoice.values()) == {10}  # 4 steps, 2 repeats, 3 calls, 1 ticket
        assert Counter(e.data.step for e in on_bus if e.type == "reminder.due")["call"] == 900
        assert len([e for e in on_bus if e.type == "ticket.due"]) == 300
        for event in on_bus:
            assert event.producer == "scheduler"
            if event.type == "reminder.due":
                assert event.data.document is not None and event.data.outstanding is None
                assert event.data.due_date == owed[(event.tenant_id, event.invoice_id or "")].due
            else:
                assert event.data.outstanding == Decimal("100.00")
        # Summer time in Madrid: before 29 March 09:00 is 08:00 UTC, after it 07:00 UTC.
        sent = sim.sent(*OCCURRENCE_TYPES)
        madrid = {s.at.astimezone(MADRID.zone).utcoffset() for s in sent if s.event.tenant_id == MADRID.tenant_id}
        assert madrid >= {timedelta(hours=1), timedelta(hours=2)}
        report("60-day cycle, 300 invoices", sim, started)


async def stop_at_every_stage(
    sim: Simulation, tenant: Tenant, stop: Callable[[str, datetime], Envelope[Any]]
) -> dict[Key, Owed]:
    """One invoice per stage, each stopped by ``stop(invoice, instant)`` after ``k`` occurrences went
    out: before the first step (0), between steps (2), during repeats (5), during escalation (7),
    after the ticket (10). Returns what each should have got, and when it was stopped."""
    due = date(2026, 3, 2)
    plan = expected(tenant.plan, due)
    stops: list[tuple[datetime, str]] = []
    owed: dict[Key, Owed] = {}
    for k in (0, 2, 5, 7, 10):
        invoice = await open_invoice(sim, tenant, due, prefix=f"K{k}")
        at = after_send(tenant, plan, k)
        stops.append((at, invoice))
        owed[(tenant.tenant_id, invoice)] = Owed(tenant, due, up_to(tenant, plan, at))
        assert len(owed[(tenant.tenant_id, invoice)].occurrences) == k
    for at, invoice in sorted(stops):
        await sim.run_until(at)
        await sim.deliver(stop(invoice, at))
    await sim.run_until(DAYS_60)
    return owed


async def test_payment_in_full_at_every_stage_stops_the_plan_and_sends_one_receipt(
    cfg: StackConfig, tmp_path: Path
) -> None:
    tenant = Tenant("pays-madrid", "Europe/Madrid", "EUR", MADRID.holidays, receipt=True)
    async with simulation(cfg, tmp_path, [tenant], START) as sim:
        payments: dict[str, Envelope[Any]] = {}

        def pay(invoice: str, at: datetime) -> Envelope[Any]:
            payments[invoice] = payment(tenant, invoice, "100.00", at)
            return payments[invoice]

        owed = await stop_at_every_stage(sim, tenant, pay)
        await sim.deliver(payments[min(payments)])  # a redelivered payment: the same receipt again

        await assert_each_once(sim, owed)
        for (_, invoice), _owed in owed.items():
            paid_at = payments[invoice].data.paid_at
            assert all(s.at < paid_at for s in sim.sent(*OCCURRENCE_TYPES, invoice=invoice))
        receipts = await sim.on_bus("receipt.due")
        assert len({r.event_id for r in receipts}) == len(owed) and len(receipts) == len(owed) + 1
        for receipt in receipts:
            paid = payments[receipt.invoice_id or ""]
            assert (receipt.data.paid, receipt.data.paid_at) == (Decimal("100.00"), paid.data.paid_at)
            assert receipt.causation_id is not None and receipt.data.document is not None
        assert await sim.on_bus("payment.unmatched") == []


async def test_cancellation_at_every_stage_stops_the_plan(cfg: StackConfig, tmp_path: Path) -> None:
    async with simulation(cfg, tmp_path, [MADRID], START) as sim:
        owed = await stop_at_every_stage(sim, MADRID, lambda invoice, at: cancelled(MADRID, invoice, at))
        await assert_each_once(sim, owed)
        assert await sim.on_bus("receipt.due", "payment.unmatched") == []


def reanchored(tenant: Tenant, due: date, paid_at: datetime) -> list[Due]:
    """A plan re-anchored by a partial payment at ``paid_at``: what went out before it, then the
    occurrences of the re-anchored plan after the last of those (a new series: a step sent before
    the payment and due again after it goes out again)."""
    before = up_to(tenant, expected(tenant.plan, due), paid_at)
    last = max((tenant.first_send(d.nominal) for d in before), default=None)
    anchored = expected(tenant.plan, due, anchor=tenant.local_date(paid_at))
    return before + [d for d in anchored if last is None or tenant.first_send(d.nominal) > last]


async def test_a_partial_payment_shows_what_is_owed_and_may_reanchor_the_later_steps(
    cfg: StackConfig, tmp_path: Path
) -> None:
    plain = Tenant("part-plain", "Europe/Madrid", "EUR", receipt=True)
    anchoring = Tenant("part-anchor", "Europe/Madrid", "EUR", receipt=True, reanchor_on_partial=True)
    due = date(2026, 3, 4)  # a Wednesday: its after-3 falls on a Saturday and goes out on Monday, day 5
    # Each invoice and its payments: (local noon on day n from the due date, amount).
    cases: dict[str, tuple[Tenant, list[tuple[int, str]]]] = {
        "plain": (plain, [(1, "40.00")]),  # later reminders show the 60.00 still owed
        "anchored": (anchoring, [(1, "40.00")]),  # after-3 and later count from day 1
        "anchored-late": (anchoring, [(6, "40.00")]),  # after-3 went out on day 5: again, from day 6
        "settled": (plain, [(1, "40.00"), (6, "60.00")]),  # paid in two parts: nothing after, one receipt
    }
    async with simulation(cfg, tmp_path, [plain, anchoring], START) as sim:
        numbers = {
            name: await open_invoice(sim, tenant, due, prefix=name.upper()) for name, (tenant, _) in cases.items()
        }
        paid = {
            name: [(tenant.at(due + timedelta(days=day), 12), amount) for day, amount in pays]
            for name, (tenant, pays) in cases.items()
        }
        for at, name, amount in sorted((at, name, amount) for name, pays in paid.items() for at, amount in pays):
            await sim.run_until(at)
            await sim.deliver(payment(cases[name][0], numbers[name], amount, at))
        await sim.run_until(DAYS_60)

        full = expected(plain.plan, due)
        owed = {
            (plain.tenant_id, numbers["plain"]): Owed(plain, due, full),
            (anchoring.tenant_id, numbers["anchored"]): Owed(
                anchoring, due, reanchored(anchoring, due, paid["anchored"][0][0])
            ),
            (anchoring.tenant_id, numbers["anchored-late"]): Owed(
                anchoring, due, reanchored(anchoring, due, paid["anchored-late"][0][0])
            ),
            (plain.tenant_id, numbers["settled"]): Owed(plain, due, up_to(plain, full, paid["settled"][1][0])),
        }
        await assert_each_once(sim, owed)

        name_of = {number: name for name, number in numbers.items()}
        after_3: dict[str, list[int]] = defaultdict(list)
        for s in sim.sent("reminder.due"):
            name = name_of[s.event.invoice_id or ""]
            owing = s.at > paid[name][0][0]
            assert s.event.data.outstanding == (Decimal("60.00") if owing else None), (name, s)
            if s.event.data.step == "after-3":
                after_3[name].append(s.event.data.days_from_due)
        assert after_3 == {"plain": [3], "anchored": [4], "anchored-late": [3, 9], "settled": [3]}
        [receipt] = await sim.on_bus("receipt.due")
        rest_at = paid["settled"][1][0]
        assert (receipt.invoice_id, receipt.data.paid, receipt.data.paid_at) == (
            numbers["settled"],
            Decimal("100.00"),
            rest_at,
        )


async def test_unmatched_payments_are_reported_with_their_reason(cfg: StackConfig, tmp_path: Path) -> None:
    tenant = Tenant("unmatched", "Europe/Madrid", "EUR")
    due = date(2026, 3, 4)
    async with simulation(cfg, tmp_path, [tenant], START, grace=timedelta(days=1)) as sim:
        other_currency = await open_invoice(sim, tenant, due, prefix="USD")
        overpaid = await open_invoice(sim, tenant, due, prefix="OVER")
        voided = await open_invoice(sim, tenant, due, prefix="VOID")
        await sim.run_until(tenant.at(due + timedelta(days=1), 12))
        paid_at = sim.clock.now
        await sim.deliver(payment(tenant, other_currency, "100.00", paid_at, currency="USD"))
        await sim.deliver(payment(tenant, overpaid, "150.00", paid_at))
        await sim.deliver(cancelled(tenant, voided, paid_at))
        await sim.deliver(payment(tenant, voided, "100.00", paid_at))
        ghost = payment(tenant, number("GHOST"), "70.00", paid_at)  # its invoice never comes
        await sim.deliver(ghost)
        early = payment(tenant, number("EARLY"), "30.00", paid_at)  # its invoice comes within the grace period
        await sim.deliver(early)
        await sim.run_until(paid_at + timedelta(hours=12))
        await sim.deliver(invoice_created(tenant, early.invoice_id or "", due + timedelta(days=20)))
        await sim.run_until(DAYS_60)

        unmatched = await sim.on_bus("payment.unmatched")
        by_invoice = {e.invoice_id: e for e in unmatched}
        assert len(unmatched) == len(by_invoice) == 4, [(e.invoice_id, e.data.reason) for e in unmatched]
        assert by_invoice[other_currency].data.reason == "currency_mismatch"
        assert by_invoice[other_currency].data.invoice_currency == "EUR"
        assert (by_invoice[overpaid].data.reason, by_invoice[overpaid].data.unmatched_amount) == (
            "overpayment",
            Decimal("50.00"),
        )
        assert by_invoice[voided].data.reason == "invoice_cancelled"
        assert by_invoice[ghost.invoice_id].data.reason == "unknown_invoice"
        assert by_invoice[ghost.invoice_id].data.payment == ghost.data
        [reported] = sim.sent("payment.unmatched", invoice=ghost.invoice_id)
        assert paid_at + timedelta(days=1) <= reported.at < paid_at + timedelta(days=1, hours=1)  # after the grace

        plan = expected(tenant.plan, due)
        late_due = due + timedelta(days=20)
        owed = {
            (tenant.tenant_id, other_currency): Owed(tenant, due, plan),  # not counted: the plan goes on
            (tenant.tenant_id, overpaid): Owed(tenant, due, up_to(tenant, plan, paid_at)),
            (tenant.tenant_id, voided): Owed(tenant, due, up_to(tenant, plan, paid_at)),
            (tenant.tenant_id, early.invoice_id or ""): Owed(tenant, late_due, expected(tenant.plan, late_due)),
        }
        on_bus = await assert_each_once(sim, owed)
        for event in on_bus:
            if event.invoice_id == early.invoice_id:
                assert event.data.outstanding == Decimal("70.00")


async def test_a_payment_in_full_before_its_invoice_still_gets_its_receipt(cfg: StackConfig, tmp_path: Path) -> None:
    tenant = Tenant("early-receipt", "Europe/Madrid", "EUR", receipt=True)
    async with simulation(cfg, tmp_path, [tenant], START) as sim:
        invoice = number("EARLY")
        await sim.deliver(payment(tenant, invoice, "100.00", START))
        await sim.deliver(invoice_created(tenant, invoice, date(2026, 3, 4)))  # within the grace period
        await sim.run_until(START + timedelta(days=2))
        assert sim.sent(*OCCURRENCE_TYPES, "payment.unmatched") == []  # paid, and matched: the plan is closed
        assert [r.invoice_id for r in await sim.on_bus("receipt.due")] == [invoice]


async def test_a_payment_in_another_currency_does_not_reanchor_the_plan(cfg: StackConfig, tmp_path: Path) -> None:
    tenant = Tenant("anchor-usd", "Europe/Madrid", "EUR", reanchor_on_partial=True)
    due = date(2026, 3, 4)
    async with simulation(cfg, tmp_path, [tenant], START) as sim:
        invoice = await open_invoice(sim, tenant, due)
        partial_at, usd_at = tenant.at(due + timedelta(days=1), 12), tenant.at(due + timedelta(days=6), 12)
        await sim.run_until(partial_at)
        await sim.deliver(payment(tenant, invoice, "40.00", partial_at))
        await sim.run_until(usd_at)
        await sim.deliver(payment(tenant, invoice, "40.00", usd_at, currency="USD"))
        await sim.run_until(DAYS_60)

        assert [e.data.reason for e in await sim.on_bus("payment.unmatched")] == ["currency_mismatch"]
        await assert_each_once(
            sim, {(tenant.tenant_id, invoice): Owed(tenant, due, reanchored(tenant, due, partial_at))}
        )


async def test_window_and_time_zone_weekend_downtime_and_summer_time(cfg: StackConfig, tmp_path: Path) -> None:
    tokyo = Tenant("win-tokyo", "Asia/Tokyo", "JPY")
    madrid = Tenant("win-madrid", "Europe/Madrid", "EUR")
    async with simulation(cfg, tmp_path, [tokyo, madrid], START) as sim:
        saturday = await open_invoice(sim, tokyo, date(2026, 3, 7))
        missed = await open_invoice(sim, madrid, date(2026, 3, 11))  # due on a Wednesday the scheduler is down
        missed_too = await open_invoice(sim, madrid, date(2026, 3, 9))  # its after-3 falls in the outage too
        back_in_window = await open_invoice(sim, madrid, date(2026, 3, 18))
        summer = await open_invoice(sim, madrid, date(2026, 3, 30))  # before-5 in winter time, due in summer time

        await sim.run_until(madrid.at(date(2026, 3, 10), 20))  # Tuesday 20:00: then down for 3 days
        await sim.down_until(madrid.at(date(2026, 3, 13), 20))  # back on Friday 20:00, the window closed
        await sim.run_until(madrid.at(date(2026, 3, 17), 20))  # down again, Tuesday 20:00 ...
        await sim.down_until(madrid.at(date(2026, 3, 19), 11))  # ... to Thursday 11:00, the window open
        await sim.run_until(DAYS_60)

        def sent_at(invoice: str, step: str) -> list[datetime]:
            return [s.at for s in sim.sent("reminder.due", invoice=invoice) if s.event.data.step == step]

        assert sent_at(saturday, "due") == [datetime(2026, 3, 9, 0, tzinfo=UTC)]  # Monday 09:00 in Tokyo
        monday = datetime(2026, 3, 16, 8, tzinfo=UTC)  # Monday 09:00 in Madrid (winter time)
        assert sent_at(missed, "due") == [monday]
        assert sent_at(missed, "after-3") == [monday]  # Saturday's step, the same Monday: also once, in that very tick
        assert sent_at(missed_too, "after-3") == [monday]
        assert sent_at(back_in_window, "due") == [datetime(2026, 3, 19, 10, tzinfo=UTC)]  # at once, 11:00 local
        assert sent_at(summer, "before-5") == [datetime(2026, 3, 25, 8, tzinfo=UTC)]  # 09:00 CET
        assert sent_at(summer, "due") == [datetime(2026, 3, 30, 7, tzinfo=UTC)]  # 09:00 CEST

        owed = {
            (tokyo.tenant_id, saturday): Owed(tokyo, date(2026, 3, 7), expected(tokyo.plan, date(2026, 3, 7))),
            **{
                (madrid.tenant_id, invoice): Owed(madrid, due, expected(madrid.plan, due))
                for invoice, due in (
                    (missed, date(2026, 3, 11)),
                    (missed_too, date(2026, 3, 9)),
                    (back_in_window, date(2026, 3, 18)),
                    (summer, date(2026, 3, 30)),
                )
            },
        }
        await assert_each_once(sim, owed, exact_time=False)


KILLS: dict[tuple[str, int], When] = {
    **{("publish", n): "after" for n in range(3, 800, 37)},  # published, the timer not moved yet
    **{("publish", n): "before" for n in range(20, 800, 41)},  # about to publish
    **{("plan", n): "before" for n in (2, 7, *range(60, 1500, 53))},  # invoices being recorded, then sweeps
    **{("plan", n): "after" for n in (4, *range(90, 1500, 59))},  # the timer moved, nothing after it ran
}


async def test_killed_at_any_point_and_restarted_no_occurrence_is_skipped_or_doubled(
    cfg: StackConfig, tmp_path: Path
) -> None:
    started = timer.perf_counter()
    faults = Faults(points=dict(KILLS))
    async with simulation(cfg, tmp_path, THREE_ZONES, START, faults=faults, batch=7) as sim:
        owed: dict[Key, Owed] = {}
        for i in range(60):
            tenant = THREE_ZONES[i % 3]
            due = START.date() + timedelta(days=7 + i % 8)
            invoice = await open_invoice(sim, tenant, due)
            owed[(tenant.tenant_id, invoice)] = Owed(tenant, due, expected(tenant.plan, due))
        await sim.run_until(DAYS_60)

        await assert_each_once(sim, owed, exact_time=False, crashed=True)
        assert len(faults.kills) >= 40 and sim.restarts == len(faults.kills), faults.kills
        kinds = {k.split("#")[0] + " " + k.split()[-1] for k in faults.kills}
        assert kinds == {"publish after", "publish before", "plan before", "plan after"}
        republished = len(sim.sent(*OCCURRENCE_TYPES)) - len({s.event.event_id for s in sim.sent(*OCCURRENCE_TYPES)})
        assert republished > 0  # killed after publishing: the same id again, never a new one
        report("killed and restarted, 60 invoices", sim, started)


async def test_two_replicas_ticking_in_turn_or_at_once_send_each_occurrence_once(
    cfg: StackConfig, tmp_path: Path
) -> None:
    started = timer.perf_counter()
    async with simulation(cfg, tmp_path, THREE_ZONES, START) as sim:
        sim.start(2)
        owed: dict[Key, Owed] = {}
        for i in range(60):
            tenant = THREE_ZONES[i % 3]
            due = START.date() + timedelta(days=7 + i % 8)
            invoice = await open_invoice(sim, tenant, due)
            owed[(tenant.tenant_id, invoice)] = Owed(tenant, due, expected(tenant.plan, due))
        await sim.run_until(START + timedelta(days=30))  # in turn, then both at the same instant
        sim.together = True
        await sim.run_until(DAYS_60)

        await assert_each_once(sim, owed)
        a, b = sim.replicas
        assert a.swept > 0 and b.swept > 0 and a.skipped > 0 and b.skipped > 0
        assert a.swept + b.swept == sim.ticks  # each hour one of them swept, the other found the lease taken
        report("two replicas, 60 invoices", sim, started)


async def test_a_ticket_due_opens_one_helpdesk_ticket_and_publishes_ticket_opened(
    cfg: StackConfig, tmp_path: Path
) -> None:
    plan = Plan(steps=(("due", 0),), repeat_times=0, call_after=None, ticket_after=2)
    tenant = Tenant("tickets", "America/Sao_Paulo", "BRL", plan=plan)
    due = date(2026, 3, 2)
    async with simulation(cfg, tmp_path, [tenant], START) as sim, httpx.AsyncClient() as http:
        invoices = [await open_invoice(sim, tenant, due) for _ in range(3)]
        await sim.run_until(tenant.at(due + timedelta(days=2), 10))
        due_events = await sim.on_bus("ticket.due")
        assert sorted(e.invoice_id or "" for e in due_events) == sorted(invoices)

        # Wired as bootstrap wires it; every ticket.due delivered twice (at least once).
        ledger = DeliveryLedger(sim.db["ticket_deliveries"])
        await ledger.ensure_indexes()
        client = HelpdeskClient(HelpdeskSettings(secret=SecretStr(cfg.sms_auth_token)), http)

        def url_for(tenant_id: str) -> str | None:
            ticket = sim.tenants.get(tenant_id).reminders.ticket
            return ticket.url if ticket else None

        tickets = TicketHandlers(client, ledger, sim.publisher.publish, url_for)
        for event in due_events * 2:
            await tickets.on_ticket_due(sim.message(event))

        response = await http.get(f"{cfg.sms_url}/_capture/tickets")
        response.raise_for_status()
        keys = {str(e.event_id) for e in due_events}
        recorded = [t for t in response.json() if t["idempotency_key"] in keys]
        assert sorted(t["ticket"]["invoice_number"] for t in recorded) == sorted(invoices)  # one each
        assert {t["status"] for t in recorded} == {201}
        opened = await sim.on_bus("ticket.opened")
        assert len(opened) == 6 and len({e.event_id for e in opened}) == 3  # redelivery: the same event
        refs = {t["idempotency_key"]: t["id"] for t in recorded}
        for event in opened:
            assert event.data.ticket_ref == refs[str(event.causation_id)]
            assert event.tenant_id == tenant.tenant_id and event.data.status == 201
