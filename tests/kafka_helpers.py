"""Kafka in tests: topics of a test's own, and reading them back straight from the broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from factura.common.envelope import Envelope
from factura.common.events import parse_event
from factura.common.kafka.admin import ensure_topics
from factura.common.kafka.connection import client_kwargs
from factura.common.kafka.producer import Publisher
from factura.common.settings import KafkaSettings
from factura.devstack.config import FETCH_MAX_WAIT_MS, StackConfig
from tests.conftest import kafka_settings


async def read_topic(
    bootstrap: str, topic: str, *, expect: int, timeout_s: float = 20.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record on ``topic`` (no group, from the start) once at least ``expect`` arrived."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )
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
    """Everything on ``topic`` now: read up to the end offsets taken first, then until a fetch
    comes back empty, because the local broker (Tansu) reports too low an end offset when one
    produce request carried several records for a partition (they are fetched all the same)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=FETCH_MAX_WAIT_MS
    )
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return []
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + timeout_s
        pending = {tp: end for tp, end in ends.items() if end > 0}
        while pending:
            assert time.monotonic() < deadline, f"{topic}: could not read up to the end offsets {ends}"
            for items in (await consumer.getmany(*pending, timeout_ms=200)).values():
                records.extend(items)
            pending = {tp: end for tp, end in pending.items() if await consumer.position(tp) < end}
        while batch := await consumer.getmany(*partitions, timeout_ms=100):
            for items in batch.values():
                records.extend(items)
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
    """Topics and consumer groups of this test alone, created before anyone consumes them, and
    deleted after: every client reads the metadata of every topic on the broker, so topics left
    behind by earlier tests (42 per test) made each client start slower as the suite went on
    (0.4 s at 4 000 topics, 1.2-1.8 s at 8 000)."""
    settings = kafka_settings(cfg, prefix=f"{cfg.topic_prefix}{uuid.uuid4().hex[:6]}.")
    created = await ensure_topics(settings)
    publisher = Publisher(settings, client_id=client_id)
    await publisher.start()
    try:
        yield Bus(settings, publisher)
    finally:
        await publisher.stop()
        await _delete_topics(settings, created)


async def _delete_topics(settings: KafkaSettings, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(**client_kwargs(settings), client_id="test-cleanup")
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()
