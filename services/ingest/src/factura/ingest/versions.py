"""What ingest keeps in MongoDB for its doors: invoice numbers, accepted versions, idempotent HTTP answers.

``ingest_invoice_heads``: one document per tenant and invoice number, ``_id = tenant/number``, naming
the content (digest) and event id of its current version. It is how one rule holds for every door:
the first content under a number claims it with an insert (atomic on ``_id``, so two doors racing
with different contents cannot both win); the same content again is a duplicate; other content is a
conflict unless the ERP marks it an amendment, which moves the head by compare-and-set on the digest
it replaces (two amendments racing: one wins, the other re-reads and tries again).

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
from enum import Enum

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from factura.common.envelope import utcnow
from factura.common.errors import DependencyDown
from factura.common.mongo import Document, exact

INVOICES = "ingest_invoices"
HEADS = "ingest_invoice_heads"
IDEMPOTENCY = "ingest_idempotency"
IDEMPOTENCY_TTL_S = 24 * 3600


@dataclass(frozen=True)
class Version:
    event_id: uuid.UUID
    digest: str
    accepted_at: datetime
    source: str


class Claim(Enum):
    """What an invoice's content is to the number it names (:meth:`InvoiceVersions.claim`)."""

    #: The number's first content, or an amendment now current: publish it.
    NEW = "new"
    #: The number's current content again (a redelivery, or a retry after a failed publish):
    #: publish again (same event id, so consumers keep one) and report a duplicate if on record.
    CURRENT = "current"
    #: A version accepted before and since amended: a late redelivery, answered as a duplicate
    #: without publishing, so it cannot overtake its amendment.
    SUPERSEDED = "superseded"
    #: Other content under an accepted number, not marked as an amendment: refused.
    CONFLICT = "conflict"


@dataclass(frozen=True)
class Head:
    """The current version of an invoice number."""

    digest: str
    event_id: uuid.UUID


#: Compare-and-set rounds an amendment tries before the loop retries the message (only when other
#: amendments of the same number keep winning, which a key-ordered topic does not produce).
_CAS_ROUNDS = 5


class HeadMoving(DependencyDown):
    """Amendments of one number keep replacing each other: like an outage, retried (the loop pauses
    the partition; the API answers 503), never refused."""

    def __init__(self, head_id: str) -> None:
        super().__init__("mongo", f"{head_id}: its current version changed {_CAS_ROUNDS} times while amending")


class InvoiceVersions:
    def __init__(
        self,
        collection: AsyncCollection[Document],
        heads: AsyncCollection[Document],
        *,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._docs = collection
        self._heads = heads
        self._now = now

    @classmethod
    def of(cls, db: AsyncDatabase[Document]) -> InvoiceVersions:
        return cls(db[INVOICES], db[HEADS])

    async def ensure_indexes(self) -> None:
        await self._docs.create_index([("tenant_id", 1), ("invoice_number", 1)])

    async def claim(
        self, tenant_id: str, invoice_number: str, digest: str, event_id: uuid.UUID, *, amendment: bool
    ) -> tuple[Claim, Head]:
        """Decide what ``digest`` is to the number and, for a first version or an amendment, make it
        current. Returns the decision and the head it was taken against (the one in conflict, for a
        conflict). Made before publishing: a publish that then fails leaves the content current, and
        its retry finds :attr:`Claim.CURRENT` and publishes it."""
        head_id = f"{tenant_id}/{invoice_number}"
        mine = Head(digest, event_id)
        for _ in range(_CAS_ROUNDS):
            # Insert first: most numbers arrive once, and then one round trip decides.
            try:
                await self._heads.insert_one(self._head_doc(head_id, tenant_id, invoice_number, mine))
            except DuplicateKeyError:
                pass  # claimed before (or by another door just now): judge against that head
            else:
                return Claim.NEW, mine
            head = await self._head(head_id)
            if head is None:
                continue
            if head.digest == digest:
                return Claim.CURRENT, head
            if await self._docs.find_one({"_id": {"$eq": f"{head_id}/{digest}"}}, projection={"_id": 1}):
                return Claim.SUPERSEDED, head
            if not amendment:
                return Claim.CONFLICT, head
            moved = await self._heads.update_one(
                {"_id": {"$eq": head_id}, "digest": {"$eq": head.digest}},
                {"$set": {"digest": digest, "event_id": str(event_id), "updated_at": self._now()}},
            )
            if moved.modified_count == 1:
                return Claim.NEW, mine
        raise HeadMoving(head_id)

    async def _head(self, head_id: str) -> Head | None:
        doc = await self._heads.find_one({"_id": {"$eq": head_id}})
        return None if doc is None else Head(doc["digest"], uuid.UUID(doc["event_id"]))

    def _head_doc(self, head_id: str, tenant_id: str, invoice_number: str, head: Head) -> Document:
        return {
            "_id": head_id,
            "tenant_id": tenant_id,
            "invoice_number": invoice_number,
            "digest": head.digest,
            "event_id": str(head.event_id),
            "updated_at": self._now(),
        }

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
