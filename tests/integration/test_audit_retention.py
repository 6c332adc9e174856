"""Retention on the real MongoDB-wire server: expired records leave signed tombstones, the chain
still verifies (online and offline), and a crash or a second job at any step never leaves a chain
that fails verification."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pymongo.errors import AutoReconnect, PyMongoError

from factura.audit.chain import ChainWriter
from factura.audit.checkpoints import Signer
from factura.audit.records import UNIDENTIFIED_TENANT, NewRecord, RetentionClass, _fields, canonical
from factura.audit.retention import RetentionTask, apply_retention
from factura.audit.store import AuditDb
from factura.audit.verify import Verification, export_chain, removed_digest, verify_chain
from factura.common.envelope import utcnow
from factura.common.mongo import create_client, database
from factura.common.tenants import AuditPolicy
from factura.devstack.config import StackConfig
from tests.conftest import mongo_settings
from tests.integration.test_audit_chain import run_documented_check
from tests.waiting import until_async

pytestmark = pytest.mark.integration

#: Default policy: engagement and access kept 730 days, fiscal 3650. Retention runs 800 days ahead.
LATER = timedelta(days=800)
CYCLE: tuple[RetentionClass, ...] = ("fiscal", "engagement", "access")
TYPES = {"fiscal": "invoice.created", "engagement": "delivery.opened", "access": "api.access"}


@pytest.fixture
async def db(cfg: StackConfig) -> AsyncIterator[AuditDb]:
    settings = mongo_settings(cfg)
    client = create_client(settings)
    audit = AuditDb.of(database(client, settings), prefix=f"audit_{uuid.uuid4().hex[:6]}_")
    await audit.ensure_indexes()
    yield audit
    await client.close()


@pytest.fixture
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


def record(tenant: str, i: int, cls: RetentionClass, age: timedelta = timedelta(0)) -> NewRecord:
    fields = _fields(
        kind="access" if cls == "access" else "event",
        type=TYPES[cls],
        occurred_at=utcnow() - age,
        source=f"test/0/{i}",
        invoice_id=f"INV-{i}",
        retention=cls,
    )
    return NewRecord(id=f"{tenant}:r{i}", tenant_id=tenant, fields=fields, raw=canonical({"tenant": tenant, "i": i}))


async def chain(db: AuditDb, tenant: str, n: int, age: timedelta = timedelta(0)) -> None:
    """n records cycling fiscal, engagement, access (the last one's class depends on n)."""
    await ChainWriter(db.records, db.tombstones).append([record(tenant, i, CYCLE[i % 3], age) for i in range(n)])


def defaults(tenant: str) -> AuditPolicy:
    return AuditPolicy()


async def verified(db: AuditDb, signer: Signer, tenant: str = "acme") -> Verification:
    result = await verify_chain(db, tenant, signer.public)
    assert result.ok, result.first_break
    return result


async def classes_left(db: AuditDb, tenant: str = "acme") -> dict[int, str]:
    return {d["seq"]: d["class"] async for d in db.records.find({"tenant_id": tenant}, {"seq": 1, "class": 1})}


async def test_expired_records_leave_signed_tombstones_and_the_chain_verifies(db: AuditDb, signer: Signer) -> None:
    """30 acme records (the last an access record), beta keeping engagement longer, and the
    unidentified chain on the defaults (the policy lookup is never asked for it)."""
    await chain(db, "acme", 30)  # seq 30 is an access record: the head, never removed
    await chain(db, "beta", 9)
    await chain(db, UNIDENTIFIED_TENANT, 4)
    policies: dict[str, AuditPolicy] = {"acme": AuditPolicy(), "beta": AuditPolicy(engagement_days=1000)}
    now = utcnow() + LATER
    before = await db.records.count_documents({})

    dry = await apply_retention(db, signer, policies.__getitem__, now, dry_run=True, batch=4)
    assert await db.records.count_documents({}) == before
    assert await db.tombstones.count_documents({}) == 0
    assert dry.checkpoints == 0

    report = await apply_retention(db, signer, policies.__getitem__, now, batch=4)
    assert report.removed == {
        "acme": {"engagement": 10, "access": 9},
        "beta": {"access": 2},
        UNIDENTIFIED_TENANT: {"engagement": 1, "access": 1},
    }
    assert dry.removed == report.removed
    assert report.refused == [] and report.waiting == 0
    assert report.checkpoints == 3 + 3 + 1 + 2  # batches of 4: acme 10 → 3, 9 → 3; beta 1; unidentified 2
    left = await classes_left(db)
    assert left[30] == "access"
    assert sorted(left) == [*range(1, 30, 3), 30]
    assert set(left.values()) == {"fiscal", "access"}
    acme = await verified(db, signer)
    assert (acme.records, acme.tombstones, acme.head_seq) == (11, 19, 30)
    assert (await verified(db, signer, "beta")).tombstones == 2
    assert (await verified(db, signer, UNIDENTIFIED_TENANT)).tombstones == 2

    again = await apply_retention(db, signer, policies.__getitem__, now, batch=4)
    assert (again.total, again.checkpoints, again.rolled_back) == (0, 0, 0)
    assert await db.tombstones.count_documents({}) == 19 + 2 + 2

    # New records keep linking to the head, and verification still holds.
    await ChainWriter(db.records, db.tombstones).append([record("acme", 99, "fiscal")])
    assert (await verified(db, signer)).head_seq == 31


async def test_a_tombstone_altered_in_mongodb_fails_verification(db: AuditDb, signer: Signer) -> None:
    await chain(db, "acme", 12)
    await apply_retention(db, signer, defaults, utcnow() + LATER)
    tomb = await db.tombstones.find_one({"tenant_id": "acme", "seq": 5})
    assert tomb is not None
    await db.tombstones.update_one({"_id": tomb["_id"]}, {"$set": {"hash": "f" * 64}})
    result = await verify_chain(db, "acme", signer.public)
    assert not result.ok and result.first_break is not None
    assert result.first_break.problem == f"tombstones of {tomb['checkpoint']} differ from what was signed"

    await db.tombstones.update_one({"_id": tomb["_id"]}, {"$set": {"hash": tomb["hash"], "prev": "e" * 64}})
    result = await verify_chain(db, "acme", signer.public)
    assert not result.ok and result.first_break is not None
    assert (result.first_break.seq, result.first_break.record_id) == (5, tomb["record_id"])
    assert result.first_break.problem == "retained position does not link to the one before"


async def test_a_record_deleted_without_a_tombstone_is_still_detected(db: AuditDb, signer: Signer) -> None:
    await chain(db, "acme", 12)
    await apply_retention(db, signer, defaults, utcnow() + LATER)
    await db.records.delete_one({"tenant_id": "acme", "seq": 7})  # a fiscal record, kept by retention
    result = await verify_chain(db, "acme", signer.public)
    assert not result.ok and result.first_break is not None
    assert (result.first_break.seq, result.first_break.problem) == (7, "record at position 7 is missing")


async def test_a_tampered_expired_record_is_not_removed(db: AuditDb, signer: Signer) -> None:
    """Relabelling a fiscal record as engagement must not get it removed early (which would erase
    the evidence): the class retention goes by is the hashed one, and verification names it."""
    await chain(db, "acme", 12)
    await db.records.update_one({"tenant_id": "acme", "seq": 4}, {"$set": {"class": "engagement"}})
    report = await apply_retention(db, signer, defaults, utcnow() + LATER)
    assert report.refused == ["acme:4: field 'class' differs from the hashed record"]
    assert 4 in await classes_left(db)
    result = await verify_chain(db, "acme", signer.public)
    assert result.first_break is not None and result.first_break.seq == 4


@pytest.mark.parametrize("step", ["checkpoint", "delete"])
async def test_a_crash_after_the_tombstones_leaves_a_verifying_chain_and_the_rerun_completes(
    db: AuditDb, signer: Signer, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """MongoDB goes away after the tombstones are in, before the checkpoint or before the delete."""
    await chain(db, "acme", 12)
    collection = db.checkpoints if step == "checkpoint" else db.records
    name = "insert_one" if step == "checkpoint" else "delete_many"

    async def outage(*args: Any, **kwargs: Any) -> Any:
        raise AutoReconnect("connection closed")

    with monkeypatch.context() as patch:
        patch.setattr(collection, name, outage)
        with pytest.raises(PyMongoError):
            await apply_retention(db, signer, defaults, utcnow() + LATER)
    assert await db.tombstones.count_documents({"tenant_id": "acme"}) > 0
    assert len(await classes_left(db)) == 12
    crashed = await verified(db, signer)
    assert crashed.records == 12  # records and (signed or not yet signed) tombstones side by side

    report = await apply_retention(db, signer, defaults, utcnow() + LATER)
    assert report.total == 7 and report.waiting == 0  # 4 engagement, 3 access (the head, seq 12, kept)
    assert sorted(await classes_left(db)) == [1, 4, 7, 10, 12]
    assert (await verified(db, signer)).tombstones == 7


async def test_a_crash_inside_the_tombstone_insert_is_taken_back_once_stale(
    db: AuditDb, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half a batch's tombstones stored, then the connection drops: that batch can never be sealed
    (it is not whole). It waits while it may still be in progress, then is taken back and redone."""
    await chain(db, "acme", 30)
    real = db.tombstones.insert_many

    async def half(documents: list[dict[str, Any]], **kwargs: Any) -> Any:
        await real(documents[: len(documents) // 2], **kwargs)
        raise AutoReconnect("connection closed mid-batch")

    now = utcnow() + LATER
    with monkeypatch.context() as patch:
        patch.setattr(db.tombstones, "insert_many", half)
        with pytest.raises(PyMongoError):
            await apply_retention(db, signer, defaults, now, batch=6)
    assert await db.tombstones.count_documents({"tenant_id": "acme"}) == 3
    await verified(db, signer)

    soon = await apply_retention(db, signer, defaults, now, batch=6)
    assert soon.waiting == 3 and soon.total == 16  # 19 expired, 3 held by the unfinished batch
    await verified(db, signer)

    later = await apply_retention(db, signer, defaults, now + timedelta(hours=2), batch=6)
    assert (later.rolled_back, later.total, later.waiting) == (3, 3, 0)
    assert (await verified(db, signer)).tombstones == 19


async def test_concurrent_jobs_never_break_the_chain(db: AuditDb, signer: Signer) -> None:
    """Three jobs at once (replicas, or the CLI beside the service), at the same and different
    times: positions go to whoever stored them first, a loser takes its unsigned tombstones back at
    once, and what a job found in progress is finished by the next run (no stale wait)."""
    tenants = ["acme", "beta", "gamma"]
    for tenant in tenants:
        await chain(db, tenant, 60)
    now = utcnow() + LATER
    reports = await asyncio.gather(
        apply_retention(db, signer, defaults, now, batch=5),
        apply_retention(db, signer, defaults, now, batch=5),
        apply_retention(db, signer, defaults, now + timedelta(seconds=1), batch=7),
    )
    for tenant in tenants:
        await verified(db, signer, tenant)
    signed = {cp["_id"] async for cp in db.checkpoints.find({"kind": "retention"})}
    assert {t["checkpoint"] async for t in db.tombstones.find({})} <= signed  # no unsigned leftovers
    done = sum(r.total for r in reports)
    last = await apply_retention(db, signer, defaults, now + timedelta(seconds=1), batch=5)
    assert done + last.total == 3 * 39  # 20 engagement + 19 access (the head kept) per tenant, once each
    assert last.rolled_back == 0
    for tenant in tenants:
        assert (await verified(db, signer, tenant)).tombstones == 39


async def test_a_position_taken_between_read_and_insert_is_given_up_without_a_trace(
    db: AuditDb, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another job stores a tombstone at the 3rd position of this job's batch just before this job
    inserts: 2 tombstones go in, the 3rd collides, the batch can never be whole, so this job takes
    its 2 back at once and leaves the batch to a later run."""
    await chain(db, "acme", 12)  # engagement at 2, 5, 8, 11: one batch
    now = utcnow() + LATER
    real = db.tombstones.insert_many
    other = {"_id": "acme:8", "tenant_id": "acme", "seq": 8, "hash": "0" * 64, "checkpoint": "acme:11:retention:x"}

    async def raced(documents: list[dict[str, Any]], **kwargs: Any) -> Any:
        if documents[0]["class"] == "engagement":
            await db.tombstones.insert_one(other | {"removed_at": now, "class": "engagement"})
        return await real(documents, **kwargs)

    monkeypatch.setattr(db.tombstones, "insert_many", raced)
    report = await apply_retention(db, signer, defaults, now)
    assert (report.removed, report.rolled_back, report.waiting) == ({"acme": {"access": 3}}, 2, 4)
    assert [t["_id"] async for t in db.tombstones.find({"class": "engagement"})] == ["acme:8"]
    await verified(db, signer)

    monkeypatch.setattr(db.tombstones, "insert_many", real)
    later = await apply_retention(db, signer, defaults, now + timedelta(hours=2))
    assert (later.removed, later.rolled_back) == ({"acme": {"engagement": 4}}, 1)
    assert (await verified(db, signer)).tombstones == 7


async def test_export_after_retention_verifies_offline(db: AuditDb, signer: Signer, tmp_path: Path) -> None:
    """Positions 1..n in order, the removed ones marked with their hash, each link checked, and each
    retention checkpoint's signature and digest (over the positions that name it) checked with the
    export alone."""
    policy = AuditPolicy()
    await chain(db, "acme", 21)
    await apply_retention(db, signer, lambda tenant: policy, utcnow() + LATER, batch=3)
    export = b"".join([line async for line in export_chain(db, "acme", signer.public)])
    assert verify_offline(export) == (13, 8, 5)  # engagement and access records expire, in batches of 3
    assert run_documented_check(export, tmp_path).startswith("verified 21 positions")


def verify_offline(export: bytes) -> tuple[int, int, int]:
    """What an auditor does with the export and a few lines of Python."""
    lines = [json.loads(line) for line in export.splitlines()]
    header, body = lines[0], lines[1:]
    positions = [x for x in body if "signature" not in x]
    assert [x["seq"] for x in positions] == list(range(1, len(positions) + 1))
    prev = "0" * 64
    for line in positions:
        if line.get("removed"):  # its content is gone; its hash is what the next position links to
            assert "record" not in line
        else:
            assert line["prev"] == prev
            assert hashlib.sha256((prev + line["record"]).encode()).hexdigest() == line["hash"]
        prev = line["hash"]
    public = load_pem_public_key(header["public_key_pem"].encode())
    assert isinstance(public, Ed25519PublicKey)
    removed = {x["seq"]: x for x in positions if x.get("removed")}
    retention = 0
    for cp in (x for x in body if "signature" in x):
        public.verify(bytes.fromhex(cp["signature"]), cp["checkpoint"].encode())
        signed = json.loads(cp["checkpoint"])
        if signed["kind"] == "retention":
            members = [t for t in removed.values() if t["checkpoint"] == cp["id"]]
            assert len(members) == signed["count"]
            assert removed_digest(members) == signed["digest"]
            retention += 1
    return len(removed), len(positions) - len(removed), retention


async def test_the_task_runs_until_stopped_and_outlives_an_outage(
    db: AuditDb, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await chain(db, "acme", 9, age=LATER)  # written 800 days ago: expired now
    real = db.records.delete_many
    failures: list[str] = []

    async def first_fails(*args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append("down")
            raise AutoReconnect("connection refused")
        return await real(*args, **kwargs)

    monkeypatch.setattr(db.records, "delete_many", first_fails)
    stopping = asyncio.Event()
    task = asyncio.create_task(RetentionTask(db, signer, defaults, interval_s=0.05, batch=2).run(stopping))

    async def done() -> bool:
        return await db.records.count_documents({"tenant_id": "acme"}) == 4  # 3 fiscal + the head

    await until_async(done)
    stopping.set()
    await asyncio.wait_for(task, 5)
    assert failures == ["down"]
    assert (await verified(db, signer)).tombstones == 5
