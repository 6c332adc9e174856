"""``GET /v1/invoices/{id}/evidence`` on the real MongoDB-wire server and S3, verified using only
the bundle: its own ``verify_bundle.py``, ``sha256sum -c``, ``openssl pkeyutl`` and ``openssl ts``.

Records are chained by the real writer and sealed by the real checkpointer; the PDF and its RFC
3161 token (pyHanko's DummyTimeStamper under the devstack's test PKI) are stored in S3 as the
renderer stores them.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from factura.audit.api import router
from factura.audit.bootstrap import access_recorder
from factura.audit.chain import ChainWriter
from factura.audit.checkpoints import Checkpointer, Keyring, Signer
from factura.audit.evidence import EvidenceBundles
from factura.audit.records import FIELDS, NewRecord
from factura.audit.store import AuditDb
from factura.audit.verify import export_chain, verify_chain
from factura.common.apikeys import COLLECTION, ApiKeyStore, Role, authenticator
from factura.common.http import Health, create_app
from factura.common.mongo import create_client, database
from factura.common.storage import DocumentStore
from factura.devstack import tsa
from factura.devstack.config import StackConfig
from factura.devstack.stack import Stack
from factura.devstack.tsa import TestPki
from tests.conftest import mongo_settings

pytestmark = pytest.mark.integration

TENANT = "acme-ev"
OTHER = "other-ev"
INVOICE = "F-2026/0042"
GONE = "F-2026/0043"  # its document expired from S3 and it was never timestamped
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
DSN = "Reporting-MTA: dns; mx.example.test\r\nFinal-Recipient: rfc822; ana@example.test\r\nStatus: 5.1.1\r\n"


@dataclass
class Setup:
    client: httpx.AsyncClient
    db: AuditDb
    tsa_root: Path
    pdf: bytes
    headers: dict[str, dict[str, str]]


def event(n: int, tenant: str, invoice: str, type: str, data: dict[str, Any], **fields: Any) -> NewRecord:
    occurred = T0 + timedelta(minutes=n)
    event_id = str(uuid.uuid4())
    envelope = {
        "event_id": event_id,
        "type": type,
        "schema_version": 2,
        "occurred_at": occurred.isoformat(),
        "tenant_id": tenant,
        "invoice_id": invoice,
        "correlation_id": f"corr-{invoice}",
        "causation_id": None,
        "producer": "test",
        "data": data,
    }
    indexed = {name: None for name in FIELDS} | {
        "kind": "event",
        "type": type,
        "schema_version": 2,
        "invoice_id": invoice,
        "customer_id": "C1",
        "occurred_at": occurred,
        "recorded_at": occurred,
        "day": occurred.date().isoformat(),
        "class": "fiscal",
        "source": f"t/0/{n}",
    }
    return NewRecord(id=event_id, tenant_id=tenant, fields=indexed | fields, raw=json.dumps(envelope))


def history(document: dict[str, Any], gone: dict[str, Any]) -> list[NewRecord]:
    notice = {"purpose": "invoice", "document": document}
    failed = {
        "channel": "email",
        "reason": "hard_bounce",
        "detail": "550 5.1.1 <ana@example.test>: user unknown",
        "code": 550,
        "enhanced_code": "5.1.1",
        "recipient": "ana@example.test",
        "notice": notice,
        "next_channel": "sms",
        "evidence": DSN,
    }
    sent = {"channel": "sms", "recipient": "+34600000001", "provider_message_id": "SM-1", "notice": notice}
    return [
        event(0, TENANT, INVOICE, "invoice.created", {}, outcome="pending"),
        event(1, TENANT, INVOICE, "invoice.rendered", {"document": document}, outcome="pending", purpose="invoice"),
        event(2, TENANT, "F-OTHER", "invoice.created", {}, outcome="pending"),
        event(3, TENANT, INVOICE, "delivery.failed", failed, outcome="failed", channel="email", reason="hard_bounce"),
        event(4, OTHER, INVOICE + "-B", "invoice.created", {}, outcome="pending"),
        event(5, TENANT, INVOICE, "delivery.succeeded", sent, outcome="delivered", channel="sms"),
        event(6, TENANT, GONE, "invoice.rendered", {"document": gone}, outcome="pending", purpose="invoice"),
        event(7, TENANT, INVOICE, "document.downloaded", {"document": document, "link_id": "L1", "channel": "sms"}),
    ]


def run(command: list[str], cwd: Path, *, text: bool = True) -> subprocess.CompletedProcess[Any]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=text, check=False, timeout=60)


def openssl_query(path: Path) -> bytes:
    done = run(["openssl", "ts", "-query", "-data", path.name, "-sha256", "-cert"], path.parent, text=False)
    assert done.returncode == 0, done.stderr
    return bytes(done.stdout)


async def timestamp_reply(pdf: bytes, pki: TestPki, tmp: Path) -> bytes:
    """A TimeStampResp over ``pdf`` from the devstack's TSA (in-process), asked as ``openssl ts -query`` asks."""
    (tmp / "invoice.pdf").write_bytes(pdf)
    query = openssl_query(tmp / "invoice.pdf")
    app = tsa.create_app(pki)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tsa") as client:
        reply = await client.post("/tsa", content=query, headers={"Content-Type": tsa.QUERY_TYPE})
    assert reply.status_code == 200
    return reply.content


