"""Simulated time for the scheduler on the local stack: the collections cycle in seconds.

The scheduler's handlers run as bootstrap wires them (MongoDB schedules, channel credits, the sweep
lease), against the real MongoDB-wire server and the real broker, with one injected clock that a
test moves forward. Events reach the handlers as the consumer loop hands them over (``Message``s
around real envelopes); what the scheduler publishes goes to the broker through a real
:class:`Publisher`, which also notes the simulated instant of each acknowledged event, so a test
can tell *when* (in simulated time) each reminder went out and check the bus holds exactly that.

Kills are simulated by raising :class:`Killed` at chosen calls of the publisher or the schedules
store (before or after the real call). The harness then drops the handler objects, as a dead
process is dropped, builds new ones over the same MongoDB (a new lease owner, as a restarted pod
gets), and redelivers the event being handled (its offset was never committed).

The expectations are computed here independently of :mod:`factura.common.reminders` (plain
calendar arithmetic with :mod:`zoneinfo`), so the tests do not grade the code with itself.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from factura.common.delivery.effectiveness import ChannelEffectiveness
from factura.common.envelope import Envelope, make_event
from factura.common.events import (
    CURRENT_VERSION,
    Customer,
    DocumentRef,
    InvoiceCancelledV1,
    InvoiceCreatedV1,
    InvoiceRenderedV1,
    InvoiceSummary,
    Line,
    PaymentReceivedV1,
    parse_event,
)
from factura.common.kafka.consumer import Message
from factura.common.kafka.producer import Publisher
from factura.common.lease import Lease
from factura.common.mongo import Document, create_client
from factura.common.reminders import Cursor
from factura.common.tenants import TenantDirectory
from factura.common.topics import REGISTRY
from factura.devstack.config import StackConfig
from factura.scheduler.bootstrap import SWEEP_LEASE
from factura.scheduler.decisions import ScheduleState
from factura.scheduler.handlers import SchedulerHandlers
from factura.scheduler.schedule import Schedules
from tests.conftest import mongo_settings
from tests.kafka_helpers import Bus, isolated, read_topic
from tests.pii_keys import pii_cipher

HOUR = timedelta(hours=1)
#: The sweep lease's default term (3 ticks of 60 s): a killed holder is replaced after it.
LEASE_TTL = timedelta(minutes=3)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")
#: The plan events a schedule emits (one per occurrence); payments and receipts are judged apart.
OCCURRENCE_TYPES = ("reminder.due", "ticket.due")


# -- tenants and their plans ---------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A reminder plan as a tenant writes it; :meth:`toml` is its ``[reminders]`` section."""

    steps: tuple[tuple[str, int], ...] = (("before-5", -5), ("due", 0), ("after-3", 3), ("after-10", 10))
    repeat_every: int = 7
    repeat_times: int = 2
    call_after: int | None = 25
    call_every: int = 7
    call_times: int = 3
    ticket_after: int | None = 42

    def toml(self, ticket_url: str) -> str:
        lines = [f'[[reminders.steps]]\nname = "{name}"\noffset_days = {offset}\n' for name, offset in self.steps]
        lines.append(f"[reminders.repeat]\nevery_days = {self.repeat_every}\nmax_times = {self.repeat_times}\n")
        if self.call_after is not None:
            lines.append(
                f"[reminders.escalation]\nafter_days = {self.call_after}\nevery_days = {self.call_every}\n"
                f'max_times = {self.call_times}\nchannels = ["voice"]\n'
            )
        if self.ticket_after is not None:
            lines.append(f'[reminders.ticket]\nafter_days = {self.ticket_after}\nurl = "{ticket_url}"\n')
        return "\n".join(lines)


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    timezone: str
    currency: str
    holidays: tuple[date, ...] = ()
    plan: Plan = Plan()
    receipt: bool = False
    reanchor_on_partial: bool = False

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def toml(self, ticket_url: str) -> str:
        holidays = ", ".join(d.isoformat() for d in self.holidays)
        weekdays = ", ".join(f'"{d}"' for d in WEEKDAYS)
        return (
            f'[reminders]\ntimezone = "{self.timezone}"\nreceipt = {str(self.receipt).lower()}\n'
            f"reanchor_on_partial = {str(self.reanchor_on_partial).lower()}\n\n"
            f'[reminders.window]\nstart = "09:00"\nend = "18:00"\nweekdays = [{weekdays}]\nholidays = [{holidays}]\n\n'
            + self.plan.toml(ticket_url)
        )

    # The window, computed here from first principles: 09:00 to 18:00 local, Monday to Friday.

    def open_day(self, day: date) -> bool:
        return day.weekday() < 5 and day not in self.holidays

    def in_window(self, instant: datetime) -> bool:
        local = instant.astimezone(self.zone)
        return self.open_day(local.date()) and time(9) <= local.time() < time(18)

    def local_date(self, instant: datetime) -> date:
        return instant.astimezone(self.zone).date()

    def at(self, day: date, hour: int = 9) -> datetime:
        """Local ``hour`` o'clock on ``day``, in UTC."""
        return datetime.combine(day, time(hour), self.zone).astimezone(UTC)

    def first_send(self, nominal: date) -> datetime:
        """When a message nominally due on ``nominal`` goes out: 09:00 on the first open day from it."""
        day = nominal
        while not self.open_day(day):
            day += timedelta(days=1)
        return self.at(day)


