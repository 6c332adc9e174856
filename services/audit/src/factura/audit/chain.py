"""The one writer of ``audit_records``: a hash chain per tenant, appended in batches, never forked.

Each record stored at position ``seq`` of its tenant's chain carries ``prev`` (the hash of the
record at ``seq - 1``) and ``hash = sha256(prev ‖ record)``, where ``record`` is its canonical
JSON. Nothing is ever updated: a record is written once, whole.

**No forks, with any number of writers.** The unique index on ``(tenant_id, seq)`` is the
fence: a writer extends the chain from a head it read from the database (or wrote itself), and
inserts in order, so the first record of a batch that lands on a position someone else took
fails and nothing after it is written. The writer then reloads the head and chains the rest
again. Two replicas consuming the same tenant during a rebalance, or a restarted process with
no memory of the head, therefore interleave their records but never branch the chain.

**Group commit.** Within a process every partition worker hands its batch to the tenant's
:class:`_TenantChain`; whatever queued while a write was in flight goes out in the next single
``insert_many``. A busy tenant is one ordered stream of large inserts, not one per partition.

**Once per id.** Before chaining, ids already stored (or stored and since removed by retention)
are looked up and counted as duplicates (a redelivered event, a DLQ record seen twice), so a
duplicate never takes a position.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from factura.audit.records import FIELDS, GENESIS, NewRecord, canonical
from factura.common.errors import DependencyDown
from factura.common.metrics import counter
from factura.common.mongo import Document, exact

CONFLICTS = counter("audit_chain_conflicts_total", "Appends that found their chain position taken and re-chained.")
#: A chain this contended is a bug (or an attack), not a race: stop and let the retry policy decide.
MAX_REBASES = 20


class ChainConflict(DependencyDown):
    """The chain kept moving under this writer (other writers are appending): like an outage, the
    partition pauses and the batch is retried, never dead-lettered."""

    def __init__(self, tenant: str) -> None:
        super().__init__("audit-chain", f"the chain of tenant {tenant!r} kept moving under this writer")


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str


@dataclass
class Appended:
    stored: int = 0
    duplicates: int = 0

    def __iadd__(self, other: Appended) -> Appended:
        self.stored += other.stored
        self.duplicates += other.duplicates
        return self


def link(prev: str, record: str) -> str:
    """The chain's hash: sha256 over the previous hash (64 hex characters) then the record's UTF-8 bytes."""
    return hashlib.sha256(prev.encode() + record.encode()).hexdigest()


def record_json(new: NewRecord, seq: int) -> str:
    """What is hashed: every indexed field, the raw bytes, the id, the tenant and the position."""
    return canonical({**new.fields, "id": new.id, "tenant_id": new.tenant_id, "seq": seq, "raw": new.raw})


def chained(new: NewRecord, head: Head) -> Document:
    seq = head.seq + 1
    record = record_json(new, seq)
    return {
        "_id": new.id,
        "tenant_id": new.tenant_id,
        "seq": seq,
        "prev": head.hash,
        "hash": link(head.hash, record),
        "record": record,
        **new.fields,
    }


async def load_head(records: AsyncCollection[Document], tombstones: AsyncCollection[Document], tenant: str) -> Head:
    """The last position of a tenant's chain: its newest record, or a retained tombstone if newer."""
    best = Head(0, GENESIS)
    for collection in (records, tombstones):
        async for doc in (
            collection.find(exact({"tenant_id": tenant}), {"seq": 1, "hash": 1}).sort("seq", DESCENDING).limit(1)
        ):
            if doc["seq"] > best.seq:
                best = Head(doc["seq"], doc["hash"])
    return best


class ChainWriter:
    def __init__(self, records: AsyncCollection[Document], tombstones: AsyncCollection[Document]) -> None:
        self._records = records
        self._tombstones = tombstones
        self._chains: dict[str, _TenantChain] = {}

    async def append(self, records: Sequence[NewRecord]) -> Appended:
        """Store each record once at the end of its tenant's chain; returns what was new."""
        by_tenant: dict[str, list[NewRecord]] = defaultdict(list)
        for record in records:
            by_tenant[record.tenant_id].append(record)
        total = Appended()
        for result in await asyncio.gather(*(self._chain(t).submit(rs) for t, rs in by_tenant.items())):
            total += result
        return total

    def heads(self) -> dict[str, Head]:
        """The last head this process wrote or read per tenant (checkpoints sign these)."""
        return {tenant: chain.head for tenant, chain in self._chains.items() if chain.head is not None}

    def _chain(self, tenant: str) -> _TenantChain:
        chain = self._chains.get(tenant)
        if chain is None:
            chain = self._chains[tenant] = _TenantChain(tenant, self._records, self._tombstones)
        return chain


