"""Consumer-loop benchmark: what the loop's machinery costs, and what one sick partition costs the rest.

Run with ``python -m benchmarks.bench_consumer`` (``make bench-consumer``). On the local broker
(Tansu, started for the run), in one run:

* **raw**: a bare ``AIOKafkaConsumer`` in a consumer group, manual commits every 0.5 s (as the
  loop does), a no-op handler called per record: 50 000 records over 4 partitions;
* **loop**: the same records through :class:`ConsumerLoop` with a no-op handler, on an inbound
  ERP topic (records reach the handler as bytes, so no parsing is measured on either side);
* **healthy partitions during a failure**: 3 partitions of 10 000 records each, with a fourth
  partition whose handler raises ``DependencyDown`` on every attempt, against the same run with
  all four healthy. The rate counts only the three healthy partitions.

Rates are taken from the first record handled to the last (group joins are not counted).
The last line is ``RESULT raw_per_s=... loop_per_s=... ratio_vs_raw=... healthy_ratio_during_failure=...
overhead_us_per_record=...`` (the loop's own cost per record: decoding, metrics, deadline, commit
bookkeeping, which a real handler's milliseconds dwarf).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from factura.common.errors import DependencyDown
from factura.common.kafka.admin import ensure_topics
from factura.common.kafka.consumer import ConsumerLoop, Message
from factura.common.kafka.producer import Publisher
from factura.common.settings import KafkaSettings
from factura.common.topics import ERP_INVOICES, ERP_PAYMENTS
from factura.devstack.config import FETCH_MAX_WAIT_MS, StackConfig
from factura.devstack.stack import Stack

RECORDS = int(os.environ.get("BENCH_RECORDS", "50000"))
PER_HEALTHY_PARTITION = int(os.environ.get("BENCH_PER_PARTITION", "10000"))
PAYLOAD = b'{"tenant_id": "harinas-sur", "invoice_number": "F-2026-000001", "padding": "' + b"x" * 200 + b'"}'


async def fill(bootstrap: str, topic: str, per_partition: dict[int, int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        pending = []
        for partition, count in per_partition.items():
            for _ in range(count):
                pending.append(await producer.send(topic, PAYLOAD, partition=partition))
                if len(pending) >= 5000:
                    await asyncio.gather(*pending)
                    pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


class Clock:
    """Counts handled records; the rate runs from the first record to the ``target``-th."""

    def __init__(self, target: int, counts: Callable[[Message[Any] | int], bool] = lambda _: True) -> None:
        self.target = target
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()
        self._counts = counts

    def tick(self, item: Message[Any] | int) -> None:
        if not self._counts(item):
            return
        now = time.perf_counter()
        if self.count == 0:
            self.first = now
        self.count += 1
        if self.count == self.target:
            self.last = now
            self.done.set()

    @property
    def per_s(self) -> float:
        return (self.target - 1) / (self.last - self.first)


async def raw(settings: KafkaSettings, topic: str) -> float:
    clock = Clock(RECORDS)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"raw-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.max_poll_records,
        rebalance_timeout_ms=settings.rebalance_timeout_ms,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )
    await consumer.start()
    next_commit = time.monotonic() + 0.5
    try:
        while not clock.done.is_set():
            batch = await consumer.getmany(timeout_ms=settings.poll_timeout_ms, max_records=settings.max_poll_records)
            for records in batch.values():
                for record in records:
                    await _noop(record.offset)
                    clock.tick(record.offset)
            if time.monotonic() >= next_commit:
                await consumer.commit()
                next_commit = time.monotonic() + 0.5
        await consumer.commit()
    finally:
        await consumer.stop()
    return clock.per_s


async def _noop(_: object) -> None:
    return None


async def through_loop(settings: KafkaSettings, route: str, clock: Clock, handler: Any = None) -> float:
    publisher = Publisher(settings, client_id="bench")
    await publisher.start()

    async def count(message: Message[bytes]) -> None:
        clock.tick(message)

    loop = ConsumerLoop(
        settings=settings,
        group_id=f"bench-{uuid.uuid4().hex[:6]}",
        routes={route: handler or count},
        publisher=publisher,
        service="bench",
    )
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.wait_for(clock.done.wait(), 600)
    finally:
        loop.stop()
        await task
        await publisher.stop()
    return clock.per_s


async def healthy_rate(settings: KafkaSettings, *, sick: bool) -> float:
    """Records per second on partitions 1-3 while partition 0 is healthy or failing."""
    prefix = f"{settings.topic_prefix}{'sick' if sick else 'well'}."
    scoped = settings.model_copy(update={"topic_prefix": prefix})
    await ensure_topics(scoped)
    topic = ERP_PAYMENTS.physical(prefix)
    await fill(
        settings.bootstrap_servers,
        topic,
        {0: PER_HEALTHY_PARTITION, 1: PER_HEALTHY_PARTITION, 2: PER_HEALTHY_PARTITION, 3: PER_HEALTHY_PARTITION},
    )
    clock = Clock(3 * PER_HEALTHY_PARTITION, counts=lambda m: isinstance(m, Message) and m.partition != 0)

    async def handler(message: Message[bytes]) -> None:
        if sick and message.partition == 0:
            raise DependencyDown("bench", "partition 0's dependency is down")
        clock.tick(message)

    return await through_loop(scoped, ERP_PAYMENTS.name, clock, handler)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = StackConfig.free_ports(Path(tmp), topic_prefix=f"bench{uuid.uuid4().hex[:6]}.")
        stack = Stack(cfg)
        try:
            stack.start_infra()
            settings = KafkaSettings(
                bootstrap_servers=cfg.kafka_bootstrap,
                topic_prefix=cfg.topic_prefix,
                idempotence=False,
                rebalance_timeout_ms=3000,
                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
                retry_initial_s=0.05,
                retry_max_s=0.5,
                max_poll_records=int(os.environ.get("BENCH_MAX_POLL_RECORDS", "500")),
            )
            await ensure_topics(settings)
            topic = ERP_INVOICES.physical(cfg.topic_prefix)
            per = RECORDS // ERP_INVOICES.partitions
            await fill(cfg.kafka_bootstrap, topic, dict.fromkeys(range(ERP_INVOICES.partitions), per))
            print(f"{RECORDS} records of {len(PAYLOAD)} B on {ERP_INVOICES.partitions} partitions")
            raw_per_s = await raw(settings, topic)
            print(f"raw aiokafka, no-op handler:  {raw_per_s:10.0f} records/s")
            loop_per_s = await through_loop(settings, ERP_INVOICES.name, Clock(RECORDS))
            print(f"ConsumerLoop, no-op handler:  {loop_per_s:10.0f} records/s")
            well = await healthy_rate(settings, sick=False)
            sick = await healthy_rate(settings, sick=True)
            print(f"3 healthy partitions, 4th healthy: {well:10.0f} records/s")
            print(f"3 healthy partitions, 4th failing: {sick:10.0f} records/s")
            overhead_us = (1 / loop_per_s - 1 / raw_per_s) * 1e6
            print(f"loop overhead per record:     {overhead_us:10.1f} us")
            print(
                f"RESULT raw_per_s={raw_per_s:.0f} loop_per_s={loop_per_s:.0f}"
                f" ratio_vs_raw={loop_per_s / raw_per_s:.2f} healthy_ratio_during_failure={sick / well:.2f}"
                f" overhead_us_per_record={overhead_us:.1f}"
            )
        finally:
            stack.stop()


if __name__ == "__main__":
    asyncio.run(main())
