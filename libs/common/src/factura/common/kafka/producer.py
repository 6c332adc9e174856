"""The one producer wrapper.

acks=all always; idempotence is a setting (on for real Kafka, off for Tansu, which cannot
answer InitProducerId). Events are keyed by tenant/invoice so one invoice's events stay ordered.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer

from factura.common.envelope import Envelope
from factura.common.kafka.connection import client_kwargs
from factura.common.metrics import EVENTS_PUBLISHED
from factura.common.settings import KafkaSettings
from factura.common.topics import topic_for_event

Headers = list[tuple[str, bytes]]


class Publisher:
    def __init__(self, settings: KafkaSettings, client_id: str) -> None:
        self._settings = settings
        self._producer = AIOKafkaProducer(
            **client_kwargs(settings),
            client_id=client_id,
            acks="all",
            enable_idempotence=settings.idempotence,
            linger_ms=settings.linger_ms,
            compression_type="gzip",
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    def topic_name(self, logical: str) -> str:
        return f"{self._settings.topic_prefix}{logical}"

    async def publish(self, event: Envelope[Any]) -> None:
        """Publish and wait for the broker's ack: callers commit their input only after this."""
        topic = topic_for_event(event.type).physical(self._settings.topic_prefix)
        headers: Headers = [
            ("event_type", event.type.encode()),
            ("schema_version", str(event.schema_version).encode()),
            ("tenant_id", event.tenant_id.encode()),
            ("correlation_id", event.correlation_id.encode()),
        ]
        await self.send(topic, event.model_dump_json().encode(), key=event.partition_key, headers=headers)

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Headers) -> None:
        await self._producer.send_and_wait(topic, value, key=key, headers=headers)
        EVENTS_PUBLISHED.labels(topic=topic).inc()
