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
