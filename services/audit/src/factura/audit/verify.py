"""Verify a tenant's chain, and export what lets an auditor verify it without us.

A walk in ``seq`` order checks, for every position: a record (or a signed retention tombstone)
is there, exactly once; its ``prev`` is the hash of the position before; its hash is
``sha256(prev ‖ record)``; its indexed fields are the ones inside the hashed record. Then every
checkpoint's Ed25519 signature is checked against the key it names (current or retired), and the
hash it signed against the chain, so a chain rebuilt after tampering, or cut short, fails too.
The first problem found is named with its position and record id.

An incremental walk (``since``, an :class:`Anchor`) starts after a signed checkpoint an earlier
walk found the chain to match, so a periodic check costs the records written since, not the
whole chain (:mod:`factura.audit.watch`). It re-checks the anchor's own record and walks the full
chain instead when that record no longer matches or retention removed positions after it (their
signed digests cover whole batches, which only the full walk reads). What it cannot see is a
change before the anchor: that is what the periodic full walk is for.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pymongo import ASCENDING

from factura.audit.chain import link
from factura.audit.checkpoints import Keyring, key_id, public_pem
from factura.audit.records import FIELDS, GENESIS, canonical, to_ms
from factura.audit.store import AuditDb
from factura.common.envelope import utcnow
from factura.common.mongo import Document, exact

BATCH = 2000


@dataclass(frozen=True)
class Anchor:
    """A position whose hash a signed checkpoint fixed and a walk found the chain to match."""

    seq: int
    hash: str


@dataclass(frozen=True)
class Break:
    seq: int
    record_id: str | None
    problem: str


@dataclass
class Verification:
    tenant_id: str
    ok: bool = True
    records: int = 0
    tombstones: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    checkpoints: int = 0
    last_checkpoint_seq: int = 0
    last_checkpoint_hash: str = GENESIS
    #: First position walked: 1, or the one after the anchor of an incremental walk.
    from_seq: int = 1
    #: Records after the last signed checkpoint: linked, but not yet sealed by a signature.
    unsealed: int = 0
    first_break: Break | None = None
    key_id: str = ""
    verified_at: datetime = field(default_factory=utcnow)

    def broken(self, seq: int, record_id: str | None, problem: str) -> None:
        if self.first_break is None:
            self.first_break = Break(seq, record_id, problem)
        self.ok = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class CachedVerifier:
    """Verification walks a tenant's whole chain, so the API and the page share one result per
    tenant for ``ttl_s`` (its ``verified_at`` says how old it is), and callers asking at the same
    time share one walk: a busy compliance page cannot keep the service re-hashing millions of
    records."""

    def __init__(self, db: AuditDb, keys: Keyring, ttl_s: float = 60.0) -> None:
        self._db, self._keys, self._ttl_s = db, keys, ttl_s
        self._done: dict[str, tuple[float, Verification]] = {}
        self._running: dict[str, asyncio.Task[Verification]] = {}

    async def __call__(self, tenant: str) -> Verification:
        done = self._done.get(tenant)
        if done is not None and time.monotonic() - done[0] < self._ttl_s:
            return done[1]
        task = self._running.get(tenant)
        if task is None:
            task = asyncio.create_task(verify_chain(self._db, tenant, self._keys), name=f"verify-{tenant}")
            self._running[tenant] = task
            task.add_done_callback(lambda _: self._running.pop(tenant, None))
        result = await asyncio.shield(task)
        self._done[tenant] = (time.monotonic(), result)
        return result


async def verify_chain(
    db: AuditDb, tenant: str, keys: Keyring | Ed25519PublicKey, since: Anchor | None = None
) -> Verification:
    """Walk ``tenant``'s chain from the genesis, or from ``since`` when that is sound (module docstring)."""
    ring = Keyring.of(keys)
    if since is not None and not await _resumable(db, tenant, since):
        since = None
    start = since or Anchor(0, GENESIS)
    result = Verification(
        tenant_id=tenant,
        key_id=key_id(ring.current),
        last_checkpoint_seq=start.seq,
        last_checkpoint_hash=start.hash,
        from_seq=start.seq + 1,
    )
    retained = await _retained(db, tenant, ring, result) if since is None else {}
    checkpoints = await _head_checkpoints(db, tenant, ring, result, after=start.seq)
    expected, prev = start.seq + 1, start.hash
    query = exact({"tenant_id": tenant} | ({"seq": {"$gt": start.seq}} if since else {}))
    async for doc in db.records.find(query).sort("seq", ASCENDING).batch_size(BATCH):
        seq = doc.get("seq")
        if not isinstance(seq, int) or seq < expected:
            result.broken(expected - 1, str(doc.get("_id")), f"a second record claims position {seq}")
            break
        while expected < seq:  # a gap: only a signed tombstone may fill it
            tomb = retained.get(expected)
            if tomb is None:
                result.broken(expected, None, f"record at position {expected} is missing")
                break
            if tomb.get("prev", prev) != prev:
                result.broken(expected, tomb.get("record_id"), "retained position does not link to the one before")
                break
            prev, expected = tomb["hash"], expected + 1
            result.tombstones += 1
        if not result.ok:
            break
        problem = check_record(doc, prev, retained.get(seq))
        if problem is not None:
            result.broken(seq, str(doc.get("_id")), problem)
            break
        signed = checkpoints.pop(seq, None)
        if signed is not None and signed != doc["hash"]:
            result.broken(seq, str(doc["_id"]), "hash differs from the one a signed checkpoint fixed")
            break
        prev, expected = doc["hash"], seq + 1
        result.records += 1
    if result.ok:
        while expected in retained:  # removed records at the very end (the retention job never does this)
            prev, expected = retained[expected]["hash"], expected + 1
            result.tombstones += 1
        result.head_seq, result.head_hash = expected - 1, prev
        beyond = [s for s in checkpoints if s > result.head_seq]
        if beyond:
            end = result.head_seq
            result.broken(end + 1, None, f"chain ends at {end} but a signed checkpoint covers {max(beyond)}")
        result.unsealed = result.head_seq - result.last_checkpoint_seq
    return result


