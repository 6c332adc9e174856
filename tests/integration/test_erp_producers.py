"""The producer examples of ``docs/integration.md``, run against the real local broker.

An ERP team copies those snippets, so the test takes the producer settings from the page itself
(the ``config`` dict of each Python example) and changes only what the local stack needs: the
bootstrap address and idempotence off (Tansu cannot answer InitProducerId). kcat is not tested:
Debian's kcat cannot talk to Tansu at all.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import KafkaError, Message, Producer

from factura.common.events import parse_event
from factura.devstack.config import StackConfig
from tests.integration.test_ingest import EXAMPLE, ingest_running
from tests.kafka_helpers import isolated, read_topic

pytestmark = pytest.mark.integration
DOC = Path(__file__).resolve().parents[2] / "docs" / "integration.md"


def documented_config(library: str) -> dict[str, Any]:
    """The ``config = {...}`` of the page's Python example that imports ``library``."""
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL):
        if f"from {library} import" not in block:
            continue
        for node in ast.parse(block).body:
            if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["config"]:
                config: dict[str, Any] = ast.literal_eval(node.value)
                return config
    raise AssertionError(f"docs/integration.md has no {library} example with a config dict")


def confluent_producer(cfg: StackConfig, **overrides: Any) -> Producer:
    config = documented_config("confluent_kafka") | {"bootstrap.servers": cfg.kafka_bootstrap}
    return Producer(config | {"enable.idempotence": False} | overrides)


def aiokafka_producer(cfg: StackConfig) -> AIOKafkaProducer:
    config = documented_config("aiokafka") | {"bootstrap_servers": cfg.kafka_bootstrap}
    return AIOKafkaProducer(**(config | {"enable_idempotence": False}))


async def produce_with_confluent(
    producer: Producer,
    topic: str,
    messages: list[tuple[bytes, bytes]],
    headers: list[tuple[str, str | bytes | None]],
) -> list[int]:
    """Send ``(key, value)`` pairs; the partition of each from its delivery report, in order."""
    partitions: dict[bytes, int] = {}
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            errors.append(error)
        else:
            partitions[message.key() or b""] = message.partition() or 0

    for key, value in messages:
        producer.produce(topic, value, key=key, headers=headers, on_delivery=delivered)
    remaining = await asyncio.to_thread(producer.flush, 30)
    assert (remaining, errors) == (0, [])
    return [partitions[key] for key, _ in messages]


async def produce_with_aiokafka(
    producer: AIOKafkaProducer, topic: str, messages: list[tuple[bytes, bytes]], headers: list[tuple[str, bytes]]
) -> list[int]:
    await producer.start()
    try:
        return [
            (await producer.send_and_wait(topic, value, key=key, headers=headers)).partition for key, value in messages
        ]
    finally:
        await producer.stop()


def erp_invoice(number: str) -> tuple[bytes, bytes]:
    """``(key, value)`` of the contract's example invoice under another number, keyed as documented."""
    invoice = EXAMPLE | {"invoice_number": number}
    return f"{invoice['tenant_id']}/{number}".encode(), json.dumps(invoice).encode()


async def test_invoices_from_confluent_kafka_and_aiokafka_become_invoice_created(cfg: StackConfig) -> None:
    async with ingest_running(cfg) as (settings, _):
        topic = f"{settings.topic_prefix}erp.invoices"
        await produce_with_confluent(
            confluent_producer(cfg), topic, [erp_invoice("F-2026-LIBRDKAFKA")], [("correlation_id", b"sap-RV-1")]
        )
        await produce_with_aiokafka(
            aiokafka_producer(cfg), topic, [erp_invoice("F-2026-AIOKAFKA")], [("correlation_id", b"sap-RV-2")]
        )
        created = await read_topic(cfg.kafka_bootstrap, f"{settings.topic_prefix}invoice.created", expect=2)

    events = sorted((parse_event(r.value or b"") for r in created), key=lambda e: e.invoice_id or "")
    assert [(e.invoice_id, e.correlation_id) for e in events] == [
        ("F-2026-AIOKAFKA", "sap-RV-2"),
        ("F-2026-LIBRDKAFKA", "sap-RV-1"),
    ]
    assert {r.key for r in created} == {b"harinas-sur/F-2026-AIOKAFKA", b"harinas-sur/F-2026-LIBRDKAFKA"}


async def test_murmur2_random_puts_each_key_on_the_partition_aiokafka_chooses(cfg: StackConfig) -> None:
    messages = [erp_invoice(f"F-2026-{n:06d}") for n in range(16)]
    async with isolated(cfg) as bus:
        topic = bus.topic("erp.invoices")  # nobody consumes it here
        documented = await produce_with_confluent(confluent_producer(cfg), topic, messages, [])
        librdkafka_default = await produce_with_confluent(
            confluent_producer(cfg, partitioner="consistent_random"), topic, messages, []
        )
        aiokafka = await produce_with_aiokafka(aiokafka_producer(cfg), topic, messages, [])

    assert len(set(aiokafka)) > 1  # the keys spread over the topic's partitions
    assert documented == aiokafka
    assert librdkafka_default != aiokafka  # why the page asks for murmur2_random