async def stored_document(store: DocumentStore, pdf: bytes, reply: bytes) -> dict[str, Any]:
    """The PDF and its detached TimeStampResp in S3, and the DocumentRef the renderer would publish."""
    sha = hashlib.sha256(pdf).hexdigest()
    key = f"{TENANT}/2026/03/01/F-2026_0042/{uuid.uuid4().hex[:16]}/F-2026_0042.pdf"
    await store.put(key, pdf, content_type="application/pdf", sha256=sha, metadata={})
    token_sha = hashlib.sha256(reply).hexdigest()
    await store.put(key + ".tsr", reply, content_type=tsa.REPLY_TYPE, sha256=token_sha, metadata={})
    return {
        "bucket": store.bucket,
        "key": key,
        "sha256": sha,
        "size_bytes": len(pdf),
        "content_type": "application/pdf",
        "filename": "F-2026_0042.pdf",
        "timestamp_key": key + ".tsr",
    }


@pytest.fixture(scope="module")
async def setup(
    cfg: StackConfig, store: DocumentStore, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Setup]:
    settings = mongo_settings(cfg)
    mongo = create_client(settings)
    db = AuditDb.of(database(mongo, settings), prefix=f"e{uuid.uuid4().hex[:6]}_")
    await db.ensure_indexes()
    writer = ChainWriter(db.records, db.tombstones)
    signer = Signer(Ed25519PrivateKey.generate())
    pki = tsa.ensure_pki(tmp_path_factory.mktemp("pki"))
    pdf = b"%PDF-1.7\n" + os.urandom(300_000) + b"\n%%EOF\n"
    reply = await timestamp_reply(pdf, pki, tmp_path_factory.mktemp("tsq"))
    document = await stored_document(store, pdf, reply)
    gone = document | {"key": f"{TENANT}/expired/F-2026_0043.pdf", "timestamp_key": None}
    await writer.append(history(document, gone))
    await Checkpointer(db, writer, signer).sign_heads()
    api_keys = ApiKeyStore(database(mongo, settings)[f"{COLLECTION}_{uuid.uuid4().hex[:6]}"])
    headers: dict[str, dict[str, str]] = {}
    for who, tenant in (("reader", TENANT), ("other", OTHER)):
        plaintext, _ = await api_keys.create(Role.COMPLIANCE_READER, [tenant], f"{who} key", "test")
        headers[who] = {"Authorization": f"Bearer {plaintext}"}
    routes = router(
        db,
        auth=authenticator(api_keys),
        cursor_key=b"cursor-key-for-tests-only-000000",
        on_access=access_recorder(writer),
        verify=lambda tenant: verify_chain(db, tenant, signer.public),
        export_chain=lambda tenant, first, last: export_chain(db, tenant, signer.public, first, last),
        evidence=EvidenceBundles(db, Keyring(signer.public), store, fetch_timeout_s=1),
    )
    app = create_app("audit", Health(), [routes])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://audit") as client:
        yield Setup(client, db, pki.root_cert, pdf, headers)
    await mongo.close()


