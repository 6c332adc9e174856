"""The consumer loop on a bad day, against the real broker: stuck partitions, hung handlers,
rebalances mid-batch, a flood of dead-letters, and lag that tells the truth during a stall."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from factura.common.envelope import Envelope
from factura.common.errors import DependencyDown, InvalidMessage
from factura.common.events import FieldError
from factura.common.kafka.consumer import ConsumerLoop, Message
from factura.common.kafka.deadletter import DlqLimitExceeded
from factura.common.metrics import CONSUMER_LAG
from factura.devstack.config import StackConfig
from tests.integration.test_consumer_loop import event_bytes, running
from tests.kafka_helpers import isolated, read_topic
from tests.waiting import until

pytestmark = pytest.mark.integration


async def produce(cfg: StackConfig, topic: str, items: list[tuple[int, bytes]]) -> None:
    """Records to explicit partitions (the test decides which partition is the sick one)."""
    producer = AIOKafkaProducer(bootstrap_servers=cfg.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for partition, value in items:
            await producer.send_and_wait(topic, value, partition=partition)
    finally:
        await producer.stop()


def number(message: Message[Envelope[Any]]) -> str:
    return str(message.value.data.invoice_number)


async def test_one_stuck_partition_does_not_delay_the_others(cfg: StackConfig) -> None:
    stuck_attempts = 0
    handled: list[str] = []

    async def handler(message: Message[Envelope[Any]]) -> None:
        nonlocal stuck_attempts
        if message.partition == 0:
            stuck_attempts += 1
            raise DependencyDown("s3", "the bucket of partition 0 is down")
        handled.append(number(message))

    async with isolated(cfg) as (settings, publisher), running(settings, publisher, handler) as loop:
        topic = f"{settings.topic_prefix}invoice.created"
        healthy = [f"p{p}-{i}" for i in range(20) for p in (1, 2, 3)]
        await produce(cfg, topic, [(0, event_bytes("stuck"))])
        await until(lambda: stuck_attempts >= 1)
        await produce(cfg, topic, [(int(n[1]), event_bytes(n)) for n in healthy])
        await until(lambda: len(handled) == len(healthy))
        assert stuck_attempts >= 1 and "stuck" not in handled
        assert loop.outages.current().keys() == {"s3"}
    assert sorted(handled) == sorted(healthy)


async def test_lag_keeps_rising_while_a_partition_stalls(cfg: StackConfig) -> None:
    async def handler(message: Message[Envelope[Any]]) -> None:
        raise DependencyDown("mongo", "down for the whole test")

    async with isolated(cfg) as (settings, publisher):
        fast_lag = settings.model_copy(update={"lag_interval_s": 0.2})
        async with running(fast_lag, publisher, handler):
            topic = f"{settings.topic_prefix}invoice.created"
            await produce(cfg, topic, [(2, event_bytes(f"n{i}")) for i in range(7)])

            def lag() -> float | None:
                return CONSUMER_LAG.labels(topic="invoice.created", partition="2")._value.get()  # type: ignore[no-any-return]

            await until(lambda: lag() == 7)


async def test_a_hung_handler_times_out_as_a_bug_and_the_partition_goes_on(cfg: StackConfig) -> None:
    handled: list[str] = []
    attempts = Counter[str]()

    async def handler(message: Message[Envelope[Any]]) -> None:
        attempts[number(message)] += 1
        if number(message) == "hangs":
            await asyncio.Event().wait()
        handled.append(number(message))

    async with isolated(cfg) as (settings, publisher):
        short = settings.model_copy(update={"handler_timeout_s": 0.3})
        async with running(short, publisher, handler):
            topic = f"{settings.topic_prefix}invoice.created"
            await produce(cfg, topic, [(1, event_bytes("hangs")), (1, event_bytes("after"))])
            await until(lambda: handled == ["after"])
        dlq = await read_topic(cfg.kafka_bootstrap, f"{topic}.dlq", expect=1)
    assert attempts["hangs"] == settings.retry_max_attempts
    assert dict(dlq[0].headers)["dlq.reason"] == b"bug"
    assert b"HandlerTimeout" in dict(dlq[0].headers)["dlq.error"]


async def test_stop_returns_while_a_handler_hangs(cfg: StackConfig) -> None:
    entered = asyncio.Event()

    async def handler(message: Message[Envelope[Any]]) -> None:
        entered.set()
        await asyncio.Event().wait()  # never returns; handler_timeout is the default (long)

    async with isolated(cfg) as (settings, publisher):
        bounded = settings.model_copy(update={"drain_timeout_s": 1.0})
        loop = ConsumerLoop(
            settings=bounded, group_id="test", routes={"invoice.created": handler}, publisher=publisher, service="t"
        )
        task = asyncio.create_task(loop.run())
        await produce(cfg, f"{settings.topic_prefix}invoice.created", [(0, event_bytes("hangs"))])
        await asyncio.wait_for(entered.wait(), 20)
        started = time.monotonic()
        loop.stop()
        await asyncio.wait_for(task, 15)
    assert time.monotonic() - started < 10


async def test_rebalance_mid_batch_loses_nothing(cfg: StackConfig) -> None:
    """Member A is busy with a slow batch when B joins: A finishes its record in hand, commits,
    and hands over; every message is handled, and repeats are limited to records in flight."""
    seen: dict[str, Counter[str]] = {"a": Counter(), "b": Counter()}

    def slow(member: str) -> Any:
        async def handler(message: Message[Envelope[Any]]) -> None:
            await asyncio.sleep(0.05)
            seen[member][number(message)] += 1

        return handler

    async with isolated(cfg) as (settings, publisher):
        topic = f"{settings.topic_prefix}invoice.created"
        names = [f"m{i}" for i in range(160)]
        await produce(cfg, topic, [(i % 4, event_bytes(n)) for i, n in enumerate(names)])
        async with running(settings, publisher, slow("a")):
            await until(lambda: sum(seen["a"].values()) >= 10)
            async with running(settings, publisher, slow("b")):
                await until(lambda: set(seen["a"]) | set(seen["b"]) == set(names), timeout_s=60)
    total = seen["a"] + seen["b"]
    assert set(total) == set(names)
    assert seen["b"], "the second member never got a partition"
    repeats = sum(total.values()) - len(names)
    assert repeats <= 4, f"{repeats} repeats: more than one in-flight record per partition"


async def test_dead_letter_flood_stops_the_consumer(cfg: StackConfig) -> None:
    async def handler(message: Message[Envelope[Any]]) -> None:
        raise InvalidMessage([FieldError(field="data", message="a producer is sending nonsense")])

    async with isolated(cfg) as (settings, publisher):
        limited = settings.model_copy(update={"dlq_limit_consecutive": 5})
        loop = ConsumerLoop(
            settings=limited, group_id="test", routes={"invoice.created": handler}, publisher=publisher, service="t"
        )
        await produce(cfg, f"{settings.topic_prefix}invoice.created", [(0, event_bytes(f"n{i}")) for i in range(8)])
        with pytest.raises(DlqLimitExceeded):
            await asyncio.wait_for(loop.run(), 30)
