"""The audit hash chain on the real MongoDB-wire server: stored once, never forked, and every kind
of tampering done directly in MongoDB (modify, delete, insert, reorder, truncate) detected."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from starlette.requests import Request

from factura.audit.__main__ import cli
from factura.audit.bootstrap import access_recorder
from factura.audit.chain import ChainWriter, Head, chained
from factura.audit.checkpoints import Checkpointer, Keyring, Signer
from factura.audit.records import UNIDENTIFIED_TENANT, NewRecord, access
from factura.audit.store import AuditDb
from factura.audit.verify import CachedVerifier, export_chain, verify_chain
from factura.common.apikeys import Principal, Role
from factura.common.mongo import create_client, database
from factura.devstack.config import StackConfig
from tests.conftest import mongo_settings

pytestmark = pytest.mark.integration


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


def calls(tenant: str, n: int, start: int = 0) -> list[NewRecord]:
    """Access records: the smallest real records there are (their ids are ours to choose)."""
    return [
        access(
            record_id=f"access:{tenant}:{i}",
            tenant_id=tenant,
            key_id="k1",
            role="compliance-reader",
            method="GET",
            path=f"/v1/invoices/INV-{i}/timeline",
            query="",
            status=200,
        )
        for i in range(start, start + n)
    ]


async def test_each_record_once_in_one_unforked_chain_with_concurrent_writers(db: AuditDb, signer: Signer) -> None:
    """Two writers (two replicas during a rebalance) append the same and different records of one
    tenant at once: every id stored once, positions 1..n without a gap, and the chain verifies."""
    first, second = ChainWriter(db.records, db.tombstones), ChainWriter(db.records, db.tombstones)
    records = calls("acme", 300)
    results = await asyncio.gather(
        first.append(records[:200]),
        second.append(records[100:]),  # 100 overlap: the same events redelivered to the other replica
        first.append(records[250:]),
    )
    assert sum(r.stored for r in results) == 300
    assert sum(r.duplicates for r in results) == 150
    seqs = sorted([d["seq"] async for d in db.records.find({"tenant_id": "acme"}, {"seq": 1})])
    assert seqs == list(range(1, 301))
    verification = await verify_chain(db, "acme", signer.public)
    assert verification.ok, verification.first_break
    assert (verification.records, verification.head_seq) == (300, 300)
    again = await ChainWriter(db.records, db.tombstones).append(records[:10])  # a restarted process
    assert (again.stored, again.duplicates) == (0, 10)


async def test_chains_are_per_tenant(db: AuditDb, signer: Signer) -> None:
    writer = ChainWriter(db.records, db.tombstones)
    result = await writer.append(calls("acme", 3) + calls("beta", 2))
    assert result.stored == 5
    assert (await verify_chain(db, "beta", signer.public)).head_seq == 2
    assert (await verify_chain(db, "acme", signer.public)).head_seq == 3


async def chain_of(db: AuditDb, n: int = 10) -> list[dict[str, Any]]:
    await ChainWriter(db.records, db.tombstones).append(calls("acme", n))
    return [d async for d in db.records.find({"tenant_id": "acme"}).sort("seq", 1)]


async def broken_at(db: AuditDb, signer: Signer) -> tuple[int, str]:
    result = await verify_chain(db, "acme", signer.public)
    assert not result.ok and result.first_break is not None
    return result.first_break.seq, result.first_break.problem


async def test_modified_content_is_detected(db: AuditDb, signer: Signer) -> None:
    docs = await chain_of(db)
    forged = docs[4]["record"].replace("/v1/invoices/INV-4/", "/v1/invoices/INV-X/")
    await db.records.update_one({"_id": docs[4]["_id"]}, {"$set": {"record": forged}})
    assert await broken_at(db, signer) == (5, "content altered: hash does not match")


async def test_modified_indexed_field_is_detected(db: AuditDb, signer: Signer) -> None:
    docs = await chain_of(db)
    await db.records.update_one({"_id": docs[2]["_id"]}, {"$set": {"outcome": "delivered"}})
    assert await broken_at(db, signer) == (3, "field 'outcome' differs from the hashed record")


async def test_deleted_record_is_detected(db: AuditDb, signer: Signer) -> None:
    docs = await chain_of(db)
    await db.records.delete_one({"_id": docs[6]["_id"]})
    assert await broken_at(db, signer) == (7, "record at position 7 is missing")


async def test_deleted_and_renumbered_records_are_detected(db: AuditDb, signer: Signer) -> None:
    """Deleting a record and shifting the later ones down hides the gap, not the broken link."""
    docs = await chain_of(db, 5)
    await db.records.delete_one({"_id": docs[2]["_id"]})
    for doc in docs[3:]:
        await db.records.update_one({"_id": doc["_id"]}, {"$set": {"seq": doc["seq"] - 1}})
    seq, problem = await broken_at(db, signer)
    assert seq == 3 and "does not link" in problem


async def test_reordered_records_are_detected(db: AuditDb, signer: Signer) -> None:
    docs = await chain_of(db)
    await db.records.update_one({"_id": docs[3]["_id"]}, {"$set": {"seq": 1000}})
    await db.records.update_one({"_id": docs[4]["_id"]}, {"$set": {"seq": 4}})
    await db.records.update_one({"_id": docs[3]["_id"]}, {"$set": {"seq": 5}})
    seq, problem = await broken_at(db, signer)
    assert seq == 4 and "does not link" in problem


async def test_inserted_record_is_detected(db: AuditDb, signer: Signer) -> None:
    """A well-formed record slipped in after the 3rd, its hash computed as the writer would (the
    later ones moved up to make room): the record after it no longer links."""
    docs = await chain_of(db, 6)
    for doc in reversed(docs[3:]):
        await db.records.update_one({"_id": doc["_id"]}, {"$set": {"seq": doc["seq"] + 1}})
    forged = calls("acme", 1, start=99)[0]
    await db.records.insert_one(chained(forged, Head(3, docs[2]["hash"])))
    seq, problem = await broken_at(db, signer)
    assert seq == 5 and "does not link" in problem


async def test_truncated_chain_is_detected_by_a_signed_checkpoint(db: AuditDb, signer: Signer) -> None:
    writer = ChainWriter(db.records, db.tombstones)
    await writer.append(calls("acme", 8))
    assert await Checkpointer(db, writer, signer).sign_heads() == 1
    assert (await verify_chain(db, "acme", signer.public)).unsealed == 0
    await db.records.delete_many({"tenant_id": "acme", "seq": {"$gte": 7}})
    assert await broken_at(db, signer) == (7, "chain ends at 6 but a signed checkpoint covers 8")


async def test_a_rebuilt_chain_fails_the_signed_checkpoint(db: AuditDb, signer: Signer) -> None:
    """Whoever rewrites a record and recomputes every hash after it still cannot match a signature."""
    writer = ChainWriter(db.records, db.tombstones)
    await writer.append(calls("acme", 5))
    await Checkpointer(db, writer, signer).sign_heads()
    await db.records.delete_many({"tenant_id": "acme"})
    await ChainWriter(db.records, db.tombstones).append(calls("acme", 5, start=100))
    seq, problem = await broken_at(db, signer)
    assert seq == 5 and problem == "hash differs from the one a signed checkpoint fixed"


async def test_a_checkpoint_signed_by_another_key_is_refused(db: AuditDb, signer: Signer) -> None:
    writer = ChainWriter(db.records, db.tombstones)
    await writer.append(calls("acme", 3))
    await Checkpointer(db, writer, Signer(Ed25519PrivateKey.generate())).sign_heads()
    seq, problem = await broken_at(db, signer)
    assert seq == 3 and "invalid signature" in problem


async def test_export_verifies_offline_with_hashlib_and_openssl(db: AuditDb, signer: Signer, tmp_path: Path) -> None:
    writer = ChainWriter(db.records, db.tombstones)
    await writer.append(calls("acme", 20))
    await Checkpointer(db, writer, signer).sign_heads()
    export = b"".join([line async for line in export_chain(db, "acme", signer.public)])
    assert verify_offline(export, tmp_path) == 20
    assert run_documented_check(export, tmp_path).startswith("verified 20 positions")
    forged = export.replace(b"INV-7/", b"INV-X/")
    with pytest.raises(AssertionError, match="altered record at 8"):
        run_documented_check(forged, tmp_path)


DOCS = Path(__file__).parents[2] / "docs" / "audit.md"


def run_documented_check(export: bytes, workdir: Path) -> str:
    """Run the Python snippet docs/audit.md gives auditors on ``export``; what it prints."""
    text = DOCS.read_text(encoding="utf-8")
    snippet = text.split("then, in Python:\n\n```python\n", 1)[1].split("```", 1)[0]
    (workdir / "chain.ndjson").write_bytes(export)
    printed: list[str] = []
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        exec(snippet, {"print": lambda *a: printed.append(" ".join(map(str, a)))})
    finally:
        os.chdir(cwd)
    return printed[-1]


def verify_offline(export: bytes, workdir: Path) -> int:
    """What docs/audit.md tells an auditor to do, with nothing but the export file."""
    lines = [json.loads(line) for line in export.splitlines()]
    header, body = lines[0], lines[1:]
    prev, heads = "0" * 64, {}
    for line in (x for x in body if "record" in x):
        assert line["prev"] == prev
        prev = hashlib.sha256((prev + line["record"]).encode()).hexdigest()
        assert prev == line["hash"]
        heads[line["seq"]] = line["hash"]
    checkpoints = [x for x in body if "checkpoint" in x]
    assert len(checkpoints) == 1
    public = load_pem_public_key(header["public_key_pem"].encode())
    assert isinstance(public, Ed25519PublicKey)
    public.verify(bytes.fromhex(checkpoints[0]["signature"]), checkpoints[0]["checkpoint"].encode())
    signed = json.loads(checkpoints[0]["checkpoint"])
    assert heads[signed["seq"]] == signed["hash"]

    (workdir / "pub.pem").write_text(header["public_key_pem"])
    (workdir / "payload").write_text(checkpoints[0]["checkpoint"])
    (workdir / "sig").write_bytes(bytes.fromhex(checkpoints[0]["signature"]))
    verified = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin", "-in", "payload", "-sigfile", "sig"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert "Signature Verified Successfully" in verified.stdout
    record = next(x for x in body if x.get("seq") == 2)
    (workdir / "link").write_text(record["prev"] + record["record"])
    digest = subprocess.run(
        ["openssl", "dgst", "-sha256", "-r", "link"], cwd=workdir, capture_output=True, text=True, check=True
    )
    assert digest.stdout.split()[0] == record["hash"]
    return len(heads)


async def test_cli_verify_and_export(cfg: StackConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m factura.audit verify` exits 0 on a sound chain and 1 naming the broken position."""
    name = f"cli{uuid.uuid4().hex[:6]}"
    key = tmp_path / "signing.pem"
    assert cli(["keygen", "--out", str(key)]) == 0
    monkeypatch.setenv("FACTURA_AUDIT_MONGO__URL", cfg.mongo_url)
    monkeypatch.setenv("FACTURA_AUDIT_MONGO__DATABASE", name)
    monkeypatch.setenv("FACTURA_AUDIT_SIGNING_KEY_FILE", str(key))
    client = create_client(mongo_settings(cfg))
    try:
        db = AuditDb.of(client[name])
        await db.ensure_indexes()
        await ChainWriter(db.records, db.tombstones).append(calls("acme", 4))
        assert await asyncio.to_thread(cli, ["verify", "--tenant", "acme"]) == 0
        out = tmp_path / "chain.ndjson"
        assert await asyncio.to_thread(cli, ["export", "--tenant", "acme", "--out", str(out)]) == 0
        assert len(out.read_bytes().splitlines()) == 1 + 4  # header + positions (nothing signed yet)
        await db.records.delete_one({"tenant_id": "acme", "seq": 2})
        assert await asyncio.to_thread(cli, ["verify", "--tenant", "acme"]) == 1
    finally:
        await client.close()