def write_tenants(root: Path, tenants: list[Tenant], ticket_url: str) -> TenantDirectory:
    for tenant in tenants:
        folder = root / tenant.tenant_id
        folder.mkdir(parents=True)
        (folder / "tenant.toml").write_text(tenant.toml(ticket_url), encoding="utf-8")
    return TenantDirectory(root)


# -- what the plan should produce ----------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Due:
    """One occurrence a plan owes an invoice: ``(step, occurrence)`` names it, as the events do."""

    nominal: date
    event_type: str
    step: str
    occurrence: int
    days_from_due: int


def expected(plan: Plan, due: date, anchor: date | None = None) -> list[Due]:
    """Every occurrence of ``plan`` for an invoice due on ``due`` (steps after the due date count
    from ``anchor`` when a partial payment re-anchored them)."""

    def reminder(step: str, n: int, offset: int) -> Due:
        nominal = (anchor if anchor is not None and offset > 0 else due) + timedelta(days=offset)
        return Due(nominal, "reminder.due", step, n, (nominal - due).days)

    out = [reminder(name, 1, offset) for name, offset in plan.steps]
    last, last_offset = max(plan.steps, key=lambda s: s[1])
    out += [reminder(last, n + 1, last_offset + n * plan.repeat_every) for n in range(1, plan.repeat_times + 1)]
    if plan.call_after is not None:
        for n in range(1, plan.call_times + 1):
            offset = plan.call_after + (n - 1) * plan.call_every
            out.append(Due(due + timedelta(days=offset), "reminder.due", "call", n, offset))
    if plan.ticket_after is not None:
        out.append(Due(due + timedelta(days=plan.ticket_after), "ticket.due", "ticket", 1, plan.ticket_after))
    return sorted(out)


# -- events as ingest and the renderer publish them ---------------------------------------------


def invoice_created(tenant: Tenant, number: str, due: date, total: str = "100.00") -> Envelope[InvoiceCreatedV1]:
    amount = Decimal(total)
    customer = Customer(customer_id=f"C-{number}", name="Cliente", country="ES", email=f"{number.lower()}@example.com")
    data = InvoiceCreatedV1(
        invoice_number=number,
        issue_date=due - timedelta(days=30),
        due_date=due,
        currency=tenant.currency,
        seller_name="Vendedor SL",
        customer=customer,
        lines=[Line(description="Servicio", quantity=Decimal(1), unit_price=amount, amount=amount)],
        subtotal=amount,
        tax_total=Decimal("0.00"),
        total=amount,
        erp_source="erp-test",
    )
    return _ingested("invoice.created", data, tenant, number)