class _TenantChain:
    """One tenant's chain in this process: a queue of batches and at most one write in flight."""

    def __init__(self, tenant: str, records: AsyncCollection[Document], tombstones: AsyncCollection[Document]) -> None:
        self._tenant = tenant
        self._records = records
        self._tombstones = tombstones
        self.head: Head | None = None
        self._queue: list[tuple[Sequence[NewRecord], asyncio.Future[Appended]]] = []
        self._writing: asyncio.Task[None] | None = None

    def submit(self, records: Sequence[NewRecord]) -> asyncio.Future[Appended]:
        done: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._queue.append((records, done))
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._drain(), name=f"audit-chain-{self._tenant}")
        return done

    async def _drain(self) -> None:
        while self._queue:
            taken, self._queue = self._queue, []
            batch = [record for records, _ in taken for record in records]
            try:
                result = await self._write(batch)
            except BaseException as e:  # each submitter's handler sees it and retries (an outage pauses)
                self.head = None  # unknown after a failed write: read it again next time
                for _, done in taken:
                    if not done.done():
                        done.set_exception(e)
                if isinstance(e, asyncio.CancelledError):
                    raise
                continue
            # Split the counts back per submitter: new ids first come, duplicates after.
            for records, done in taken:
                share = Appended()
                for record in records:
                    if record.id in result.new_ids:
                        share.stored += 1
                        result.new_ids.discard(record.id)
                    else:
                        share.duplicates += 1
                if not done.done():
                    done.set_result(share)

    async def _stored(self, ids: list[str]) -> set[str]:
        """Ids already in the chain: stored, or stored and later removed by retention (tombstoned)."""
        found = {d["_id"] async for d in self._records.find({"_id": {"$in": ids}}, {"_id": 1})}
        query = {"tenant_id": self._tenant, "record_id": {"$in": ids}}
        found.update([d["record_id"] async for d in self._tombstones.find(exact(query), {"record_id": 1})])
        return found

    async def _write(self, batch: list[NewRecord]) -> _Written:
        new_ids: set[str] = set()
        pending = _unique(batch)
        for _ in range(MAX_REBASES):
            stored = await self._stored([r.id for r in pending])
            pending = [r for r in pending if r.id not in stored]
            if not pending:
                return _Written(new_ids)
            head = self.head or await load_head(self._records, self._tombstones, self._tenant)
            docs = []
            for record in pending:
                doc = chained(record, head)
                docs.append(doc)
                head = Head(doc["seq"], doc["hash"])
            try:
                await self._records.insert_many(docs, ordered=True)
            except BulkWriteError as e:
                inserted = int(e.details.get("nInserted", 0))
                if not all(w.get("code") == 11000 for w in e.details.get("writeErrors", [])):
                    raise
                new_ids.update(r.id for r in pending[:inserted])
                pending = pending[inserted:]
                self.head = None  # someone else took the next position (or stored the same id): re-read
                CONFLICTS.inc()
                continue
            new_ids.update(r.id for r in pending)
            self.head = head
            return _Written(new_ids)
        raise ChainConflict(self._tenant)


@dataclass
class _Written:
    new_ids: set[str]


def _unique(batch: list[NewRecord]) -> list[NewRecord]:
    """The batch without repeats of an id (the same event twice in one fetch), first one kept."""
    seen: set[str] = set()
    out = []
    for record in batch:
        if record.id not in seen:
            seen.add(record.id)
            out.append(record)
    return out


def stored_fields(doc: Document) -> dict[str, Any]:
    """The indexed fields of a stored record, as :func:`record_json` put them in (for verification)."""
    return {name: doc.get(name) for name in FIELDS}
