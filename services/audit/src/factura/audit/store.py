"""The audit store: insert-only, one document per event_id.

``_id`` is the event id, so a redelivered event hits the unique index and is counted as a
duplicate instead of stored twice. Each record keeps the event exactly as received (canonical
JSON) and its sha256, so an altered record can be detected by re-hashing.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from factura.common.envelope import Envelope, utcnow
from factura.common.mongo import Document


class AuditStore:
    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self._events = collection

    async def ensure_indexes(self) -> None:
        await self._events.create_index("event_id", unique=True)
        await self._events.create_index(
            [("tenant_id", ASCENDING), ("invoice_id", ASCENDING), ("occurred_at", ASCENDING)]
        )

    async def append(self, event: Envelope[Any], source: str) -> bool:
        """Store ``event``; False if it was already stored (a redelivery)."""
        canonical = event.model_dump_json()
        try:
            await self._events.insert_one(
                {
                    "_id": str(event.event_id),
                    "event_id": str(event.event_id),
                    "type": event.type,
                    "schema_version": event.schema_version,
                    "tenant_id": event.tenant_id,
                    "invoice_id": event.invoice_id,
                    "occurred_at": event.occurred_at,
                    "recorded_at": utcnow(),
                    "source": source,
                    "event": canonical,
                    "sha256": hashlib.sha256(canonical.encode()).hexdigest(),
                }
            )
        except DuplicateKeyError:
            return False
        return True

    async def timeline(self, tenant_id: str, invoice_id: str) -> list[Document]:
        cursor = self._events.find({"tenant_id": tenant_id, "invoice_id": invoice_id}).sort(
            [("occurred_at", ASCENDING), ("recorded_at", ASCENDING)]
        )
        return [doc async for doc in cursor]


class DeadLetterStore:
    """Every DLQ arrival, once: what operators and compliance see of messages that were not handled.

    ``_id`` is the dead-lettering service plus the source position, so a redelivered DLQ record is a
    duplicate, while two services refusing the same message are two records. The message is kept
    as received (text if it is UTF-8, else hex) beside the fields it could be identified by.
    """

    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self._letters = collection

    async def ensure_indexes(self) -> None:
        await self._letters.create_index([("tenant_id", ASCENDING), ("invoice_id", ASCENDING)])
        await self._letters.create_index([("dlq_topic", ASCENDING), ("recorded_at", ASCENDING)])

    async def append(self, letter: Document) -> bool:
        try:
            await self._letters.insert_one({**letter, "recorded_at": utcnow()})
        except DuplicateKeyError:
            return False
        return True

    async def find(self, tenant_id: str, invoice_id: str | None = None, limit: int = 100) -> list[Document]:
        query: Document = {"tenant_id": tenant_id}
        if invoice_id is not None:
            query["invoice_id"] = invoice_id
        cursor = self._letters.find(query).sort([("recorded_at", ASCENDING)]).limit(limit)
        return [doc async for doc in cursor]
