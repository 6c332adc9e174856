"""What ingest keeps in MongoDB for its doors: accepted invoice versions and idempotent HTTP answers.

``ingest_invoices``: one document per accepted invoice version, ``_id = tenant/number/digest``
(the digest of the normalised content), inserted once and never updated; a second insert of the
same version fails on the ``_id``, which is how a duplicate is known across restarts and across
doors. ``GET /v1/invoices/{id}/status`` reads them by the ``(tenant_id, invoice_number)`` index.

``ingest_idempotency``: one document per ``tenant/Idempotency-Key`` with the digest of the request
body and the first answer (status and body), valid for ``ttl_s`` (24 h). A TTL index deletes old
ones where the server expires documents; reads filter on age as well, so an expired answer is never
replayed where it does not (nx-27017 accepts the index; whether it expires is not relied on).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from factura.common.envelope import utcnow
from factura.common.mongo import Document, exact

INVOICES = "ingest_invoices"
IDEMPOTENCY = "ingest_idempotency"
IDEMPOTENCY_TTL_S = 24 * 3600


@dataclass(frozen=True)
class Version:
    event_id: uuid.UUID
    digest: str
    accepted_at: datetime
    source: str


class InvoiceVersions:
    def __init__(self, collection: AsyncCollection[Document], *, now: Callable[[], datetime] = utcnow) -> None:
        self._docs = collection
        self._now = now

    @classmethod
    def of(cls, db: AsyncDatabase[Document]) -> InvoiceVersions:
        return cls(db[INVOICES])

    async def ensure_indexes(self) -> None:
        await self._docs.create_index([("tenant_id", 1), ("invoice_number", 1)])

    async def record(self, tenant_id: str, invoice_number: str, digest: str, event_id: uuid.UUID, source: str) -> bool:
        doc = {
            "_id": f"{tenant_id}/{invoice_number}/{digest}",
            "tenant_id": tenant_id,
            "invoice_number": invoice_number,
            "digest": digest,
            "event_id": str(event_id),
            "accepted_at": self._now(),
            "source": source,
        }
        try:
            await self._docs.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    async def of_invoice(self, tenant_id: str, invoice_number: str) -> list[Version]:
        """Every accepted version, first accepted first."""
        query = exact({"tenant_id": tenant_id, "invoice_number": invoice_number})
        cursor = self._docs.find(query).sort([("accepted_at", 1), ("_id", 1)]).limit(1000)
        return [
            Version(uuid.UUID(d["event_id"]), d["digest"], d["accepted_at"], d.get("source", "")) async for d in cursor
        ]


@dataclass(frozen=True)
class Answer:
    """A stored first answer to an idempotent request."""

    body_digest: str
    status: int
    body: str


class IdempotencyStore:
    def __init__(
        self,
        collection: AsyncCollection[Document],
        *,
        ttl_s: int = IDEMPOTENCY_TTL_S,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._docs = collection
        self._ttl = timedelta(seconds=ttl_s)
        self._now = now

    @classmethod
    def of(cls, db: AsyncDatabase[Document]) -> IdempotencyStore:
        return cls(db[IDEMPOTENCY])

    async def ensure_indexes(self) -> None:
        await self._docs.create_index("created_at", expireAfterSeconds=int(self._ttl.total_seconds()))

    async def find(self, tenant_id: str, key: str) -> Answer | None:
        """The answer stored for ``key`` within the last ``ttl_s``, if any."""
        query = {"_id": {"$eq": f"{tenant_id}/{key}"}, "created_at": {"$gt": self._now() - self._ttl}}
        doc = await self._docs.find_one(query)
        return None if doc is None else Answer(doc["body_digest"], int(doc["status"]), doc["body"])

    async def save(self, tenant_id: str, key: str, answer: Answer) -> None:
        """Keep ``answer`` (replacing an expired one of the same key; a concurrent first request with
        the same key and body produced the same answer, so last writer wins)."""
        key_id = f"{tenant_id}/{key}"
        doc = {
            "_id": key_id,  # nx-27017's upserts do not take _id from the filter
            "body_digest": answer.body_digest,
            "status": answer.status,
            "body": answer.body,
            "created_at": self._now(),
        }
        await self._docs.replace_one({"_id": {"$eq": key_id}}, doc, upsert=True)
