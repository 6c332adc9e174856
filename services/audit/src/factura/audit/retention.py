"""Retention: the one code path that removes audit records, and how the chain survives it.

A tenant keeps fiscal records (issue, delivery, payment) for ``fiscal_days``, engagement records
(opens, clicks, downloads: user agents, client address pseudonyms) for ``engagement_days`` and API
access records for ``access_days`` (:class:`~factura.common.tenants.AuditPolicy`; the
``unidentified`` chain uses the defaults). The contact data *inside* fiscal records (encrypted per
customer) can have a shorter period of its own, ``contact_days``: customers not seen for that long
are erased by destroying their data key (:class:`~factura.audit.erase.IdleContacts`), which
removes no record and so needs no tombstone.
Records older than that are removed in batches of one class, each batch replaced by
**tombstones** (position, hash, prev, record id, type, class, time) and sealed by a signed
**retention checkpoint** over ``removed_digest`` of those tombstones. Verification then walks
the removed positions through their signed hashes, and the records after them still link.

**Order of the steps, and why a crash between any two leaves a chain that verifies:**

1. *Insert the tombstones* (ordered; each names its checkpoint ``_id``). Until a checkpoint with
   that ``_id`` exists, verification ignores them: the records are all still there.
2. *Insert the checkpoint* (only once every tombstone of the batch is stored, since a checkpoint
   whose tombstones differ from what it signed breaks verification). Records and signed
   tombstones side by side verify as long as their hashes agree.
3. *Delete the records.* A partial delete leaves gaps that signed tombstones fill.

A rerun finds positions that already have a tombstone and finishes their batch instead of
starting a new one: the checkpoint exists → delete the records; every tombstone is stored
(their digest and last position match the checkpoint ``_id``) → sign, then delete; some are
missing (a crash inside step 1) → wait, and once the batch is older than ``stale_after``, take
its unsigned tombstones back (nothing signed refers to them) so a later batch removes those
records. Two jobs racing for the same positions (two replicas, or the CLI beside the service)
meet on the unique tombstone ``_id``: whoever stored a position first keeps it, the other takes
back its own unsigned tombstones at once; a batch both built alike has one ``_id`` and is sealed
once. A MongoDB outage is a crash at some step: the job raises, and the next run goes on.

Never removed: a chain's last record (new records link to it: the head must stay readable), and a
record whose stored fields do not match its hashed content (removing it would hide the
tampering; verification names it instead). The class and time a record is removed by are
therefore the ones its hash covers.

MongoDB role: ``remove`` on ``audit_records`` and on ``audit_tombstones`` (the unsigned ones of an
abandoned batch), insert elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from factura.audit.chain import Head, load_head
from factura.audit.checkpoints import SIGNED, Signer
from factura.audit.erase import IdleContacts
from factura.audit.records import UNIDENTIFIED_TENANT, to_ms
from factura.audit.store import AuditDb
from factura.audit.verify import check_record, removed_digest
from factura.common.envelope import utcnow
from factura.common.metrics import counter
from factura.common.mongo import Document, exact
from factura.common.tenants import AuditPolicy

log = logging.getLogger(__name__)
REMOVED = counter("audit_retention_removed_total", "Audit records removed by retention.", ("class",))


def retention_days(policy: AuditPolicy) -> dict[str, int]:
    """Days each retention class is kept under ``policy``."""
    return {"fiscal": policy.fiscal_days, "engagement": policy.engagement_days, "access": policy.access_days}


@dataclass
class RetentionReport:
    """What one run removed (or, in a dry run, would remove), and what it left for a later run."""

    now: datetime
    dry_run: bool
    #: tenant → class → records removed (in a dry run: that would be removed).
    removed: dict[str, dict[str, int]] = field(default_factory=dict)
    checkpoints: int = 0
    #: "tenant:seq: problem" of expired records kept because their content does not match their hash.
    refused: list[str] = field(default_factory=list)
    #: Expired records left for a later run: another run's unfinished batch holds (some of) their positions.
    waiting: int = 0
    #: Unsigned tombstones of abandoned or lost batches taken back (their records stay until a later batch).
    rolled_back: int = 0
    #: tenant → customers whose contact data was erased by ``contact_days`` (dry run: would be).
    contacts_erased: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(n for classes in self.removed.values() for n in classes.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the CLI prints it)."""
        return asdict(self) | {"now": self.now.isoformat(), "total": self.total}

    def add(self, tenant: str, cls: str, n: int) -> None:
        if n:
            classes = self.removed.setdefault(tenant, {})
            classes[cls] = classes.get(cls, 0) + n