def check_record(doc: Document, prev: str, tomb: Document | None) -> str | None:  # noqa: PLR0911 - one return per problem
    if doc.get("prev") != prev:
        return "does not link to the record before it (removed, inserted or reordered)"
    record = doc.get("record")
    if not isinstance(record, str) or link(prev, record) != doc.get("hash"):
        return "content altered: hash does not match"
    if tomb is not None and tomb.get("hash") != doc["hash"]:
        return "differs from the hash its retention tombstone kept"
    try:
        body = json.loads(record)
    except ValueError:
        return "hashed record is not JSON"
    if not isinstance(body, dict):
        return "hashed record is not a JSON object"
    if body.get("seq") != doc["seq"] or body.get("id") != doc["_id"] or body.get("tenant_id") != doc["tenant_id"]:
        return "position, id or tenant differ from the hashed record"
    for name in FIELDS:
        if _plain(doc.get(name)) != body.get(name):
            return f"field {name!r} differs from the hashed record"
    return None


def _plain(value: Any) -> Any:
    """A stored value as the hashed JSON has it (datetimes as ISO text in UTC, to the millisecond)."""
    if hasattr(value, "isoformat") and hasattr(value, "tzinfo"):
        return json.loads(canonical({"v": to_ms(value)}))["v"]
    return value


async def _resumable(db: AuditDb, tenant: str, since: Anchor) -> bool:
    """Whether an incremental walk from ``since`` is sound: its record is still the one that was
    signed, and no position after it was removed by retention."""
    doc = await db.records.find_one(exact({"tenant_id": tenant, "seq": since.seq}))
    if doc is None or doc.get("hash") != since.hash or check_record(doc, str(doc.get("prev")), None):
        return False
    removed = await db.tombstones.find_one(exact({"tenant_id": tenant, "seq": {"$gt": since.seq}}), {"_id": 1})
    return removed is None


async def _head_checkpoints(
    db: AuditDb, tenant: str, ring: Keyring, result: Verification, after: int = 0
) -> dict[int, str]:
    """seq → signed hash of every valid head checkpoint after position ``after``; an invalid
    signature breaks verification."""
    signed: dict[int, str] = {}
    query = exact({"tenant_id": tenant, "kind": "head"} | ({"seq": {"$gt": after}} if after else {}))
    async for cp in db.checkpoints.find(query).sort("seq", ASCENDING):
        if not ring.valid(cp):
            result.broken(int(cp.get("seq", 0)), None, f"checkpoint {cp.get('_id')} has an invalid signature")
            continue
        payload = json.loads(cp["payload"])
        if payload.get("tenant_id") != tenant:
            result.broken(int(cp.get("seq", 0)), None, f"checkpoint {cp.get('_id')} was signed for another tenant")
            continue
        signed[payload["seq"]] = payload["hash"]
        result.checkpoints += 1
        if payload["seq"] >= result.last_checkpoint_seq:
            result.last_checkpoint_seq, result.last_checkpoint_hash = payload["seq"], payload["hash"]
    return signed