def invoice_rendered(created: Envelope[InvoiceCreatedV1]) -> Envelope[InvoiceRenderedV1]:
    invoice = created.data
    document = DocumentRef(
        bucket="documents",
        key=f"{created.tenant_id}/{invoice.invoice_number}.pdf",
        sha256="0" * 64,
        size_bytes=1234,
        filename=f"{invoice.invoice_number}.pdf",
    )
    summary = InvoiceSummary(
        invoice_number=invoice.invoice_number,
        seller_name=invoice.seller_name,
        customer=invoice.customer,
        currency=invoice.currency,
        total=invoice.total,
        due_date=invoice.due_date,
    )
    data = InvoiceRenderedV1(
        document=document,
        invoice=summary,
        source="rendered",
        packaging="pdf",
        einvoice="none",
        pdf_sha256="0" * 64,
        retention_days=3650,
        expires_on=invoice.due_date + timedelta(days=3650),
        tenant_config_version="test",
    )
    return make_event(
        event_id=uuid.uuid4(),
        type="invoice.rendered",
        schema_version=CURRENT_VERSION["invoice.rendered"],
        data=data,
        tenant_id=created.tenant_id,
        invoice_id=invoice.invoice_number,
        correlation_id=created.correlation_id,
        causation_id=created.event_id,
        producer="renderer",
    )


def payment(
    tenant: Tenant, number: str, amount: str, paid_at: datetime, currency: str | None = None
) -> Envelope[PaymentReceivedV1]:
    data = PaymentReceivedV1(
        payment_id=f"P-{uuid.uuid4().hex[:10]}",
        amount=Decimal(amount),
        currency=currency or tenant.currency,
        paid_at=paid_at,
        method="sepa_transfer",
    )
    return _ingested("payment.received", data, tenant, number)


def cancelled(tenant: Tenant, number: str, at: datetime) -> Envelope[InvoiceCancelledV1]:
    data = InvoiceCancelledV1(kind="cancellation", reason="issued twice", cancelled_at=at, erp_source="erp-test")
    return _ingested("invoice.cancelled", data, tenant, number)


def _ingested(event_type: str, data: Any, tenant: Tenant, number: str) -> Envelope[Any]:
    """An event as ingest publishes it: a flow of its own (correlation id = event id)."""
    event_id = uuid.uuid4()
    return make_event(
        event_id=event_id,
        type=event_type,
        schema_version=CURRENT_VERSION[event_type],
        data=data,
        tenant_id=tenant.tenant_id,
        invoice_id=number,
        correlation_id=str(event_id),
        causation_id=None,
        producer="ingest",
    )


# -- kills ---------------------------------------------------------------------------------------


class Killed(Exception):
    """A simulated SIGKILL: whoever sees it is dropped with everything it held in memory."""


@dataclass
class Process:
    """One scheduler process. Once killed it stays dead: work it still had running (the other
    publishes of a batch it sent together) fails at its next call, as it would with the process gone;
    a call already in flight (a write on the wire) may still land."""

    name: str
    alive: bool = True


#: The process the current task works for (copied into the tasks a handler starts).
PROCESS: ContextVar[Process] = ContextVar("process")


When = Literal["before", "after"]


@dataclass
class Faults:
    """Where to kill: ``points[(operation, n)]`` says whether the n-th call of ``operation``
    (``"publish"``, ``"plan"``; counted from 1 over the whole run, restarts included) dies before
    or after the real call took effect."""

    points: dict[tuple[str, int], When] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    kills: list[str] = field(default_factory=list)

    def enter(self, operation: str) -> int:
        _alive()
        self.calls[operation] += 1
        self._maybe(operation, self.calls[operation], "before")
        return self.calls[operation]

    def leave(self, operation: str, n: int) -> None:
        _alive()
        self._maybe(operation, n, "after")

    def _maybe(self, operation: str, n: int, when: When) -> None:
        if self.points.get((operation, n)) == when:
            self.kills.append(f"{operation}#{n} {when}")
            PROCESS.get(OUTSIDE).alive = False
            raise Killed(self.kills[-1])


#: Where calls from outside any scheduler process run (the test's own publishing).
OUTSIDE = Process("test")


def _alive() -> None:
    process = PROCESS.get(OUTSIDE)
    if not process.alive:
        raise Killed(f"{process.name} is dead")


@dataclass(frozen=True)
class Sent:
    """An event the broker acknowledged, and the simulated instant it was published at."""

    event: Envelope[Any]
    at: datetime


class SimPublisher(Publisher):
    """The real publisher on the test's own topics; notes what the broker acknowledged and when
    (simulated time), and dies where :class:`Faults` say."""

    def __init__(self, bus: Bus, clock: Callable[[], datetime], faults: Faults) -> None:
        super().__init__(bus.settings, client_id="sim-scheduler")
        self._clock = clock
        self._faults = faults
        self.sent: list[Sent] = []

    async def publish(self, event: Envelope[Any]) -> None:
        n = self._faults.enter("publish")
        await super().publish(event)
        self.sent.append(Sent(event, self._clock()))
        self._faults.leave("publish", n)