def request(query: str) -> Request:
    return Request(
        {"type": "http", "method": "GET", "path": "/v1/records", "query_string": query.encode(), "headers": []}
    )


async def test_calls_are_chained_in_the_tenant_a_key_may_read_and_anonymous_ones_not_at_all(db: AuditDb) -> None:
    writer = ChainWriter(db.records, db.tombstones)
    on_access = access_recorder(writer)
    reader = Principal(key_id="k-acme", role=Role.COMPLIANCE_READER, tenants=("acme",), label="ana")
    await on_access(reader, request("tenant_id=acme&status=failed"), 200)
    await on_access(reader, request("tenant_id=beta"), 403)  # refused: must not write into beta's chain
    await on_access(
        Principal(key_id="k-ing", role=Role.INGEST, tenants=("acme",), label="erp"), request("tenant_id=acme"), 403
    )
    await on_access(None, request("tenant_id=acme"), 401)  # no key: named no one, not chained
    chains = {
        t: [json.loads(json.loads(d["record"])["raw"]) async for d in db.records.find({"tenant_id": t})]
        for t in ("acme", "beta", UNIDENTIFIED_TENANT)
    }
    assert [(r["key_id"], r["status"], r["query"]) for r in chains["acme"]] == [
        ("k-acme", 200, "tenant_id=acme&status=failed")
    ]
    assert chains["beta"] == []
    assert [(r["key_id"], r["status"]) for r in chains[UNIDENTIFIED_TENANT]] == [("k-acme", 403), ("k-ing", 403)]