async def apply_retention(
    db: AuditDb,
    signer: Signer,
    policies: Callable[[str], AuditPolicy],
    now: datetime,
    *,
    dry_run: bool = False,
    batch: int = 1000,
    stale_after: timedelta = timedelta(hours=1),
    stopping: asyncio.Event | None = None,
    contacts: IdleContacts | None = None,
) -> RetentionReport:
    """Remove every tenant's expired records as of ``now``; ``dry_run`` only counts them. With
    ``contacts``, also erase the contact data of customers idle for the tenant's ``contact_days``.

    Raises what MongoDB raises (an outage): whatever was done is consistent, a rerun continues.
    ``stopping`` is checked between batches, so a shutdown never waits for a whole run.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    job = _Job(db, signer, to_ms(now), dry_run, batch, stale_after, RetentionReport(now=to_ms(now), dry_run=dry_run))
    for tenant in sorted(await db.records.distinct("tenant_id")):
        if stopping is not None and stopping.is_set():
            break
        policy = AuditPolicy() if tenant == UNIDENTIFIED_TENANT else policies(tenant)
        await job.tenant(tenant, retention_days(policy), stopping)
        if contacts is not None and policy.contact_days is not None:
            erased = await contacts.erase_idle(tenant, policy.contact_days, job.now, dry_run=dry_run)
            if erased:
                job.report.contacts_erased[tenant] = erased
        log.info(
            "retention applied" if not dry_run else "retention dry run",
            extra={"tenant_id": tenant, "removed": job.report.removed.get(tenant, {}), "dry_run": dry_run},
        )
    return job.report


@dataclass
class RetentionTask:
    """Applies retention every ``interval_s`` (first when started), until ``stopping`` is set."""

    db: AuditDb
    signer: Signer
    policies: Callable[[str], AuditPolicy]
    interval_s: float = 3600.0
    batch: int = 1000
    contacts: IdleContacts | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await apply_retention(
                    self.db,
                    self.signer,
                    self.policies,
                    utcnow(),
                    batch=self.batch,
                    stopping=stopping,
                    contacts=self.contacts,
                )
            except PyMongoError as e:  # MongoDB down: every step is consistent, the next turn goes on
                log.warning("retention interrupted; retrying next interval", extra={"error": repr(e)[:300]})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.interval_s)


@dataclass
class _Job:
    db: AuditDb
    signer: Signer
    now: datetime
    dry_run: bool
    batch: int
    stale_after: timedelta
    report: RetentionReport
    #: Unfinished batches already handled in this run (their positions can span several pages).
    finished: set[str] = field(default_factory=set)

    async def tenant(self, tenant: str, days: Mapping[str, int], stopping: asyncio.Event | None) -> None:
        head = await load_head(self.db.records, self.db.tombstones, tenant)
        for cls, kept in days.items():
            query = {"tenant_id": tenant, "class": cls, "occurred_at": {"$lt": self.now - timedelta(days=kept)}}
            after = 0
            while stopping is None or not stopping.is_set():
                window = {"$gt": after, "$lt": head.seq}  # never the head: new records link to it
                cursor = self.db.records.find(exact(query | {"seq": window})).sort("seq", ASCENDING).limit(self.batch)
                page = [doc async for doc in cursor]
                if not page:
                    break
                after = page[-1]["seq"]
                await self._page(tenant, cls, page)

    async def _page(self, tenant: str, cls: str, page: list[Document]) -> None:
        held = self.db.tombstones.find(exact({"tenant_id": tenant, "seq": {"$in": [d["seq"] for d in page]}}))
        batch_of = {t["seq"]: str(t.get("checkpoint")) async for t in held}
        freed: set[str] = set()  # batches taken back: their records are free for a new one
        if self.dry_run:
            self.report.add(tenant, cls, len(batch_of))
        else:
            for batch_id in sorted(set(batch_of.values()) - self.finished):
                self.finished.add(batch_id)
                if await self._finish(tenant, batch_id):
                    freed.add(batch_id)
        free = [doc for doc in page if batch_of.get(doc["seq"], "") in freed or doc["seq"] not in batch_of]
        fresh = [doc for doc in free if self._sound(tenant, doc, None)]
        if self.dry_run:
            self.report.add(tenant, cls, len(fresh))
        elif fresh:
            await self._remove(tenant, cls, fresh)

    def _sound(self, tenant: str, doc: Document, tomb: Document | None) -> bool:
        """Whether the record is what its hash says (and what its tombstone kept): safe to remove."""
        problem = check_record(doc, doc.get("prev", ""), tomb) or (
            None if tomb is None or doc.get("prev") == tomb.get("prev") else "differs from its tombstone"
        )
        if problem is not None:
            self.report.refused.append(f"{tenant}:{doc.get('seq')}: {problem}")
            log.error(
                "expired record not removed", extra={"tenant_id": tenant, "seq": doc.get("seq"), "problem": problem}
            )
        return problem is None

    async def _remove(self, tenant: str, cls: str, docs: list[Document]) -> None:
        """A new batch: tombstones, then the signed checkpoint, then the delete (module docstring)."""
        tombs = [_tombstone(tenant, doc, self.now) for doc in docs]
        checkpoint = self._sign(tenant, tombs)
        for tomb in tombs:
            tomb["checkpoint"] = checkpoint["_id"]
        try:
            await self.db.tombstones.insert_many(tombs, ordered=True)
        except BulkWriteError as e:
            if any(w.get("code") != 11000 for w in e.details.get("writeErrors", [])):
                raise
            # Another run took some of these positions first. Go on only if the batch stored under
            # this _id is whole (that run built the same batch); else take back what this run stored.
            if await self._whole(tenant, checkpoint["_id"]) is None:
                mine = [t["_id"] for t in tombs[: int(e.details.get("nInserted", 0))]]
                await self._take_back(tenant, checkpoint["_id"], mine)
                self.report.waiting += len(tombs)
                return
        await self._seal(tenant, cls, checkpoint, [doc["_id"] for doc in docs])

    async def _finish(self, tenant: str, batch_id: str) -> bool:
        """A batch an earlier (crashed) or concurrent run started: complete it, wait for it, or take
        it back (then True: its records are free again)."""
        members = [t async for t in self.db.tombstones.find(exact({"tenant_id": tenant, "checkpoint": batch_id}))]
        if not members:
            return True
        checkpoint: dict[str, Any] | None = None
        signed = await self.db.checkpoints.find_one({"_id": batch_id})
        if signed is not None and json.loads(signed["payload"]).get("digest") != removed_digest(members):
            log.error("retention batch differs from its signed checkpoint", extra={"checkpoint": batch_id})
            return False  # verification names it; removing more would only widen the damage
        if signed is None:
            if await self._whole(tenant, batch_id, members) is None:
                removed_at = min(to_ms(t["removed_at"]) for t in members)
                if self.now - removed_at > self.stale_after:
                    await self._take_back(tenant, batch_id, [t["_id"] for t in members])
                    return True
                self.report.waiting += len(members)
                return False
            checkpoint = self._sign(tenant, members)
        by_id = {t["record_id"]: t for t in members}
        found = self.db.records.find(exact({"tenant_id": tenant, "_id": {"$in": list(by_id)}}))
        removable = [doc["_id"] async for doc in found if self._sound(tenant, doc, by_id[doc["_id"]])]
        await self._seal(tenant, str(members[0].get("class")), checkpoint, removable)
        return False

    async def _whole(self, tenant: str, batch_id: str, members: list[Document] | None = None) -> list[Document] | None:
        """The batch's stored tombstones if they are all there: their digest and last position are
        the ones its checkpoint ``_id`` was made from."""
        if members is None:
            members = [t async for t in self.db.tombstones.find(exact({"tenant_id": tenant, "checkpoint": batch_id}))]
        if not members:
            return None
        last = max(members, key=lambda t: t["seq"])
        expected = f"{tenant}:{last['seq']}:retention:{removed_digest(members)[:16]}"
        return members if expected == batch_id else None

    async def _take_back(self, tenant: str, batch_id: str, ids: list[str]) -> None:
        """Unsigned tombstones out: nothing signed refers to them, and their records are all there."""
        if ids:
            result = await self.db.tombstones.delete_many(
                {"tenant_id": tenant, "checkpoint": batch_id, "_id": {"$in": ids}}
            )
            self.report.rolled_back += result.deleted_count
            log.warning("unsigned retention batch taken back", extra={"checkpoint": batch_id, "tombstones": len(ids)})

    def _sign(self, tenant: str, tombs: list[Document]) -> dict[str, Any]:
        ordered = sorted(tombs, key=lambda t: t["seq"])
        return self.signer.checkpoint(
            tenant,
            Head(ordered[-1]["seq"], ordered[-1]["hash"]),
            "retention",
            digest=removed_digest(ordered),
            count=len(ordered),
            first_seq=ordered[0]["seq"],
            last_seq=ordered[-1]["seq"],
            classes=sorted({str(t["class"]) for t in ordered}),
        )

    async def _seal(self, tenant: str, cls: str, checkpoint: dict[str, Any] | None, record_ids: list[Any]) -> None:
        """The checkpoint in, if not yet there (a run that built the same batch may have sealed it
        first: same ``_id``, one document), then the delete."""
        if checkpoint is not None:
            try:
                await self.db.checkpoints.insert_one(checkpoint)
            except DuplicateKeyError:
                pass
            else:
                SIGNED.labels(kind="retention").inc()
                self.report.checkpoints += 1
        if record_ids:
            result = await self.db.records.delete_many({"tenant_id": tenant, "_id": {"$in": record_ids}})
            self.report.add(tenant, cls, result.deleted_count)
            REMOVED.labels(**{"class": cls}).inc(result.deleted_count)


def _tombstone(tenant: str, doc: Document, removed_at: datetime) -> Document:
    return {
        "_id": f"{tenant}:{doc['seq']}",
        "tenant_id": tenant,
        "seq": doc["seq"],
        "hash": doc["hash"],
        "prev": doc["prev"],
        "record_id": doc["_id"],
        "type": doc.get("type"),
        "class": doc.get("class"),
        "occurred_at": doc.get("occurred_at"),
        "removed_at": removed_at,
    }
