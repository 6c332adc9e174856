"""Batched routes of the one consumer loop, on the real broker: handlers get consecutive messages
at once; an outage retries the batch; a poison message is isolated and dead-lettered alone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from factura.common.envelope import Envelope
from factura.common.errors import DependencyDown, InvalidMessage
from factura.common.events import FieldError
from factura.common.kafka.consumer import Batched, ConsumerLoop, Message, Refused
from factura.devstack.config import StackConfig
from tests.integration.test_consumer_loop import event_bytes, send
from tests.kafka_helpers import isolated, read_topic
from tests.waiting import until

pytestmark = pytest.mark.integration


async def test_batches_in_order_outage_retried_and_only_the_poison_dead_lettered(cfg: StackConfig) -> None:
    calls: list[list[str]] = []
    handled: list[str] = []
    down = {"left": 2}

    async def handler(messages: Sequence[Message[Envelope[Any]]]) -> None:
        numbers = [m.value.data.invoice_number for m in messages]
        calls.append(numbers)
        if down["left"] > 0 and "n0" in numbers:
            down["left"] -= 1
            raise DependencyDown("mongo", "down for a moment")
        if "poison" in numbers:
            raise ValueError("this one is wrong")  # a bug: retried, then split to find the culprit
        handled.extend(numbers)

    async with isolated(cfg) as (settings, publisher):
        names = ["n0", "n1", "poison", "n3", "n4"]
        for name in names:
            await send(publisher, settings, event_bytes(name))
        await send(publisher, settings, b"not json")  # invalid: dead-lettered before any call
        loop = ConsumerLoop(
            settings=settings.model_copy(update={"max_poll_records": 50}),
            group_id="test",
            routes={"invoice.created": Batched(handler, max_records=50)},
            publisher=publisher,
            service="test",
        )
        task = asyncio.create_task(loop.run())
        try:
            await until(lambda: handled[-2:] == ["n3", "n4"], timeout_s=30)
            dlq = await read_topic(cfg.kafka_bootstrap, f"{settings.topic_prefix}invoice.created.dlq", expect=2)
        finally:
            loop.stop()
            await asyncio.wait_for(task, 30)
    assert handled == ["n0", "n1", "n3", "n4"]  # once each, in order, poison left out
    assert any(len(call) > 1 for call in calls), calls  # they did arrive as batches
    assert sorted(r.value for r in dlq) == sorted([b"not json", event_bytes_number(dlq, "poison")])
    reasons = sorted(dict(r.headers)["dlq.reason"] for r in dlq)
    assert reasons == [b"bug", b"invalid"]


def event_bytes_number(dlq: list[Any], number: str) -> bytes:
    """The dead-lettered poison event as published (its ids are random, so find it by number)."""
    found: bytes = next(r.value for r in dlq if f'"invoice_number": "{number}"'.encode() in r.value)
    return found


async def test_messages_a_batch_handler_refuses_are_dead_lettered_and_the_rest_handled_once(cfg: StackConfig) -> None:
    """A handler that judges each message (ingest) returns the ones it refused: only those reach the
    DLQ, as invalid, and the good ones of the same batch are not handed over again."""
    seen: list[str] = []

    async def handler(messages: Sequence[Message[Envelope[Any]]]) -> Refused:
        refused = []
        for m in messages:
            number = m.value.data.invoice_number
            seen.append(number)
            if number.startswith("bad"):
                refused.append((m, InvalidMessage([FieldError(field="invoice_number", message="bad on purpose")])))
        return refused

    async with isolated(cfg) as (settings, publisher):
        names = ["g0", "bad1", "g2", "bad3", "g4"]
        for name in names:
            await send(publisher, settings, event_bytes(name))
        loop = ConsumerLoop(
            settings=settings.model_copy(update={"max_poll_records": 50}),
            group_id="test",
            routes={"invoice.created": Batched(handler, max_records=50)},
            publisher=publisher,
            service="test",
        )
        task = asyncio.create_task(loop.run())
        try:
            dlq = await read_topic(cfg.kafka_bootstrap, f"{settings.topic_prefix}invoice.created.dlq", expect=2)
            await until(lambda: seen.count("g4") >= 1, timeout_s=30)
        finally:
            loop.stop()
            await asyncio.wait_for(task, 30)
    assert sorted(seen) == sorted(names)  # each handed over once: no split, no retry of the good ones
    assert sorted(event_number(r.value) for r in dlq) == ["bad1", "bad3"]
    assert {dict(r.headers)["dlq.reason"] for r in dlq} == {b"invalid"}
    assert all(b"bad on purpose" in dict(r.headers)["dlq.error"] for r in dlq)


def event_number(raw: bytes) -> str:
    number: str = json.loads(raw)["data"]["invoice_number"]
    return number
