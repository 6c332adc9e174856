"""The periodic chain verifier on the real MongoDB-wire server: intact chains count ``ok``, a record
changed directly in MongoDB flips ``factura_audit_chain_broken`` and the ``broken`` counter (and
keeps them there), incremental walks start after the last verified signed checkpoint, and only a
lease holder verifies."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from prometheus_client import REGISTRY

from factura.audit.chain import ChainWriter
from factura.audit.checkpoints import Checkpointer, Keyring, Signer
from factura.audit.store import AuditDb
from factura.audit.verify import Anchor, verify_chain
from factura.audit.watch import ChainWatch
from tests.integration import test_audit_chain as chain_tests
from tests.integration.test_audit_chain import calls
from tests.waiting import until

pytestmark = pytest.mark.integration


# The chain tests' fixtures: a fresh audit database per test and a signing key.
db = chain_tests.db
signer = chain_tests.signer


async def sealed_chain(db: AuditDb, signer: Signer, tenant: str, n: int, start: int = 0) -> None:
    """``n`` more records of ``tenant``, their head signed as the checkpoint task would."""
    writer = ChainWriter(db.records, db.tombstones)
    await writer.append(calls(tenant, n, start))
    await Checkpointer(db, writer, signer).sign_heads()


def counted(outcome: str) -> float:
    value = REGISTRY.get_sample_value("factura_audit_chain_verifications_total", {"outcome": outcome})
    return value or 0.0


def gauge(name: str) -> float:
    return REGISTRY.get_sample_value(f"factura_audit_chain_{name}") or 0.0


@asynccontextmanager
async def running(watch: ChainWatch) -> AsyncIterator[None]:
    stopping = asyncio.Event()
    task = asyncio.create_task(watch.run(stopping))
    try:
        yield
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)


def watcher(db: AuditDb, signer: Signer, full_interval_s: float = 3600.0) -> ChainWatch:
    return ChainWatch(db, Keyring(signer.public), interval_s=0.1, full_interval_s=full_interval_s, retry_s=0.1)


async def test_intact_chains_count_ok_and_set_the_timestamp(db: AuditDb, signer: Signer) -> None:
    await sealed_chain(db, signer, "acme", 30)
    await sealed_chain(db, signer, "beta", 5)
    ok_before, broken_before, started = counted("ok"), counted("broken"), time.time()
    async with running(watcher(db, signer)):
        await until(lambda: counted("ok") - ok_before >= 4 and gauge("verified_timestamp_seconds") >= started)
    assert gauge("broken") == 0
    assert counted("broken") == broken_before


async def test_a_tampered_record_flips_the_gauge_and_counter(
    db: AuditDb, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    """Verified intact first (so the walks after it are incremental, from position 20), then new
    records arrive, one of them is altered in MongoDB and the head is signed: the next run reports
    it, and every run after keeps doing so."""
    await sealed_chain(db, signer, "acme", 20)
    await sealed_chain(db, signer, "beta", 3)
    ok_before = counted("ok")
    async with running(watcher(db, signer)):
        await until(lambda: counted("ok") - ok_before >= 2)
        writer = ChainWriter(db.records, db.tombstones)
        await writer.append(calls("acme", 10, start=20))
        forged = await db.records.find_one({"tenant_id": "acme", "seq": 25})
        assert forged is not None
        broken_before = counted("broken")
        with caplog.at_level(logging.ERROR, logger="factura.audit.watch"):
            await db.records.update_one(
                {"_id": forged["_id"]}, {"$set": {"record": forged["record"].replace("INV-24/", "INV-X/")}}
            )
            await Checkpointer(db, writer, signer).sign_heads()
            await until(lambda: gauge("broken") == 1 and counted("broken") > broken_before)
            await until(lambda: counted("broken") >= broken_before + 3)  # later runs still see it
            assert gauge("broken") == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "factura.audit.watch"]
    assert errors, "the break is logged"
    assert {"seq": 25, "record_id": forged["_id"], "problem": "content altered: hash does not match"}.items() <= vars(
        errors[0]
    ).items()
    assert "acme" in errors[0].getMessage()


async def test_a_change_before_the_anchor_is_found_by_the_full_walk(db: AuditDb, signer: Signer) -> None:
    await sealed_chain(db, signer, "acme", 20)
    watch = watcher(db, signer, full_interval_s=0.5)
    first = await watch.verify("acme")
    assert first.ok and first.from_seq == 1
    await db.records.update_one({"tenant_id": "acme", "seq": 3}, {"$set": {"outcome": "delivered"}})
    broken_before = counted("broken")
    async with running(watch):
        await until(lambda: counted("broken") > broken_before and gauge("broken") == 1)


async def test_incremental_walk_starts_after_the_anchor_and_falls_back_when_it_moved(
    db: AuditDb, signer: Signer
) -> None:
    await sealed_chain(db, signer, "acme", 10)
    full = await verify_chain(db, "acme", signer.public)
    anchor = Anchor(full.last_checkpoint_seq, full.last_checkpoint_hash)
    assert full.ok and anchor.seq == 10
    await sealed_chain(db, signer, "acme", 5, start=10)
    step = await verify_chain(db, "acme", signer.public, since=anchor)
    assert step.ok, step.first_break
    assert (step.from_seq, step.records, step.head_seq, step.last_checkpoint_seq) == (11, 5, 15, 15)
    await db.records.update_one({"tenant_id": "acme", "seq": 10}, {"$set": {"outcome": "delivered"}})
    fallback = await verify_chain(db, "acme", signer.public, since=anchor)
    assert fallback.from_seq == 1 and not fallback.ok
    assert fallback.first_break is not None and fallback.first_break.seq == 10


async def test_an_incremental_walk_catches_a_truncated_tail(db: AuditDb, signer: Signer) -> None:
    await sealed_chain(db, signer, "acme", 10)
    watch = watcher(db, signer)
    assert (await watch.verify("acme")).ok
    await sealed_chain(db, signer, "acme", 5, start=10)
    await db.records.delete_many({"tenant_id": "acme", "seq": {"$gte": 13}})
    result = await watch.verify("acme")
    assert result.from_seq == 11 and not result.ok
    assert result.first_break is not None and "signed checkpoint covers 15" in result.first_break.problem


class FakeLease:
    """Granted or refused for good; counts how often it was asked for and kept."""

    def __init__(self, granted: bool) -> None:
        self.granted, self.asked, self.kept = granted, 0, 0

    async def acquire(self) -> bool:
        self.asked += 1
        return self.granted

    async def keep(self) -> bool:
        """Called before each tenant's walk."""
        self.kept += 1
        return self.granted

    async def release(self) -> None:
        return None


async def test_only_the_lease_holder_verifies(db: AuditDb, signer: Signer) -> None:
    await sealed_chain(db, signer, "acme", 5)
    holder, other = FakeLease(granted=True), FakeLease(granted=False)
    keys = Keyring(signer.public)
    first = ChainWatch(db, keys, interval_s=0.05, lease=holder, retry_s=0.05)
    second = ChainWatch(db, keys, interval_s=0.05, lease=other, retry_s=0.05)
    async with running(first), running(second):
        await until(lambda: holder.kept >= 3 and other.asked >= 3)
    assert other.kept == 0