async def test_a_rotated_signing_key_keeps_what_the_old_one_signed_valid(db: AuditDb) -> None:
    old, new = Signer(Ed25519PrivateKey.generate()), Signer(Ed25519PrivateKey.generate())
    writer = ChainWriter(db.records, db.tombstones)
    await writer.append(calls("acme", 3))
    await Checkpointer(db, writer, old).sign_heads()
    await writer.append(calls("acme", 2, start=3))
    await Checkpointer(db, writer, new).sign_heads()
    rotated = await verify_chain(db, "acme", Keyring(new.public, retired=[old.public]))
    assert rotated.ok and rotated.checkpoints == 2, rotated.first_break
    forgotten = await verify_chain(db, "acme", new.public)  # the old key was not kept: its checkpoint is unknown
    assert not forgotten.ok and forgotten.first_break is not None and forgotten.first_break.seq == 3


async def test_verification_is_shared_for_a_while_and_then_walked_again(db: AuditDb, signer: Signer) -> None:
    writer = ChainWriter(db.records, db.tombstones)
    await writer.append(calls("acme", 3))
    cached = CachedVerifier(db, Keyring(signer.public), ttl_s=3600)
    first, second = await asyncio.gather(cached("acme"), cached("acme"))
    assert first is second and first.records == 3
    await writer.append(calls("acme", 1, start=3))
    assert (await cached("acme")) is first  # within the TTL: the same result, its verified_at says when
    assert (await CachedVerifier(db, Keyring(signer.public), ttl_s=0)("acme")).records == 4