class SimSchedules(Schedules):
    """The real schedules store; moving a timer may die where :class:`Faults` say."""

    def __init__(self, collection: AsyncCollection[Document], faults: Faults) -> None:
        super().__init__(collection, pii_cipher(collection.database))
        self._faults = faults

    async def plan(
        self, state: ScheduleState, *, cursor: Cursor | None, key: str, due_ms: int, fresh: bool = False
    ) -> bool:
        n = self._faults.enter("plan")
        moved = await super().plan(state, cursor=cursor, key=key, due_ms=due_ms, fresh=fresh)
        self._faults.leave("plan", n)
        return moved


# -- the simulation ------------------------------------------------------------------------------


class SimClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


Route = Callable[[SchedulerHandlers, Message[Envelope[Any]]], Awaitable[None]]
#: The scheduler's routes, as bootstrap registers them.
ROUTES: dict[str, Route] = {
    "invoice.created": SchedulerHandlers.on_invoice_created,
    "invoice.rejected": SchedulerHandlers.on_invoice_rejected,
    "invoice.rendered": SchedulerHandlers.on_invoice_rendered,
    "invoice.cancelled": SchedulerHandlers.on_invoice_cancelled,
    "payment.received": SchedulerHandlers.on_payment_received,
    "delivery.succeeded": SchedulerHandlers.on_delivery_succeeded,
}


@dataclass
class Simulation:
    clock: SimClock
    bus: Bus
    db: AsyncDatabase[Document]
    tenants: TenantDirectory
    publisher: SimPublisher
    faults: Faults
    grace: timedelta
    batch: int
    replicas: list[SchedulerHandlers] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    restarts: int = 0
    ticks: int = 0
    #: Replicas tick concurrently instead of in turn.
    together: bool = False
    _offsets: itertools.count[int] = field(default_factory=itertools.count)
    _owners: itertools.count[int] = field(default_factory=itertools.count)

    def replica(self, owner: str) -> SchedulerHandlers:
        """Fresh handler objects over the same MongoDB, wired as bootstrap wires them (a new process)."""
        lease = Lease(self.db["leases"], SWEEP_LEASE, owner=owner, ttl=LEASE_TTL, clock=self.clock)
        return SchedulerHandlers(
            self.publisher,
            SimSchedules(self.db["schedules"], self.faults),
            lease,
            effectiveness=ChannelEffectiveness.in_database(self.db),
            tenants=self.tenants,
            clock=self.clock,
            unknown_invoice_grace=self.grace,
            batch=self.batch,
        )

    def start(self, count: int = 1) -> None:
        self.processes = [Process(f"replica-{next(self._owners)}") for _ in range(count)]
        self.replicas = [self.replica(p.name) for p in self.processes]

    def _restart(self, index: int) -> None:
        self.restarts += 1
        self.processes[index] = Process(f"replica-{next(self._owners)}")
        self.replicas[index] = self.replica(self.processes[index].name)

    async def _in(self, index: int, call: Callable[[SchedulerHandlers], Awaitable[object]]) -> None:
        """``call`` on replica ``index``, working for its process."""
        token = PROCESS.set(self.processes[index])
        try:
            await call(self.replicas[index])
        finally:
            PROCESS.reset(token)

    def message(self, event: Envelope[Any]) -> Message[Envelope[Any]]:
        """``event`` as the consumer loop hands it over: decoded from its bytes, at the next offset."""
        raw = event.model_dump_json().encode()
        return Message(REGISTRY[event.type], 0, next(self._offsets), event.partition_key, {}, raw, parse_event(raw))

    async def deliver(self, event: Envelope[Any], *, replica: int = 0) -> None:
        """Hand ``event`` to the scheduler as the consumer loop does (decoded from its bytes), again
        after a kill: its offset was not committed, so the restarted process gets it again."""
        message = self.message(event)
        while True:
            try:
                await self._in(replica, lambda handlers: ROUTES[event.type](handlers, message))
                return
            except Killed:
                self._restart(replica)

    async def tick(self) -> None:
        """Every replica ticks once, taking turns at going first (or all at once, ``together``);
        a killed one is restarted."""
        self.ticks += 1
        turn = self.ticks % len(self.replicas)
        order = [*range(turn, len(self.replicas)), *range(turn)]
        outcomes: list[BaseException | None] = []
        if self.together:
            outcomes = await asyncio.gather(
                *(self._in(i, SchedulerHandlers.tick) for i in order), return_exceptions=True
            )
        else:
            for index in order:
                try:
                    await self._in(index, SchedulerHandlers.tick)
                    outcomes.append(None)
                except Killed as e:
                    outcomes.append(e)
        for index, outcome in zip(order, outcomes, strict=True):
            if isinstance(outcome, Killed):
                self._restart(index)
            elif isinstance(outcome, BaseException):
                raise outcome

    async def run_until(self, end: datetime, step: timedelta = HOUR) -> None:
        """Advance the clock by ``step`` up to ``end``, ticking at each instant."""
        while self.clock.now < end:
            self.clock.now = min(self.clock.now + step, end)
            await self.tick()

    async def down_until(self, instant: datetime) -> None:
        """The scheduler is down until ``instant`` (time passes, nobody ticks), then starts again
        (new processes) and ticks at once."""
        self.clock.now = instant
        self.start(len(self.replicas))
        await self.tick()

    async def on_bus(self, *event_types: str) -> list[Envelope[Any]]:
        """What the broker holds on those topics, read from the start until as many records as it
        acknowledged to the scheduler are there (only the scheduler publishes on them). Not by end
        offsets: the local broker's can lag records it has acknowledged, so a read up to them may
        stop short."""
        found: list[Envelope[Any]] = []
        for event_type in event_types:
            expect = len(self.sent(event_type))
            if expect:
                topic = self.bus.topic(event_type)
                found += [
                    parse_event(r.value)
                    for r in await read_topic(self.bus.settings.bootstrap_servers, topic, expect=expect)
                ]
        return found

    def sent(self, *event_types: str, invoice: str | None = None) -> list[Sent]:
        return [
            s
            for s in self.publisher.sent
            if s.event.type in event_types and (invoice is None or s.event.invoice_id == invoice)
        ]


