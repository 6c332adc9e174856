"""Erasure by crypto-shredding, on the real MongoDB-wire server, through the audit API.

The issue's three statements after ``POST /v1/customers/{id}/erase``: (a) the audit trail still
verifies, (b) fiscal fields stay readable, (c) contact data is unrecoverable (decrypting raises
``Erased`` even for a process with no cache, and no stored byte holds it in the clear). And the
bad input: an unknown customer (404 with the reason) and a reader's key (403), both recorded.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from bson import json_util
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from factura.audit.api import router
from factura.audit.bootstrap import access_recorder
from factura.audit.chain import ChainWriter
from factura.audit.checkpoints import Signer
from factura.audit.erase import Erasure, IdleContacts, erase_router
from factura.audit.handlers import AuditHandlers
from factura.audit.queries import AuditQueries
from factura.audit.retention import apply_retention
from factura.audit.store import AuditDb
from factura.audit.verify import verify_chain
from factura.common.apikeys import COLLECTION, ApiKeyStore, Role, authenticator
from factura.common.envelope import utcnow
from factura.common.events import parse_event
from factura.common.http import Health, create_app
from factura.common.kafka.consumer import Message
from factura.common.mongo import create_client, database
from factura.common.pii import Erased, FieldCipher, SecretKeyStore, is_token
from factura.common.schemas import EXAMPLES_DIR
from factura.common.tenants import TenantDirectory
from factura.common.topics import resolve
from factura.devstack.config import StackConfig
from factura.devstack.stack import Stack
from tests.conftest import mongo_settings
from tests.integration.test_audit_retention import record

pytestmark = pytest.mark.integration

TENANT = "harinas-sur"  # the tenant of the example events
CUSTOMER = "C-1042"
INVOICE = "F-2026-000123"
EMAIL, PHONE = "facturas@pasteleria-lucia.es", "+34612345678"
SECRET = b"kek-secret-for-tests-only-000000"
EXAMPLES = ("invoice.created.v1.json", "delivery.failed.v2.json", "delivery.succeeded.v2.json")


@dataclass
class Setup:
    client: httpx.AsyncClient
    db: AuditDb
    cipher: FieldCipher
    keys_collection: Any
    public: Ed25519PublicKey
    admin: dict[str, str]
    reader: dict[str, str]
    admin_key_id: str


def message(name: str) -> Message[Any]:
    raw = (EXAMPLES_DIR / name).read_bytes()
    event = parse_event(raw)
    return Message(resolve(event.type), 0, 7, b"k", {}, raw, event)


@pytest.fixture(scope="module")
async def audit(cfg: StackConfig) -> AsyncIterator[Setup]:
    settings = mongo_settings(cfg)
    # A short server selection: while MongoDB is down (the outage test) an erasure answers 503 after
    # 1 s instead of create_client's 5 s; the local server answers at once when it is up.
    mongo = create_client(settings, server_selection_ms=1000)
    prefix = f"e{uuid.uuid4().hex[:6]}_"
    mongo_db = database(mongo, settings)
    db = AuditDb.of(mongo_db, prefix=prefix)
    await db.ensure_indexes()
    keys_collection = mongo_db[f"{prefix}customer_keys"]
    cipher = FieldCipher(keys_collection, SecretKeyStore(SECRET))
    await cipher.ensure_indexes()
    writer = ChainWriter(db.records, db.tombstones)
    await AuditHandlers(writer, cipher).on_events([message(name) for name in EXAMPLES])
    keys = ApiKeyStore(mongo_db[f"{COLLECTION}_{prefix}"])
    admin_key, admin_record = await keys.create(Role.ADMIN, [TENANT], "admin key", "test")
    reader_key, _ = await keys.create(Role.COMPLIANCE_READER, [TENANT], "reader key", "test")
    auth = authenticator(keys)
    on_access = access_recorder(writer)
    public = Ed25519PrivateKey.generate().public_key()
    routes = [
        router(
            db,
            auth=auth,
            cursor_key=b"cursor-key-for-tests-only-000000",
            on_access=on_access,
            verify=lambda tenant: verify_chain(db, tenant, public),
            export_chain=lambda *_: _nothing(),
            cipher=cipher,
        ),
        erase_router(Erasure(cipher, AuditQueries(db.records), writer), auth=auth, on_access=on_access),
    ]
    app = create_app("audit", Health(), routes)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://audit") as client:
        yield Setup(
            client,
            db,
            cipher,
            keys_collection,
            public,
            {"Authorization": f"Bearer {admin_key}"},
            {"Authorization": f"Bearer {reader_key}"},
            admin_record.key_id,
        )
    await mongo.close()


async def _nothing() -> AsyncIterator[bytes]:
    yield b""


async def stored_text(db: AuditDb) -> str:
    """Every stored record of the tenant, as one text (what a database dump would hold)."""
    return "\n".join([json_util.dumps(doc) async for doc in db.records.find({"tenant_id": TENANT})])


async def timeline(setup: Setup) -> list[dict[str, Any]]:
    response = await setup.client.get(f"/v1/invoices/{INVOICE}/timeline?tenant_id={TENANT}", headers=setup.reader)
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["entries"]
    return entries


async def erase(setup: Setup, customer: str, headers: dict[str, str]) -> httpx.Response:
    return await setup.client.post(f"/v1/customers/{customer}/erase?tenant_id={TENANT}", headers=headers)


async def test_contact_data_is_stored_encrypted_and_shown_to_readers(audit: Setup) -> None:
    text = await stored_text(audit.db)
    assert INVOICE in text and "286.55" in text  # fiscal fields in the clear
    assert EMAIL not in text and PHONE not in text and "pasteleria-lucia" not in text
    created, failed, succeeded = await timeline(audit)
    assert created["data"]["customer"]["email"] == EMAIL and created["data"]["customer"]["phone"] == PHONE
    assert failed["data"]["recipient"] == EMAIL and "pasteleria-lucia" in failed["data"]["evidence"]
    assert succeeded["data"]["recipient"] == PHONE


async def test_bad_erase_requests_are_refused_with_a_reason_and_recorded(audit: Setup) -> None:
    refused = await erase(audit, CUSTOMER, audit.reader)
    assert refused.status_code == 403 and "role 'compliance-reader'" in refused.json()["detail"]
    unknown = await erase(audit, "C-NOBODY", audit.admin)
    assert unknown.status_code == 404
    assert "no personal data key for customer 'C-NOBODY'" in unknown.json()["detail"]
    accesses = [json.loads(json.loads(doc["record"])["raw"]) async for doc in audit.db.records.find({"kind": "access"})]
    statuses = {(a["path"], a["role"], a["status"]) for a in accesses}
    assert (f"/v1/customers/{CUSTOMER}/erase", "compliance-reader", 403) in statuses
    assert ("/v1/customers/C-NOBODY/erase", "admin", 404) in statuses
    assert await audit.cipher.key_id(TENANT, CUSTOMER) is not None  # nothing was erased


async def test_while_mongodb_is_down_an_erasure_answers_503_and_its_retry_erases_once(
    audit: Setup, infra: Stack
) -> None:
    customer = f"C-{uuid.uuid4().hex[:8]}"
    await audit.cipher.prepare(TENANT, customer)  # a customer the tenant holds a data key for
    await asyncio.to_thread(infra.stop_server, "mongo")
    try:
        down = await erase(audit, customer, audit.admin)
    finally:
        await asyncio.to_thread(infra.start_server, "mongo")
    assert down.status_code == 503 and int(down.headers["retry-after"]) > 0, down.text
    retried = await erase(audit, customer, audit.admin)
    assert retried.status_code == 200 and retried.json()["key_destroyed"], retried.text
    again = await erase(audit, customer, audit.admin)
    assert again.status_code == 200 and not again.json()["key_destroyed"]
    assert again.json()["record_id"] == retried.json()["record_id"]
    erasures = audit.db.records.find({"tenant_id": TENANT, "type": "customer.erased", "customer_id": customer})
    assert len([doc async for doc in erasures]) == 1
    assert await audit.cipher.key_id(TENANT, customer) is None


async def test_after_erasure_the_chain_verifies_fiscal_fields_read_and_contact_data_is_gone(audit: Setup) -> None:
    token = json.loads(
        json.loads((await audit.db.records.find_one({"type": "invoice.created"}) or {})["record"])["raw"]
    )
    email_token = token["data"]["customer"]["email"]
    assert is_token(email_token)

    erased = await erase(audit, CUSTOMER, audit.admin)
    assert erased.status_code == 200, erased.text
    receipt = erased.json()
    assert receipt["key_destroyed"] is True and receipt["customer_id"] == CUSTOMER

    # (a) the trail still verifies, the erasure record included
    verification = await verify_chain(audit.db, TENANT, audit.public)
    assert verification.ok, verification.first_break
    record = await audit.db.records.find_one({"_id": receipt["record_id"]})
    assert record is not None and record["type"] == "customer.erased" and record["customer_id"] == CUSTOMER
    raw = json.loads(json.loads(record["record"])["raw"])
    assert (raw["key_id"], raw["role"]) == (audit.admin_key_id, "admin")

    # (b) fiscal fields stay readable; (c) contact data shows as erased
    created, failed, succeeded = await timeline(audit)
    data = created["data"]
    assert (data["invoice_number"], data["total"], data["due_date"], data["issue_date"]) == (
        INVOICE,
        "286.55",
        "2026-12-02",
        "2026-11-02",
    )
    assert data["customer"]["customer_id"] == CUSTOMER
    assert {data["customer"][k] for k in ("name", "email", "phone")} == {"[erased]"}
    assert failed["data"]["recipient"] == failed["data"]["evidence"] == "[erased]"
    assert failed["data"]["reason"] == "hard_bounce" and succeeded["outcome"] == "delivered"

    # (c) unrecoverable: no key document, no cached key, no plaintext anywhere
    assert await audit.keys_collection.count_documents({"tenant_id": TENANT, "customer_id": CUSTOMER}) == 0
    for fields in (audit.cipher, FieldCipher(audit.keys_collection, SecretKeyStore(SECRET))):
        with pytest.raises(Erased):
            await fields.decrypt_field(TENANT, CUSTOMER, "email", email_token)
    assert EMAIL not in await stored_text(audit.db)

    # erasing again is harmless, and the first erasure is what it answers with
    again = await erase(audit, CUSTOMER, audit.admin)
    assert again.status_code == 200
    assert again.json()["key_destroyed"] is False and again.json()["record_id"] == receipt["record_id"]
    searched = await audit.client.get(
        f"/v1/records?tenant_id={TENANT}&customer_id={CUSTOMER}&type=customer.erased", headers=audit.reader
    )
    assert [r["id"] for r in searched.json()["records"]] == [receipt["record_id"]]


# --- retention classes: fiscal, engagement, contact data ------------------------------------------------


async def test_each_retention_class_has_its_own_period_from_the_tenant_config(
    audit: Setup, cfg: StackConfig, tmp_path: Path
) -> None:
    """``[audit]`` of a tenant.toml: engagement records (opens) go after 60 days with signed
    tombstones, fiscal ones stay, and the contact data of a customer unseen for 30 days is erased
    (its key destroyed, recorded), while a customer seen today keeps theirs."""
    (tmp_path / "lojas").mkdir()
    (tmp_path / "lojas" / "tenant.toml").write_text("[audit]\nengagement_days = 60\ncontact_days = 30\n")
    tenants = TenantDirectory(tmp_path)
    settings = mongo_settings(cfg)
    mongo = create_client(settings)
    prefix = f"r{uuid.uuid4().hex[:6]}_"
    db = AuditDb.of(database(mongo, settings), prefix=prefix)
    await db.ensure_indexes()
    keys = database(mongo, settings)[f"{prefix}customer_keys"]
    now = utcnow()
    old = now - timedelta(days=100)
    then = FieldCipher(keys, SecretKeyStore(SECRET), now=lambda: old)
    await then.encrypt_field("lojas", "C-GONE", "email", "gone@example.test")
    current = FieldCipher(keys, SecretKeyStore(SECRET))
    await current.encrypt_field("lojas", "C-HERE", "email", "here@example.test")
    writer = ChainWriter(db.records, db.tombstones)
    age = timedelta(days=100)
    await writer.append([record("lojas", 0, "fiscal", age), record("lojas", 1, "engagement", age)])
    await writer.append([record("lojas", 2, "fiscal")])
    signer = Signer(Ed25519PrivateKey.generate())

    def policies(tenant: str) -> Any:
        return tenants.get(tenant).audit

    contacts = IdleContacts(current, writer)
    dry = await apply_retention(db, signer, policies, now, dry_run=True, contacts=contacts)
    assert (dry.removed, dry.contacts_erased) == ({"lojas": {"engagement": 1}}, {"lojas": 1})
    report = await apply_retention(db, signer, policies, now, contacts=contacts)
    assert (report.removed, report.contacts_erased) == ({"lojas": {"engagement": 1}}, {"lojas": 1})
    assert await current.key_id("lojas", "C-GONE") is None and await current.key_id("lojas", "C-HERE") is not None
    classes = {d["type"]: d["class"] async for d in db.records.find({"tenant_id": "lojas"})}
    assert classes == {"invoice.created": "fiscal", "customer.erased": "fiscal"}
    erased = await db.records.find_one({"type": "customer.erased"})
    assert erased is not None and (erased["customer_id"], erased["reason"]) == ("C-GONE", "contact_retention")
    verification = await verify_chain(db, "lojas", signer.public)
    assert verification.ok, verification.first_break
    assert (await apply_retention(db, signer, policies, now, contacts=contacts)).total == 0
    await mongo.close()
