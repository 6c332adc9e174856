"""Kafka in tests: topics of a test's own, and reading them back straight from the broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from factura.common.envelope import Envelope
from factura.common.events import parse_event
from factura.common.kafka.admin import ensure_topics
from factura.common.kafka.producer import Publisher
from factura.common.settings import KafkaSettings
from factura.devstack.config import StackConfig
from tests.conftest import kafka_settings


async def read_topic(
    bootstrap: str, topic: str, *, expect: int, timeout_s: float = 20.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record on ``topic`` (no group, from the start) once at least ``expect`` arrived."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for items in batch.values():
                records.extend(items)
        return records
    finally:
        await consumer.stop()


async def read_all(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list[ConsumerRecord[bytes, bytes]]:
    """Exactly what is on ``topic`` now: every record below the end offsets taken first, so no read
    waits for a timeout, and records published meanwhile are not counted."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        wanted = {tp: end for tp, end in ends.items() if end > starts[tp]}
        if not wanted:
            return []
        consumer.assign(list(wanted))
        await consumer.seek_to_beginning(*wanted)
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + timeout_s
        pending = dict(wanted)
        while pending:
            assert time.monotonic() < deadline, f"{topic}: could not read up to the end offsets {wanted}"
            for tp, items in (await consumer.getmany(*pending, timeout_ms=200)).items():
                records.extend(r for r in items if r.offset < wanted[tp])
            pending = {tp: end for tp, end in pending.items() if await consumer.position(tp) < end}
        return records
    finally:
        await consumer.stop()


class Bus(NamedTuple):
    """A test's own topics (a fresh prefix) and a publisher on them; unpacks as ``settings, publisher``."""

    settings: KafkaSettings
    publisher: Publisher

    def topic(self, logical: str) -> str:
        return f"{self.settings.topic_prefix}{logical}"

    async def raw(self, logical: str) -> list[bytes]:
        """Exactly what is on the topic."""
        return [r.value for r in await read_all(self.settings.bootstrap_servers, self.topic(logical))]

    async def events(self, logical: str) -> list[Envelope[Any]]:
        return [parse_event(raw) for raw in await self.raw(logical)]


@asynccontextmanager
async def isolated(cfg: StackConfig, client_id: str = "test") -> AsyncIterator[Bus]:
    """Topics and consumer groups of this test alone, created before anyone consumes them."""
    settings = kafka_settings(cfg, prefix=f"{cfg.topic_prefix}{uuid.uuid4().hex[:6]}.")
    await ensure_topics(settings)
    publisher = Publisher(settings, client_id=client_id)
    await publisher.start()
    try:
        yield Bus(settings, publisher)
    finally:
        await publisher.stop()
