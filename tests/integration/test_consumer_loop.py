"""The one consumer loop against the real broker: DLQ, retries, order, commits, draining."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest

from factura.common.envelope import Envelope
from factura.common.errors import DependencyDown
from factura.common.kafka.consumer import ConsumerLoop, Message
from factura.common.kafka.producer import Publisher
from factura.common.schemas import EXAMPLES_DIR
from factura.common.settings import KafkaSettings
from factura.devstack.config import StackConfig
from tests.kafka_helpers import isolated, read_topic
from tests.waiting import until

pytestmark = pytest.mark.integration
EXAMPLE = json.loads((EXAMPLES_DIR / "invoice.created.v1.json").read_text(encoding="utf-8"))


def event_bytes(invoice_id: str) -> bytes:
    """A valid invoice.created with its own ids (same key, so one partition, in order)."""
    payload = EXAMPLE | {"event_id": str(uuid.uuid4()), "invoice_id": "same-key"}
    payload["data"] = EXAMPLE["data"] | {"invoice_number": invoice_id}
    return json.dumps(payload).encode()


@asynccontextmanager
async def running(
    settings: KafkaSettings, publisher: Publisher, handler: Callable[[Message[Any]], Awaitable[None]]
) -> AsyncIterator[ConsumerLoop]:
    loop = ConsumerLoop(
        settings=settings, group_id="test", routes={"invoice.created": handler}, publisher=publisher, service="test"
    )
    task = asyncio.create_task(loop.run())
    try:
        yield loop
    finally:
        loop.stop()
        await asyncio.wait_for(task, 30)


def short_session(settings: KafkaSettings) -> KafkaSettings:
    """For a test that restarts a member of one group: a 2 s session, heartbeats every 0.5 s.

    A stopped member does not leave the group here (``leave_group_on_stop`` is off for the local
    broker, Tansu: see ``_stay_in_group`` in the consumer loop), so the restarted one waits until
    the old session expires (6 s with the tests' usual session). Tansu also holds each join for
    half the session.
    """
    return settings.model_copy(update={"session_timeout_ms": 2000, "heartbeat_interval_ms": 500})


async def send(publisher: Publisher, settings: KafkaSettings, value: bytes) -> None:
    await publisher.send(f"{settings.topic_prefix}invoice.created", value, key=b"same-key", headers=[])


async def test_poison_goes_to_dlq_and_the_loop_goes_on(cfg: StackConfig) -> None:
    seen: list[str] = []

    async def handler(message: Message[Envelope[Any]]) -> None:
        seen.append(message.value.data.invoice_number)

    async with isolated(cfg) as (settings, publisher), running(settings, publisher, handler):
        await send(publisher, settings, event_bytes("before"))
        await send(publisher, settings, b"{definitely not json")
        await send(publisher, settings, json.dumps(EXAMPLE | {"tenant_id": "NOT VALID"}).encode())
        await send(publisher, settings, event_bytes("after"))
        await until(lambda: len(seen) == 2)
        dlq = await read_topic(cfg.kafka_bootstrap, f"{settings.topic_prefix}invoice.created.dlq", expect=2)
    assert seen == ["before", "after"]
    assert dlq[0].value == b"{definitely not json"
    headers = [dict(r.headers) for r in dlq]
    assert all(h["dlq.reason"] == b"invalid" for h in headers)
    assert headers[0]["dlq.error"].startswith(b"$: Invalid JSON")
    assert b"tenant_id" in headers[1]["dlq.error"]
    assert headers[1]["dlq.source"].startswith(f"{settings.topic_prefix}invoice.created/".encode())


async def test_outage_pauses_and_resumes_without_dead_lettering(cfg: StackConfig) -> None:
    """A dependency down for many times the retry budget: the record waits in place, order kept."""
    attempts: dict[str, int] = {}
    handled: list[str] = []
    down = True

    async def handler(message: Message[Envelope[Any]]) -> None:
        number = message.value.data.invoice_number
        attempts[number] = attempts.get(number, 0) + 1
        if number == "first" and down:
            raise DependencyDown("smtp", "connection refused")
        handled.append(number)

    async with isolated(cfg) as (settings, publisher), running(settings, publisher, handler) as loop:
        for number in ("first", "second"):
            await send(publisher, settings, event_bytes(number))
        await until(lambda: attempts.get("first", 0) > 3 * settings.retry_max_attempts)
        assert handled == [] and loop.outages.current().keys() == {"smtp"}
        down = False
        await until(lambda: handled == ["first", "second"])
        assert loop.outages.current() == {}
        dlq = await read_topic(
            cfg.kafka_bootstrap, f"{settings.topic_prefix}invoice.created.dlq", expect=1, timeout_s=1
        )
    assert dlq == []


async def test_a_bug_is_retried_then_dead_lettered_with_its_traceback(cfg: StackConfig) -> None:
    attempts: dict[str, int] = {}
    handled: list[str] = []

    async def handler(message: Message[Envelope[Any]]) -> None:
        number = message.value.data.invoice_number
        attempts[number] = attempts.get(number, 0) + 1
        if number == "racy" and attempts[number] < 2:
            raise KeyError("a race that goes away")
        if number == "broken":
            raise ZeroDivisionError("a real bug")
        handled.append(number)

    async with isolated(cfg) as (settings, publisher), running(settings, publisher, handler):
        for number in ("racy", "broken", "last"):
            await send(publisher, settings, event_bytes(number))
        await until(lambda: handled == ["racy", "last"])
        dlq = await read_topic(cfg.kafka_bootstrap, f"{settings.topic_prefix}invoice.created.dlq", expect=1)
    assert attempts == {"racy": 2, "broken": settings.retry_max_attempts, "last": 1}
    headers = dict(dlq[0].headers)
    assert headers["dlq.reason"] == b"bug"
    assert headers["dlq.attempts"] == str(settings.retry_max_attempts).encode()
    assert b"ZeroDivisionError: a real bug" in headers["dlq.error"] and b"Traceback" in headers["dlq.error"]


async def test_commits_survive_a_restart_of_the_consumer(cfg: StackConfig) -> None:
    seen: list[str] = []

    async def handler(message: Message[Envelope[Any]]) -> None:
        seen.append(message.value.data.invoice_number)

    async with isolated(cfg) as (bus_settings, publisher):
        settings = short_session(bus_settings)
        async with running(settings, publisher, handler):
            await send(publisher, settings, event_bytes("one"))
            await send(publisher, settings, event_bytes("two"))
            await until(lambda: len(seen) == 2)
        await send(publisher, settings, event_bytes("three"))  # while nobody consumes
        async with running(settings, publisher, handler):
            await until(lambda: len(seen) >= 3)
            await asyncio.sleep(0.5)  # a redelivery of one/two would show up here
    assert seen == ["one", "two", "three"]


async def test_stop_during_backoff_leaves_the_message_uncommitted(cfg: StackConfig) -> None:
    calls: list[str] = []
    healthy = False

    async def handler(message: Message[Envelope[Any]]) -> None:
        calls.append(message.value.data.invoice_number)
        if not healthy:
            raise DependencyDown("mongo", "down")

    async with isolated(cfg) as (bus_settings, publisher):
        settings = short_session(bus_settings)
        slow = settings.model_copy(update={"retry_initial_s": 30.0, "retry_max_s": 30.0})
        async with running(slow, publisher, handler):
            await send(publisher, settings, event_bytes("pending"))
            await until(lambda: len(calls) == 1)
        healthy = True  # SIGTERM-style stop returned promptly despite the 30 s backoff
        async with running(settings, publisher, handler):
            await until(lambda: len(calls) == 2)
    assert calls == ["pending", "pending"]


async def test_a_member_stopping_while_another_joins_leaves_the_group_working(cfg: StackConfig) -> None:
    """A rolling restart's pattern: the new member joins, the old one stops gracefully at once.

    On Tansu 0.6, a LeaveGroup sent while the other member's join is pending wedges the group for
    good (the departed member stays its leader), so the joiner never gets a partition. With
    ``leave_group_on_stop`` off (devstack and tests) the old member expires like a crashed one and
    the joiner takes over. The old member heartbeats only every 3 s, so its stop lands before it
    hears of the join (a heartbeat in between would let it rejoin, and hide the case)."""
    seen: list[str] = []

    async def handler(message: Message[Envelope[Any]]) -> None:
        seen.append(message.value.data.invoice_number)

    async with isolated(cfg) as (bus_settings, publisher):
        slow_beat = bus_settings.model_copy(update={"session_timeout_ms": 6000, "heartbeat_interval_ms": 3000})
        async with AsyncExitStack() as old_member:
            old = await old_member.enter_async_context(running(slow_beat, publisher, handler))
            # Another member comes and goes (a LeaveGroup in a stable group is safe), so the old one is
            # past generation 0: aiokafka sends no LeaveGroup before that.
            leaving = bus_settings.model_copy(update={"leave_group_on_stop": True})
            async with running(leaving, publisher, handler) as passing:
                await until(lambda: bool(passing.partitions))
            await until(lambda: len(old.partitions) == 12)
            async with running(bus_settings, publisher, handler):
                await asyncio.sleep(0.3)  # the new member's JoinGroup is out and held by the broker
                await old_member.aclose()
                await send(publisher, bus_settings, event_bytes("after"))
                await until(lambda: seen == ["after"], timeout_s=30)
