"""The scheduler on the real MongoDB-wire server and broker: one sweeper, refused payments, rejections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pymongo.asynchronous.collection import AsyncCollection

from factura.common.delivery.effectiveness import ChannelEffectiveness
from factura.common.envelope import Envelope, utcnow
from factura.common.kafka.admin import ensure_topics
from factura.common.kafka.consumer import Message
from factura.common.kafka.producer import Publisher
from factura.common.mongo import Document, create_client, database
from factura.common.settings import KafkaSettings
from factura.common.tenants import TenantDirectory
from factura.common.topics import REGISTRY
from factura.devstack.config import StackConfig
from factura.scheduler.decisions import refusals
from factura.scheduler.handlers import SchedulerHandlers
from factura.scheduler.lease import Lease
from factura.scheduler.schedule import Schedules
from tests.conftest import kafka_settings, mongo_settings
from tests.kafka_helpers import read_topic
from tests.unit.test_scheduler import TENANT, invoice_created, invoice_rejected, payment_received
from tests.waiting import until

pytestmark = pytest.mark.integration
LEASE = "reminder-sweep"


@dataclass
class Env:
    cfg: StackConfig
    kafka: KafkaSettings
    publisher: Publisher
    schedules: Schedules
    leases: AsyncCollection[Document]
    effectiveness: ChannelEffectiveness

    def lease(self, owner: str, ttl_s: float, clock: Callable[[], datetime] = utcnow) -> Lease:
        return Lease(self.leases, LEASE, owner=owner, ttl=timedelta(seconds=ttl_s), clock=clock)

    def handlers(self, lease: Lease, clock: Callable[[], datetime] = utcnow) -> SchedulerHandlers:
        return SchedulerHandlers(
            self.publisher,
            self.schedules,
            lease,
            effectiveness=self.effectiveness,
            tenants=TenantDirectory(None),
            clock=clock,
        )

    def topic(self, logical: str) -> str:
        return f"{self.kafka.topic_prefix}{logical}"

    async def count(self, logical: str) -> int:
        """Records on a topic, exactly (end offsets): publish waits for the ack, so this is final."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.cfg.kafka_bootstrap, group_id=None)
        await consumer.start()
        try:
            parts = [TopicPartition(self.topic(logical), p) for p in range(REGISTRY[logical].partitions)]
            return sum((await consumer.end_offsets(parts)).values())
        finally:
            await consumer.stop()

    async def events(self, logical: str, expect: int) -> list[dict[str, Any]]:
        records = await read_topic(self.cfg.kafka_bootstrap, self.topic(logical), expect=expect)
        assert len(records) == expect
        return [json.loads(r.value) for r in records]


@asynccontextmanager
async def environment(cfg: StackConfig) -> AsyncIterator[Env]:
    """Own topic prefix and own collections: tests never see each other's state."""
    kafka = kafka_settings(cfg, prefix=f"{cfg.topic_prefix}{uuid.uuid4().hex[:6]}.")
    await ensure_topics(kafka)
    publisher = Publisher(kafka, client_id="test-scheduler")
    await publisher.start()
    mongo = mongo_settings(cfg)
    client = create_client(mongo)
    suffix = uuid.uuid4().hex[:6]
    db = database(client, mongo)
    schedules = Schedules(db[f"schedules_{suffix}"])
    await schedules.ensure_indexes()
    effectiveness = ChannelEffectiveness(db[f"channel_deliveries_{suffix}"], db[f"channel_credits_{suffix}"])
    try:
        yield Env(cfg, kafka, publisher, schedules, db[f"leases_{suffix}"], effectiveness)
    finally:
        await publisher.stop()
        await client.close()


def message(event: Envelope[Any]) -> Message[Envelope[Any]]:
    return Message(REGISTRY[event.type], 0, 0, event.partition_key, {}, event.model_dump_json().encode(), event)


