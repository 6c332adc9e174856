"""Audit handlers: batches of events and of DLQ arrivals become chained records, each stored once,
their customers' contact data encrypted before chaining (:func:`~factura.audit.records.protect`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from factura.audit.chain import ChainWriter
from factura.audit.records import NewRecord, from_dead_letter, from_event, protect
from factura.common.envelope import Envelope
from factura.common.kafka.consumer import Message
from factura.common.metrics import counter
from factura.common.pii import FieldCipher

RECORDED = counter("audit_records_total", "Records seen by audit, by kind and outcome.", ("kind", "outcome"))


class AuditHandlers:
    def __init__(self, writer: ChainWriter, cipher: FieldCipher | None = None) -> None:
        """``cipher``: None only in tests that record no personal data (the service always has one)."""
        self._writer = writer
        self._cipher = cipher

    async def _protected(self, records: list[NewRecord]) -> list[NewRecord]:
        cipher = self._cipher
        if cipher is None:
            return records
        return list(await asyncio.gather(*(protect(r, cipher) for r in records)))

    async def on_events(self, messages: Sequence[Message[Envelope[Any]]]) -> None:
        result = await self._writer.append(await self._protected([from_event(m) for m in messages]))
        RECORDED.labels(kind="event", outcome="stored").inc(result.stored)
        RECORDED.labels(kind="event", outcome="duplicate").inc(result.duplicates)

    async def on_dead_letters(self, messages: Sequence[Message[bytes]]) -> None:
        result = await self._writer.append(await self._protected([from_dead_letter(m) for m in messages]))
        RECORDED.labels(kind="dead_letter", outcome="stored").inc(result.stored)
        RECORDED.labels(kind="dead_letter", outcome="duplicate").inc(result.duplicates)