@asynccontextmanager
async def simulation(
    cfg: StackConfig,
    tenants_dir: Path,
    tenants: list[Tenant],
    start: datetime,
    *,
    faults: Faults | None = None,
    grace: timedelta = timedelta(days=1),
    batch: int = 1000,
) -> AsyncIterator[Simulation]:
    """Topics and a MongoDB database of this simulation's own, its tenants written as tenant.toml."""
    directory = write_tenants(tenants_dir, tenants, ticket_url(cfg))
    settings = mongo_settings(cfg)
    client = create_client(settings)
    db = client[f"{settings.database}_sim_{uuid.uuid4().hex[:8]}"]
    await Schedules(db["schedules"], pii_cipher(db)).ensure_indexes()
    await ChannelEffectiveness.in_database(db).ensure_indexes()
    clock = SimClock(start)
    faults = faults or Faults()
    try:
        async with isolated(cfg, client_id="sim-feeder") as bus:
            publisher = SimPublisher(bus, clock, faults)
            await publisher.start()
            try:
                sim = Simulation(clock, bus, db, directory, publisher, faults, grace, batch)
                sim.start()
                yield sim
            finally:
                await publisher.stop()
    finally:
        await client.drop_database(db.name)
        await client.close()


def ticket_url(cfg: StackConfig) -> str:
    """The capture server's helpdesk: every tenant's ticket webhook in these tests."""
    return f"{cfg.sms_url}/_helpdesk/tickets"


#: ``(tenant, invoice, step, occurrence, days_from_due)``: one occurrence of an invoice's plan. The
#: day tells a re-anchored step (counted from a partial payment's day) from the one sent before.
Identity = tuple[str, str, str, int, int]


def identity(tenant_id: str, invoice: str, due: Due) -> Identity:
    return (tenant_id, invoice, due.step, due.occurrence, due.days_from_due)


def occurrence_of(event: Envelope[Any]) -> Identity:
    """Which plan occurrence a ``reminder.due`` or ``ticket.due`` is."""
    data = event.data
    n = 1 if event.type == "ticket.due" else data.occurrence
    return (event.tenant_id, event.invoice_id or "", data.step, n, data.days_from_due)