async def record_overdue(handlers: SchedulerHandlers, count: int) -> list[str]:
    numbers = [f"F-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    for number in numbers:
        await handlers.on_invoice_created(message(invoice_created(number, due=utcnow().date() - timedelta(days=2))))
    return [f"{TENANT}/{n}" for n in numbers]


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


async def test_one_lease_holder_sweeps_and_another_takes_over_after_expiry(cfg: StackConfig) -> None:
    async with environment(cfg) as env:
        clock = Clock()
        lease_a, lease_b = env.lease("a", 30, clock), env.lease("b", 30, clock)
        a, b = env.handlers(lease_a, clock), env.handlers(lease_b, clock)

        first = await record_overdue(a, 3)
        assert sorted(await a.tick() or []) == sorted(first)
        assert await b.tick() is None  # a holds the lease: b does not sweep
        second = await record_overdue(b, 1)
        assert await b.tick() is None
        clock.now += timedelta(seconds=20)  # a renews within its term
        assert await a.tick() == second
        assert await b.tick() is None and await lease_b.holder() == "a"

        third = await record_overdue(a, 1)
        clock.now += timedelta(seconds=31)  # a stopped renewing (dead): its term ran out
        assert not lease_a.held()
        assert await b.tick() == third
        assert await a.tick() is None and not lease_a.held() and lease_b.held()
        assert await lease_a.holder() == "b"

        await lease_b.release()  # clean stop: a takes over at once, no waiting for expiry
        assert await a.tick() == []
        assert (a.swept, a.skipped, b.swept, b.skipped) == (3, 1, 1, 3)
        assert await env.count("reminder.due") == 5  # each overdue invoice reminded exactly once
        reminded = {f"{e['tenant_id']}/{e['invoice_id']}" for e in await env.events("reminder.due", 5)}
        assert reminded == set(first + second + third)


async def test_concurrent_acquirers_of_a_free_lease_get_one_winner(cfg: StackConfig) -> None:
    async with environment(cfg) as env:
        leases = [env.lease(f"r{i}", 30) for i in range(8)]
        won = await asyncio.gather(*(lease.acquire() for lease in leases))
        assert sum(won) == 1
        winner = leases[won.index(True)]
        assert await winner.holder() == winner.owner
        renewed = await asyncio.gather(*(lease.acquire() for lease in leases))
        assert renewed == won  # the holder renews, nobody else gets in


async def test_two_running_replicas_one_sweeps_dead_holder_replaced_clean_stop_hands_over(cfg: StackConfig) -> None:
    async with environment(cfg) as env:
        tick_s, ttl_s = 0.1, 3.0
        replicas = {name: env.handlers(env.lease(name, ttl_s)) for name in ("a", "b")}
        overdue = await record_overdue(replicas["a"], 4)
        stopping = {name: asyncio.Event() for name in replicas}
        tasks = {n: asyncio.create_task(h.run_sweeps(stopping[n], tick_s)) for n, h in replicas.items()}
        try:
            # Both replicas tick repeatedly; only one of them ever sweeps.
            await until(lambda: all(h.swept + h.skipped >= 5 for h in replicas.values()))
            sweepers = [n for n, h in replicas.items() if h.swept > 0]
            assert len(sweepers) == 1, {n: (h.swept, h.skipped) for n, h in replicas.items()}
            holder = sweepers[0]
            other = "b" if holder == "a" else "a"
            assert replicas[other].swept == 0 and replicas[other].skipped >= 5
            assert await env.count("reminder.due") == len(overdue)

            # The holder dies (no release): after the term the other replica sweeps the new invoice.
            dead = tasks.pop(holder)
            dead.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dead
            late = await record_overdue(replicas[other], 1)
            await until(lambda: replicas[other].swept > 0, timeout_s=ttl_s + 10)
            await until_count(env, "reminder.due", len(overdue) + 1)
            reminded = {
                f"{e['tenant_id']}/{e['invoice_id']}" for e in await env.events("reminder.due", len(overdue) + 1)
            }
            assert reminded == set(overdue + late)

            # A clean stop releases: a fresh replica sweeps on its very first tick.
            stopping[other].set()
            await asyncio.wait_for(tasks.pop(other), 10)
            fresh = env.handlers(env.lease("c", ttl_s))
            assert await fresh.tick() == [] and fresh.swept == 1
        finally:
            for name, task in tasks.items():
                stopping[name].set()
                await asyncio.wait_for(task, 10)


async def until_count(env: Env, logical: str, expected: int, timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if await env.count(logical) >= expected:
            assert await env.count(logical) == expected
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{logical}: fewer than {expected} records in time")


async def test_payments_in_another_currency_are_refused_in_either_order(cfg: StackConfig) -> None:
    async with environment(cfg) as env:
        handlers = env.handlers(env.lease("solo", 30))
        due = utcnow().date() - timedelta(days=5)

        # Invoice first, then a USD payment (refused) and a partial EUR one (counted).
        i1 = invoice_created(f"F-{uuid.uuid4().hex[:8]}", due=due, currency="EUR", total="100.00")
        await handlers.on_invoice_created(message(i1))
        usd1 = payment_received(i1.data.invoice_number, "100.00", "USD")
        await handlers.on_payment_received(message(usd1))
        await handlers.on_payment_received(message(payment_received(i1.data.invoice_number, "40.00", "EUR")))

        # Payment first: nothing to compare with until the invoice arrives, then refused.
        n2 = f"F-{uuid.uuid4().hex[:8]}"
        usd2 = payment_received(n2, "250.00", "USD")
        await handlers.on_payment_received(message(usd2))
        state = await env.schedules.state(TENANT, n2)
        assert state is not None and state.invoice is None and refusals(state) == []
        i2 = invoice_created(n2, due=due, currency="EUR", total="250.00")
        await handlers.on_invoice_created(message(i2))
        await handlers.on_invoice_created(message(i2))  # redelivery: the same event again

        # Paid in full in its own currency: neither refused nor reminded.
        i3 = invoice_created(f"F-{uuid.uuid4().hex[:8]}", due=due, currency="RON", total="75.50")
        await handlers.on_payment_received(message(payment_received(i3.data.invoice_number, "75.50", "RON")))
        await handlers.on_invoice_created(message(i3))

        assert await env.count("payment.unmatched") == 3  # i1 once, i2 twice (redelivery)
        events = await env.events("payment.unmatched", 3)
        by_id = {e["event_id"]: e for e in events}
        assert len(by_id) == 2  # the redelivery republished the same event id: audit keeps one
        by_payment = {e["data"]["payment"]["payment_id"]: e for e in by_id.values()}
        assert set(by_payment) == {usd1.data.payment_id, usd2.data.payment_id}
        for payment, invoice in ((usd1, i1), (usd2, i2)):
            e = by_payment[payment.data.payment_id]
            assert e["type"] == "payment.unmatched" and e["producer"] == "scheduler"
            assert e["data"]["reason"] == "currency_mismatch" and e["data"]["invoice_currency"] == "EUR"
            assert e["data"]["payment"]["currency"] == "USD"
            assert e["invoice_id"] == invoice.data.invoice_number and e["tenant_id"] == TENANT
            assert e["causation_id"] == str(payment.event_id) and e["correlation_id"] == payment.correlation_id

        # Refused payments do not count: i1 (40 of 100 EUR) and i2 (0 of 250 EUR) are reminded, i3 is paid.
        reminded = await handlers.tick()
        assert sorted(reminded or []) == sorted(f"{TENANT}/{i.data.invoice_number}" for i in (i1, i2))
        assert await env.count("reminder.due") == 2


async def test_invoices_rejected_at_render_get_no_reminder(cfg: StackConfig) -> None:
    async with environment(cfg) as env:
        handlers = env.handlers(env.lease("solo", 30))
        due = utcnow().date() - timedelta(days=5)

        def new(number: str | None = None) -> Envelope[Any]:
            return invoice_created(number or f"F-{uuid.uuid4().hex[:8]}", due=due)

        # Rejected after it was recorded.
        rejected = new()
        await handlers.on_invoice_created(message(rejected))
        await handlers.on_invoice_rejected(message(invoice_rejected(rejected)))
        # The rejection overtakes the invoice (another topic, another partition).
        overtaken = new()
        await handlers.on_invoice_rejected(message(invoice_rejected(overtaken)))
        await handlers.on_invoice_created(message(overtaken))
        # An ingest rejection naming this invoice (a refused payment pointed at it) changes nothing.
        ingest_only = new()
        await handlers.on_invoice_created(message(ingest_only))
        await handlers.on_invoice_rejected(message(invoice_rejected(ingest_only, stage="ingest")))
        # A corrected version that renders is reminded although its first version was rejected.
        v1 = new()
        await handlers.on_invoice_created(message(v1))
        await handlers.on_invoice_rejected(message(invoice_rejected(v1)))
        v2 = new(v1.data.invoice_number)
        await handlers.on_invoice_created(message(v2))

        reminded = await handlers.tick()
        assert sorted(reminded or []) == sorted(f"{TENANT}/{i.data.invoice_number}" for i in (ingest_only, v2))
        assert await env.count("reminder.due") == 2
        for invoice in (rejected, overtaken):
            state = await env.schedules.state(TENANT, invoice.data.invoice_number)
            assert state is not None and not state.reminded and str(invoice.event_id) in state.rejected_causes