async def _retained(db: AuditDb, tenant: str, ring: Keyring, result: Verification) -> dict[int, Document]:
    """seq → tombstone, for tombstones a valid retention checkpoint signed (others are ignored)."""
    tombs: dict[str, list[Document]] = {}
    async for tomb in db.tombstones.find(exact({"tenant_id": tenant})).sort("seq", ASCENDING):
        tombs.setdefault(str(tomb.get("checkpoint")), []).append(tomb)
    retained: dict[int, Document] = {}
    async for cp in db.checkpoints.find(exact({"tenant_id": tenant, "kind": "retention"})):
        if not ring.valid(cp):
            result.broken(int(cp.get("seq", 0)), None, f"retention checkpoint {cp.get('_id')} has an invalid signature")
            continue
        payload = json.loads(cp["payload"])
        members = tombs.get(str(cp["_id"]), [])
        if payload.get("tenant_id") != tenant or payload.get("digest") != removed_digest(members):
            result.broken(int(cp.get("seq", 0)), None, f"tombstones of {cp['_id']} differ from what was signed")
            continue
        retained.update({t["seq"]: t for t in members})
    return retained


def removed_digest(tombstones: list[Document]) -> str:
    """What a retention checkpoint signs: sha256 over ``seq:hash`` lines of the removed positions."""
    lines = "\n".join(f"{t['seq']}:{t['hash']}" for t in sorted(tombstones, key=lambda t: t["seq"]))
    return hashlib.sha256(lines.encode()).hexdigest()


async def export_chain(
    db: AuditDb, tenant: str, keys: Keyring | Ed25519PublicKey, from_seq: int = 1, to_seq: int | None = None
) -> AsyncIterator[bytes]:
    """NDJSON: a header with the public key, then every position (record or tombstone), then the
    checkpoints. Enough to verify offline with a few lines of Python or openssl (docs/audit.md)."""
    ring = Keyring.of(keys)
    header = {
        "format": "factura-audit-chain/1",
        "tenant_id": tenant,
        "hash": "sha256(prev_hex_ascii || record_utf8)",
        "signature": "ed25519(payload_utf8)",
        "key_id": key_id(ring.current),
        "public_key_pem": public_pem(ring.current),
        "public_keys": {kid: public_pem(key) for kid, key in ring.keys.items()},
        "exported_at": utcnow(),
        "from_seq": from_seq,
        "to_seq": to_seq,
    }
    yield canonical(header).encode() + b"\n"
    bounds: dict[str, int] = {"$gte": from_seq} | ({"$lte": to_seq} if to_seq is not None else {})
    query = exact({"tenant_id": tenant, "seq": bounds})
    tombs = aiter(db.tombstones.find(query).sort("seq", ASCENDING))
    tomb = await anext(tombs, None)
    async for doc in db.records.find(query).sort("seq", ASCENDING).batch_size(BATCH):
        while tomb is not None and tomb["seq"] <= doc["seq"]:  # positions in order, removed ones included
            if tomb["seq"] < doc["seq"]:  # (equal: removal interrupted before the delete; the record stands)
                yield _removed_line(tomb)
            tomb = await anext(tombs, None)
        line = {"seq": doc["seq"], "id": doc["_id"], "prev": doc["prev"], "hash": doc["hash"], "record": doc["record"]}
        yield canonical(line).encode() + b"\n"
    while tomb is not None:
        yield _removed_line(tomb)
        tomb = await anext(tombs, None)
    async for cp in db.checkpoints.find(exact({"tenant_id": tenant})).sort("seq", ASCENDING):
        line = {"checkpoint": cp["payload"], "signature": cp["signature"], "id": cp["_id"]}
        yield canonical(line).encode() + b"\n"


def _removed_line(tomb: Document) -> bytes:
    line = {
        "seq": tomb["seq"],
        "id": tomb.get("record_id"),
        "hash": tomb["hash"],
        "removed": True,
        "checkpoint": tomb.get("checkpoint"),
    }
    return canonical(line).encode() + b"\n"
