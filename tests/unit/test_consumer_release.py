"""Consumer-loop edge cases that need precise timing, with a fake in place of the broker client:
a revoked partition takes its outage with it, a handler that cancels its own worker is not a
silent stall, and dead-lettering cannot loop on a message the broker will never take."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError

from factura.common.errors import DependencyDown, ErrorKind
from factura.common.kafka.consumer import ConsumerLoop, Message
from factura.common.kafka.deadletter import DeadLetters, DlqLimit
from factura.common.kafka.producer import Headers, Publisher
from factura.common.settings import KafkaSettings
from factura.common.topics import ERP_INVOICES
from tests.waiting import until

TP = TopicPartition("erp.invoices", 0)


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)

    def pause(self, *_: TopicPartition) -> None: ...

    def resume(self, *_: TopicPartition) -> None: ...


def record(offset: int, value: bytes = b"{}") -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("erp.invoices", 0, offset, 0, 0, None, value, None, len(value), 0, [])


def loop_with(handler: Any, fake: FakeConsumer) -> ConsumerLoop:
    settings = KafkaSettings(retry_initial_s=0.01, retry_max_s=0.02, drain_timeout_s=1.0)
    loop = ConsumerLoop(
        settings=settings,
        group_id="t",
        routes={"erp.invoices": handler},
        publisher=cast(Publisher, None),
        service="t",
    )
    loop._consumer = fake
    return loop


async def test_a_revoked_partition_takes_its_outage_with_it() -> None:
    done: list[int] = []

    async def handler(message: Message[bytes]) -> None:
        if message.offset == 1:
            raise DependencyDown("smtp", "down")
        done.append(message.offset)

    fake = FakeConsumer()
    loop = loop_with(handler, fake)
    loop._start_worker(TP).feed([record(0), record(1)])
    await until(lambda: "smtp" in loop.outages.current())
    await loop._release([TP])
    assert loop.outages.current() == {}  # readiness is no longer held down by a partition we gave up
    assert done == [0] and fake.commits == [{TP: 1}]  # offset 1 is left for the next owner


async def test_a_worker_cancelled_by_its_handler_stops_the_consumer_instead_of_stalling() -> None:
    async def handler(message: Message[bytes]) -> None:
        raise asyncio.CancelledError  # e.g. a library that cancels the current task

    loop = loop_with(handler, FakeConsumer())
    worker = loop._start_worker(TP)
    worker.feed([record(0)])
    await until(worker.task.done)
    with pytest.raises(RuntimeError, match="ended unexpectedly"):
        loop._check_workers()


class TooLargeOnce:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Headers]] = []

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Headers) -> None:
        if len(value) > 512 * 1024:
            raise MessageSizeTooLargeError()
        self.sent.append((value, headers))


async def never(_: int) -> bool:
    raise AssertionError("a message too large must not be retried as is")


async def test_a_message_too_large_for_the_dlq_is_truncated_not_retried_for_ever() -> None:
    publisher = TooLargeOnce()
    letters = DeadLetters(cast(Publisher, publisher), prefix="", service="t", limit=DlqLimit(None))
    big = record(5, b"[" * 2_000_000)
    assert await letters.send(ERP_INVOICES, big, ErrorKind.INVALID, "$: too deep", attempts=1, sleep=never)
    [(value, headers)] = publisher.sent
    assert len(value) == 512 * 1024 and dict(headers)["dlq.truncated_from_bytes"] == b"2000000"


async def test_a_dead_letter_that_cannot_be_handled_stays_on_its_dlq_topic() -> None:
    publisher = TooLargeOnce()
    letters = DeadLetters(cast(Publisher, publisher), prefix="", service="audit", limit=DlqLimit(None))
    dlq_topic = ERP_INVOICES.dead_letter_topic()
    assert await letters.send(dlq_topic, record(1), ErrorKind.BUG, "boom", attempts=4, sleep=never)
    assert publisher.sent == []  # nothing written to erp.invoices.dlq.dlq
