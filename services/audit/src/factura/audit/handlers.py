"""Audit handlers: every event topic → the event store, every DLQ topic → the dead-letter store; once."""

from __future__ import annotations

import json
from typing import Any

from factura.audit.store import AuditStore, DeadLetterStore
from factura.common.envelope import Envelope
from factura.common.kafka.consumer import Message
from factura.common.metrics import counter

RECORDED = counter("audit_events_total", "Events seen by audit.", ("type", "outcome"))
DEAD_LETTERS = counter("audit_dead_letters_total", "DLQ arrivals seen by audit.", ("topic", "reason", "outcome"))


class AuditHandlers:
    def __init__(self, store: AuditStore, dead_letters: DeadLetterStore) -> None:
        self._store = store
        self._dead_letters = dead_letters

    async def on_event(self, message: Message[Envelope[Any]]) -> None:
        stored = await self._store.append(message.value, message.source)
        RECORDED.labels(type=message.value.type, outcome="stored" if stored else "duplicate").inc()

    async def on_dead_letter(self, message: Message[bytes]) -> None:
        letter = dead_letter_record(message)
        stored = await self._dead_letters.append(letter)
        DEAD_LETTERS.labels(
            topic=letter["source_topic"], reason=letter["reason"], outcome="stored" if stored else "duplicate"
        ).inc()


def dead_letter_record(message: Message[bytes]) -> dict[str, Any]:
    """The DLQ headers plus whatever identifies the message (tenant, invoice) if its body says."""
    headers = {k: v.decode(errors="replace") for k, v in message.headers.items()}
    tenant, invoice = _identify(message.raw)
    try:
        body, encoding = message.raw.decode(), "utf-8"
    except UnicodeDecodeError:
        body, encoding = message.raw.hex(), "hex"
    source = headers.get("dlq.source", message.source)
    service = headers.get("dlq.service", "unknown")
    return {
        "_id": f"{service}:{source}",
        "dlq_topic": message.topic.name,
        "dlq_position": message.source,
        "source_topic": message.topic.dead_letters_of or message.topic.name,
        "source": source,
        "service": service,
        "reason": headers.get("dlq.reason", "unknown"),
        "error": headers.get("dlq.error", ""),
        "attempts": _count(headers.get("dlq.attempts")),
        "tenant_id": tenant or headers.get("tenant_id"),
        "invoice_id": invoice,
        "key": message.key.decode(errors="replace") if message.key else None,
        "body": body[:100_000],
        "body_encoding": encoding,
    }


def _count(value: str | None) -> int | None:
    """A header that should hold a count; None if it does not (audit records what it got, never fails)."""
    return int(value) if value is not None and value.isdigit() and len(value) < 10 else None


def _identify(raw: bytes) -> tuple[str | None, str | None]:
    """Tenant and invoice from an envelope or an ERP message, if the body is readable JSON."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(value, dict):
        return None, None
    tenant = value.get("tenant_id")
    invoice = value.get("invoice_id") or value.get("invoice_number")
    return (
        tenant if isinstance(tenant, str) and len(tenant) <= 200 else None,
        invoice if isinstance(invoice, str) and len(invoice) <= 200 else None,
    )
