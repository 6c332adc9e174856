"""``ingest_imports``: one MongoDB document per uploaded bulk file, from ``queued`` to its outcome.

States: ``queued`` → ``running`` (a worker holds a lease) → ``succeeded`` or ``failed`` (the file
as a whole was refused: bad header, unreadable format). An outage sends a running import back to
``queued`` with a ``retry_at_ms``; a worker that dies leaves it ``running`` until its lease ends,
and then any worker takes it over. Loading a file again is safe: ingest deduplicates the invoices
it republishes.

Every change is one compare-and-set on one document (``find_one_and_update`` or ``update_one``
filtered on state and owner), atomic on MongoDB and on the local MongoDB-wire server alike; no
``$or`` (nx-27017 applies it to the wrong documents in findAndModify). Times that filters compare
are epoch milliseconds (numbers): nx-27017 turns datetimes written by ``$set`` into strings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from factura.common.envelope import utcnow
from factura.common.mongo import Document, exact

IMPORTS = "ingest_imports"
State = Literal["queued", "running", "succeeded", "failed"]
Format = Literal["csv", "xlsx"]


def now_ms() -> int:
    return int(time.time() * 1000)


class Progress(BaseModel):
    invoices: int = Field(0, description="Invoices checked so far")
    problems: int = Field(0, description="Problems reported so far")
    percent: float | None = Field(None, description="How far through the file, when the reader can tell")


class Summary(BaseModel):
    """A finished load's counts (the fields of :class:`~factura.ingest.bulk.load.LoadSummary`)."""

    rows: int = Field(description="Data rows read (a total row and blank rows not counted)")
    invoices: int = Field(description="Invoices found (rows grouped by invoice number where the mapping says so)")
    accepted: int = Field(description="Valid invoices")
    published: int = Field(description="Valid invoices published to erp.invoices (0 in a dry run)")
    rejected: int = Field(description="Invoices refused; their rows are in the report")
    rejected_rows: int
    problems: int = Field(description="Lines of the report")
    total_row: int | None = Field(None, description="The export's total row, left out")
    dry_run: bool


class ImportRecord(BaseModel):
    """One import as stored."""

    import_id: str = Field(alias="_id")
    tenant_id: str
    state: State
    filename: str
    format: Format
    size: int
    sha256: str
    dry_run: bool
    mapping: str | None = None
    dedupe: str
    source_key: str
    report_key: str
    created_at: datetime
    created_ms: int
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    owner: str | None = None
    lease_expires_ms: int = 0
    retry_at_ms: int = 0
    progress: Progress | None = None
    summary: Summary | None = None
    error: str | None = None
    last_outage: str | None = None

    @field_validator("created_at", "started_at", "finished_at", mode="after")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # nx-27017 returns a ``$set`` datetime as a naive string; it was written as UTC.
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class ImportStore:
    def __init__(
        self,
        collection: AsyncCollection[Document],
        *,
        clock_ms: Callable[[], int] = now_ms,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._docs = collection
        self._ms = clock_ms
        self._now = now

    @classmethod
    def of(cls, db: AsyncDatabase[Document]) -> ImportStore:
        return cls(db[IMPORTS])

    async def ensure_indexes(self) -> None:
        await self._docs.create_index([("state", 1), ("retry_at_ms", 1)])
        await self._docs.create_index([("state", 1), ("lease_expires_ms", 1)])
        await self._docs.create_index([("tenant_id", 1), ("dedupe", 1), ("created_ms", 1)])

    async def create(self, doc: Mapping[str, Any]) -> ImportRecord:
        """Insert a new import, ``queued``; ``doc`` holds ``_id`` and the upload's fields."""
        full = {
            **doc,
            "state": "queued",
            "created_at": self._now(),
            "created_ms": self._ms(),
            "attempts": 0,
            "retry_at_ms": 0,
            "lease_expires_ms": 0,
        }
        await self._docs.insert_one(full)
        return ImportRecord.model_validate(full)

    async def get(self, import_id: str) -> ImportRecord | None:
        doc = await self._docs.find_one(exact({"_id": import_id}))
        return None if doc is None else ImportRecord.model_validate(doc)

    async def recent(self, tenant_id: str, dedupe: str, within_s: float) -> ImportRecord | None:
        """The newest import of the same content for the tenant created within ``within_s``."""
        query = exact({"tenant_id": tenant_id, "dedupe": dedupe}) | {
            "created_ms": {"$gt": self._ms() - int(within_s * 1000)}
        }
        doc = await self._docs.find_one(query, sort=[("created_ms", -1)])
        return None if doc is None else ImportRecord.model_validate(doc)

    async def claim(self, owner: str, lease_s: float) -> ImportRecord | None:
        """Take the oldest queued import that is due, else one whose worker's lease ran out."""
        now = self._ms()
        update = {
            "$set": {"state": "running", "owner": owner, "lease_expires_ms": now + int(lease_s * 1000)},
            "$inc": {"attempts": 1},
            "$currentDate": {"started_at": True},
        }
        for query in (
            {"state": {"$eq": "queued"}, "retry_at_ms": {"$lte": now}},
            {"state": {"$eq": "running"}, "lease_expires_ms": {"$lt": now}},
        ):
            doc = await self._docs.find_one_and_update(
                query, update, sort=[("created_ms", 1)], return_document=ReturnDocument.AFTER
            )
            if doc is not None:
                return ImportRecord.model_validate(doc)
        return None

    async def heartbeat(self, import_id: str, owner: str, lease_s: float, progress: Progress) -> int | None:
        """Extend ``owner``'s lease and record progress; the new expiry (epoch ms), ``None`` if the
        lease is no longer ``owner``'s."""
        expires = self._ms() + int(lease_s * 1000)
        changes = {"lease_expires_ms": expires, "progress": progress.model_dump()}
        return expires if await self._held(import_id, owner, changes) else None

    async def finish(
        self, import_id: str, owner: str, *, summary: Summary | None, error: str | None, progress: Progress
    ) -> bool:
        """``succeeded`` (``error`` None) or ``failed``; False if ``owner`` lost the import meanwhile."""
        changes: Document = {
            "state": "failed" if error is not None else "succeeded",
            "summary": None if summary is None else summary.model_dump(),
            "error": error,
            "progress": progress.model_dump(),
            "owner": None,
            "lease_expires_ms": 0,
            "finished_at": self._now(),
        }
        return await self._held(import_id, owner, changes)

    async def requeue(self, import_id: str, owner: str, *, retry_in_s: float, outage: str | None) -> bool:
        """Back to ``queued`` (after an outage, or a clean stop with ``retry_in_s=0``)."""
        changes: Document = {
            "state": "queued",
            "owner": None,
            "lease_expires_ms": 0,
            "retry_at_ms": self._ms() + int(retry_in_s * 1000),
        }
        if outage is not None:
            changes["last_outage"] = outage
        return await self._held(import_id, owner, changes)

    async def _held(self, import_id: str, owner: str, changes: Document) -> bool:
        query = exact({"_id": import_id, "owner": owner, "state": "running"})
        result = await self._docs.update_one(query, {"$set": changes})
        return result.matched_count == 1
