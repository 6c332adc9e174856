"""The audit collections and their indexes; nothing here updates or deletes a record.

``audit_records`` is written only by :class:`~factura.audit.chain.ChainWriter` (insert),
``audit_checkpoints`` and ``audit_tombstones`` only by insert, and the retention job is the one
code path that deletes records (after signing what it removes), and besides records it only
ever removes its own unsigned tombstones. In production the service's MongoDB role grants
``insert`` and ``find`` only, plus ``remove`` for the retention job's own user (docs/audit.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from factura.common.mongo import Document


@dataclass(frozen=True)
class AuditDb:
    records: AsyncCollection[Document]
    checkpoints: AsyncCollection[Document]
    tombstones: AsyncCollection[Document]

    @classmethod
    def of(cls, db: AsyncDatabase[Document], prefix: str = "audit_") -> AuditDb:
        return cls(db[f"{prefix}records"], db[f"{prefix}checkpoints"], db[f"{prefix}tombstones"])

    async def ensure_indexes(self) -> None:
        records = self.records
        await records.create_index([("tenant_id", ASCENDING), ("seq", ASCENDING)], unique=True)
        for field in ("invoice_id", "customer_id", "type", "outcome"):
            await records.create_index([("tenant_id", ASCENDING), (field, ASCENDING), ("seq", DESCENDING)])
        await records.create_index([("tenant_id", ASCENDING), ("day", ASCENDING)])
        await records.create_index([("tenant_id", ASCENDING), ("occurred_at", ASCENDING)])
        await records.create_index([("tenant_id", ASCENDING), ("class", ASCENDING), ("occurred_at", ASCENDING)])
        await self.checkpoints.create_index([("tenant_id", ASCENDING), ("seq", ASCENDING)])
        await self.tombstones.create_index([("tenant_id", ASCENDING), ("seq", ASCENDING)], unique=True)
        await self.tombstones.create_index([("tenant_id", ASCENDING), ("record_id", ASCENDING)])
