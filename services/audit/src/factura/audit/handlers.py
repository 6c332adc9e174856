"""Audit handlers: batches of events and of DLQ arrivals become chained records, each stored once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from factura.audit.chain import ChainWriter
from factura.audit.records import from_dead_letter, from_event
from factura.common.envelope import Envelope
from factura.common.kafka.consumer import Message
from factura.common.metrics import counter

RECORDED = counter("audit_records_total", "Records seen by audit, by kind and outcome.", ("kind", "outcome"))


class AuditHandlers:
    def __init__(self, writer: ChainWriter) -> None:
        self._writer = writer

    async def on_events(self, messages: Sequence[Message[Envelope[Any]]]) -> None:
        result = await self._writer.append([from_event(m) for m in messages])
        RECORDED.labels(kind="event", outcome="stored").inc(result.stored)
        RECORDED.labels(kind="event", outcome="duplicate").inc(result.duplicates)

    async def on_dead_letters(self, messages: Sequence[Message[bytes]]) -> None:
        result = await self._writer.append([from_dead_letter(m) for m in messages])
        RECORDED.labels(kind="dead_letter", outcome="stored").inc(result.stored)
        RECORDED.labels(kind="dead_letter", outcome="duplicate").inc(result.duplicates)
