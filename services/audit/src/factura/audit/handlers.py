"""Audit handler: every event topic → the store, once."""

from __future__ import annotations

from typing import Any

from factura.audit.store import AuditStore
from factura.common.envelope import Envelope
from factura.common.kafka.consumer import Message
from factura.common.metrics import counter

RECORDED = counter("audit_events_total", "Events seen by audit.", ("type", "outcome"))


class AuditHandlers:
    def __init__(self, store: AuditStore) -> None:
        self._store = store

    async def on_event(self, message: Message[Envelope[Any]]) -> None:
        stored = await self._store.append(message.value, message.source)
        RECORDED.labels(type=message.value.type, outcome="stored" if stored else "duplicate").inc()