async def fetch(setup: Setup, invoice: str, tmp: Path, who: str = "reader", tenant: str = TENANT) -> Path:
    """The bundle, unzipped into ``tmp``; returns its folder."""
    response = await setup.client.get(
        f"/v1/invoices/{invoice}/evidence", params={"tenant_id": tenant}, headers=setup.headers[who]
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        archive.extractall(tmp)
        (folder,) = {name.split("/", 1)[0] for name in archive.namelist()}
    return tmp / folder


def run_verifier(folder: Path, tsa_root: Path) -> subprocess.CompletedProcess[str]:
    """The bundle's own script, as an auditor runs it."""
    return run([sys.executable, "verify_bundle.py", ".", "--tsa-ca", str(tsa_root)], folder)


def standard_tools(folder: Path, tsa_root: Path) -> None:
    """The README's recipes with standard tools, as written there."""
    assert shutil.which("sha256sum") and shutil.which("openssl")
    sums = run(["sha256sum", "-c", "SHA256SUMS"], folder)
    assert sums.returncode == 0, sums.stdout + sums.stderr
    readme = (folder / "README.md").read_text()
    recipes = [
        line.strip() for line in readme.splitlines() if line.strip().startswith(("openssl pkeyutl", "openssl ts -v"))
    ]
    assert any("pkeyutl" in r for r in recipes) and any("ts -verify" in r for r in recipes), readme
    for recipe in recipes:
        done = run(recipe.split("#")[0].replace("tsa-root.pem", str(tsa_root)).split(), folder)
        assert "Signature Verified Successfully" in done.stdout or "Verification: OK" in done.stdout, done


async def test_the_bundle_verifies_using_only_the_bundle(setup: Setup, tmp_path: Path) -> None:
    folder = await fetch(setup, INVOICE, tmp_path)

    done = run_verifier(folder, setup.tsa_root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "RESULT: VERIFIED" in done.stdout
    assert "WARN" not in done.stdout, done.stdout
    assert "documents/1/invoice.pdf: SHA-256 is the one recorded at position 2" in done.stdout
    assert "RFC 3161 timestamp verifies" in done.stdout
    assert (folder / "documents/1/invoice.pdf").read_bytes() == setup.pdf
    standard_tools(folder, setup.tsa_root)

    events = json.loads((folder / "events.json").read_text())
    assert [e["type"] for e in events] == [
        "invoice.created",
        "invoice.rendered",
        "delivery.failed",
        "delivery.succeeded",
        "document.downloaded",
    ]
    assert events[2]["evidence"] == DSN and events[2]["enhanced_code"] == "5.1.1"
    assert events[3]["provider_message_id"] == "SM-1"
    assert all(INVOICE + "-B" not in path.read_text() for path in folder.rglob("*.json"))  # no other tenant

    # the access itself is an audit record of the tenant
    access = await setup.db.records.find_one({"tenant_id": TENANT, "kind": "access"}, sort=[("seq", -1)])
    assert access is not None and "/evidence" in json.loads(access["record"])["raw"]


async def test_a_document_gone_from_s3_is_its_hash_and_reference(setup: Setup, tmp_path: Path) -> None:
    folder = await fetch(setup, GONE, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    (doc,) = manifest["documents"]
    assert doc["file"] is None and "retention" in doc["note"]
    assert not (folder / "documents").exists()
    readme = (folder / "README.md").read_text()
    assert "is **not included**" in readme and "no timestamp was taken" in readme
    done = run_verifier(folder, setup.tsa_root)
    assert done.returncode == 0, done.stdout
    assert "not included (no longer in S3" in done.stdout


async def test_while_s3_hangs_the_bundle_is_503_with_retry_after_then_complete(
    setup: Setup, infra: Stack, tmp_path: Path
) -> None:
    await asyncio.to_thread(infra.pause_server, "s3")  # accepts connections, never answers
    try:
        down = await setup.client.get(
            f"/v1/invoices/{INVOICE}/evidence", params={"tenant_id": TENANT}, headers=setup.headers["reader"]
        )
    finally:
        await asyncio.to_thread(infra.resume_server, "s3")
    assert down.status_code == 503 and int(down.headers["retry-after"]) > 0, down.text
    assert "s3 is unavailable" in down.json()["detail"]
    folder = await fetch(setup, INVOICE, tmp_path)
    assert (folder / "documents" / "1" / "invoice.pdf").read_bytes() == setup.pdf


async def test_other_tenants_and_unknown_invoices_get_nothing(setup: Setup) -> None:
    path = f"/v1/invoices/{INVOICE}/evidence"
    anonymous = await setup.client.get(path, params={"tenant_id": TENANT})
    assert anonymous.status_code == 401
    foreign = await setup.client.get(path, params={"tenant_id": TENANT}, headers=setup.headers["other"])
    assert foreign.status_code == 403
    absent = await setup.client.get(path, params={"tenant_id": OTHER}, headers=setup.headers["other"])
    assert absent.status_code == 404  # OTHER has INVOICE-B, not INVOICE
    unknown = await setup.client.get(
        "/v1/invoices/F-NONE/evidence", params={"tenant_id": TENANT}, headers=setup.headers["reader"]
    )
    assert unknown.status_code == 404


async def test_a_record_tampered_in_mongodb_fails_the_bundles_proof(setup: Setup, tmp_path: Path) -> None:
    query = {"tenant_id": TENANT, "invoice_id": INVOICE, "type": "delivery.failed"}
    original = await setup.db.records.find_one(query)
    assert original is not None
    tampered = original["record"].replace("hard_bounce", "delivered")
    await setup.db.records.update_one({"_id": original["_id"]}, {"$set": {"record": tampered}})
    try:
        folder = await fetch(setup, INVOICE, tmp_path)
    finally:
        await setup.db.records.update_one({"_id": original["_id"]}, {"$set": {"record": original["record"]}})
    done = run_verifier(folder, setup.tsa_root)
    assert done.returncode == 1, done.stdout
    assert "content altered" in done.stdout
    assert "RESULT: FAILED" in done.stdout
