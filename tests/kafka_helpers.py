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


async def read_all(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Exactly what is on ``topic`` now: counted by offsets first, so no read waits for a timeout."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
    finally:
        await consumer.stop()
    count = sum(ends[tp] - starts[tp] for tp in partitions)
    if count == 0:
        return []
    records = await read_topic(bootstrap, topic, expect=count)
    assert len(records) == count
    return records


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
