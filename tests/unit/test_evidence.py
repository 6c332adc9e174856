"""The evidence bundle's offline verifier (``verify_bundle.py``) on proofs built with the chain's
own code, each way of tampering it must catch, and the streamed zip."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from factura.audit.chain import Head, chained, link
from factura.audit.checkpoints import Signer, public_pem
from factura.audit.evidence import Bundle, timestamp_form
from factura.audit.records import FIELDS, GENESIS, NewRecord
from factura.audit.verify_bundle import _openssl_ed25519, normalise, verify

TENANT = "acme"
INVOICE = "INV-1"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SIGNER = Signer(Ed25519PrivateKey.generate())


def record(n: int, invoice: str, type: str, **data: Any) -> NewRecord:
    occurred = T0 + timedelta(minutes=n)
    fields = {name: None for name in FIELDS} | {
        "kind": "event",
        "type": type,
        "invoice_id": invoice,
        "occurred_at": occurred,
        "recorded_at": occurred,
        "day": occurred.date().isoformat(),
        "class": "fiscal",
        "source": f"t/0/{n}",
    }
    envelope = {"event_id": f"e{n}", "type": type, "tenant_id": TENANT, "invoice_id": invoice, "data": data}
    return NewRecord(id=f"e{n}", tenant_id=TENANT, fields=fields, raw=json.dumps(envelope))


def chain() -> list[dict[str, Any]]:
    news = [
        record(1, INVOICE, "invoice.created"),
        record(2, "INV-2", "invoice.created"),
        record(3, INVOICE, "delivery.failed", channel="email", reason="hard_bounce", code=550, evidence="DSN ..."),
        record(4, "INV-2", "delivery.succeeded", channel="sms"),
        record(5, INVOICE, "delivery.succeeded", channel="sms", provider_message_id="SM1"),
    ]
    docs, head = [], Head(0, GENESIS)
    for new in news:
        doc = chained(new, head)
        docs.append(doc)
        head = Head(doc["seq"], doc["hash"])
    return docs


def position(doc: dict[str, Any]) -> dict[str, Any]:
    return {"seq": doc["seq"], "id": doc["_id"], "prev": doc["prev"], "hash": doc["hash"], "record": doc["record"]}


def proof_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cp = SIGNER.checkpoint(TENANT, Head(docs[-1]["seq"], docs[-1]["hash"]), "head")
    return {
        "tenant_id": TENANT,
        "invoice_id": INVOICE,
        "invoice_records": [1, 3, 5],
        "unproven": [],
        "ranges": [[1, 5]],
        "positions": [position(d) for d in docs],
        "checkpoints": [
            {"id": cp["_id"], "kind": "head", "seq": cp["seq"], "key_id": cp["key_id"]}
            | {"payload": cp["payload"], "signature": cp["signature"]}
        ],
        "public_keys": {SIGNER.key_id: public_pem(SIGNER.public)},
    }


def write(root: Path, proof: dict[str, Any], events: list[dict[str, Any]] | None = None) -> None:
    """A bundle directory (without documents) and its manifest."""
    (root / "chain").mkdir(exist_ok=True)
    if events is None:
        events = [normalise(json.loads(p["record"])) for p in proof["positions"] if p["seq"] in (1, 3, 5)]
    (root / "chain" / "proof.json").write_text(json.dumps(proof))
    (root / "events.json").write_text(json.dumps(events))
    files = {
        name: {"sha256": hashlib.sha256((root / name).read_bytes()).hexdigest()}
        for name in ("chain/proof.json", "events.json")
    }
    (root / "manifest.json").write_text(json.dumps({"tenant_id": TENANT, "files": files, "documents": []}))


def run(root: Path) -> tuple[bool, str]:
    lines: list[str] = []
    return verify(root, out=lines.append), "\n".join(lines)


def test_a_sound_bundle_verifies(tmp_path: Path) -> None:
    write(tmp_path, proof_of(chain()))
    ok, out = run(tmp_path)
    assert ok, out
    assert out.endswith("RESULT: VERIFIED"), out


def _rewrite(docs: list[dict[str, Any]], seq: int, text: str) -> None:
    """Alter the record at ``seq`` and re-hash it and every position after it (a rebuilt chain)."""
    prev = docs[seq - 2]["hash"] if seq > 1 else GENESIS
    for doc in docs[seq - 1 :]:
        if doc["seq"] == seq:
            doc["record"] = doc["record"].replace("hard_bounce", text)
        doc["prev"], doc["hash"] = prev, link(prev, doc["record"])
        prev = doc["hash"]


def _altered(proof: dict[str, Any]) -> None:
    proof["positions"][2]["record"] = proof["positions"][2]["record"].replace("550", "250")


def _rehashed(proof: dict[str, Any]) -> None:
    pos = proof["positions"][2]
    pos["record"] = pos["record"].replace("550", "250")
    pos["hash"] = link(pos["prev"], pos["record"])


def _rebuilt(proof: dict[str, Any]) -> None:
    docs = chain()
    _rewrite(docs, 3, "delivered")
    proof["positions"] = [position(d) for d in docs]


def _forged_signature(proof: dict[str, Any]) -> None:
    cp = proof["checkpoints"][0]
    cp["signature"] = Signer(Ed25519PrivateKey.generate()).checkpoint(TENANT, Head(5, "0" * 64), "head")["signature"]


def _gap(proof: dict[str, Any]) -> None:
    del proof["positions"][3]


def _hidden(proof: dict[str, Any]) -> None:
    proof["invoice_records"] = [1, 5]


@pytest.mark.parametrize(
    ("tamper", "says"),
    [
        (_altered, "content altered"),
        (_rehashed, "prev is not the hash of the position before"),
        (_rebuilt, "hash differs from the one a signed checkpoint fixed"),
        (_forged_signature, "signature does not verify"),
        (_gap, "missing from the proof"),
        (_hidden, "in the chain but not in the bundle"),
    ],
)
def test_tampered_proofs_fail(tmp_path: Path, tamper: Callable[[dict[str, Any]], None], says: str) -> None:
    proof = proof_of(chain())
    tamper(proof)
    write(tmp_path, proof, events=[] if tamper is _hidden else None)
    ok, out = run(tmp_path)
    assert not ok
    assert says in out, out
    assert out.endswith("RESULT: FAILED")


def test_an_edited_file_fails_the_manifest_and_events_must_match_the_records(tmp_path: Path) -> None:
    write(tmp_path, proof_of(chain()))
    events = json.loads((tmp_path / "events.json").read_text())
    events[1]["code"] = 250
    (tmp_path / "events.json").write_text(json.dumps(events))
    ok, out = run(tmp_path)
    assert not ok
    assert "events.json: SHA-256 differs from the manifest" in out
    assert "events.json: entries at positions [3] differ from the proven records" in out


def test_a_position_removed_by_retention_is_fixed_by_its_signed_digest(tmp_path: Path) -> None:
    docs = chain()
    proof = proof_of(docs)
    removed = docs[3]
    members = [[removed["seq"], removed["hash"]]]
    digest = hashlib.sha256(f"{removed['seq']}:{removed['hash']}".encode()).hexdigest()
    cp = SIGNER.checkpoint(TENANT, Head(removed["seq"], removed["hash"]), "retention", digest=digest)
    proof["positions"][3] = {"seq": 4, "id": "e4", "prev": removed["prev"], "hash": removed["hash"], "removed": True}
    retention = {"id": cp["_id"], "kind": "retention", "seq": 4, "key_id": cp["key_id"], "members": members}
    proof["checkpoints"].append(retention | {"payload": cp["payload"], "signature": cp["signature"]})
    write(tmp_path, proof)
    ok, out = run(tmp_path)
    assert ok, out

    proof["checkpoints"][-1]["members"] = [[4, "f" * 64]]
    write(tmp_path, proof)
    ok, out = run(tmp_path)
    assert not ok
    assert "removed positions differ from the signed digest" in out


async def test_the_zip_is_streamed_in_chunks_and_reads_back() -> None:
    pdf = os.urandom(700_000)
    bundle = Bundle(TENANT, "INV/1", T0, [("README.md", b"# hi\n"), ("documents/1/invoice.pdf", pdf)])
    chunks = [chunk async for chunk in bundle.chunks()]
    assert len([c for c in chunks if c]) > 2
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as archive:
        assert archive.testzip() is None
        folder = "evidence-acme-INV_1/"
        assert archive.read(folder + "documents/1/invoice.pdf") == pdf
        assert archive.read(folder + "README.md") == b"# hi\n"


def test_timestamp_form_tells_a_response_from_a_bare_token() -> None:
    assert timestamp_form(bytes.fromhex("3082010a3003020100") + b"...") == "response"
    assert timestamp_form(bytes.fromhex("308201000609") + b"...") == "token"
    assert timestamp_form(b"garbage") == "unknown"


def test_without_cryptography_the_signature_is_checked_with_openssl() -> None:
    cp = SIGNER.checkpoint(TENANT, Head(1, "0" * 64), "head")
    pem, payload, signature = public_pem(SIGNER.public), cp["payload"].encode(), bytes.fromhex(cp["signature"])
    assert _openssl_ed25519(pem, payload, signature)
    assert not _openssl_ed25519(pem, payload + b" ", signature)
