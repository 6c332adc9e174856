"""The senders' last stores of contact data, against the real MongoDB-wire server: the suppression
list keyed by HMACs of the addresses (the address itself encrypted under the customer's data key,
erased with it, while the entry keeps blocking), entries written before migrated, a missing KEK an
outage; and the webhook log keeping masked bodies with a keyed digest, for a limited time.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from factura.common.delivery.api import AdminSettings, suppression_router
from factura.common.delivery.journal import WebhookLog
from factura.common.delivery.suppression import SuppressionStore
from factura.common.delivery.wiring import delivery_kit
from factura.common.envelope import utcnow
from factura.common.ledger import LedgerSettings
from factura.common.mongo import Document, create_client
from factura.common.pii import ERASED, FieldCipher, KeyStore, KeyStoreError, NoKeyStore, SecretKeyStore, Wrapped
from factura.common.pii.lookup import LookupKeys
from factura.common.pii.masking import PHONE
from factura.common.settings import LinkSettings, MongoSettings, PiiSettings
from factura.devstack.config import StackConfig
from tests.conftest import mongo_settings

pytestmark = pytest.mark.integration

TENANT = "harinas-sur"
ADMIN = "contact-data-at-rest-admin-token-0123456789"
BEARER = {"Authorization": f"Bearer {ADMIN}"}
KEKS = SecretKeyStore(b"k" * 32)


class Without(SecretKeyStore):
    """The development KEKs, but none for ``missing``: a tenant whose KEK file is not mounted."""

    def __init__(self, missing: str) -> None:
        super().__init__(b"k" * 32)
        self._missing = missing

    async def wrap(self, tenant_id: str, data_key: bytes, context: Mapping[str, str]) -> Wrapped:
        self._check(tenant_id)
        return await super().wrap(tenant_id, data_key, context)

    async def unwrap(self, tenant_id: str, wrapped: Wrapped, context: Mapping[str, str]) -> bytes:
        self._check(tenant_id)
        return await super().unwrap(tenant_id, wrapped, context)

    def _check(self, tenant_id: str) -> None:
        if tenant_id == self._missing:
            raise KeyStoreError(f"no KEK file for tenant {tenant_id!r}")


@dataclass
class Rig:
    db: AsyncDatabase[Document]
    own: str

    @property
    def entries(self) -> AsyncCollection[Document]:
        return self.db[f"suppressions_{self.own}"]

    def cipher(self, keystore: KeyStore = KEKS) -> FieldCipher:
        return FieldCipher(self.db[f"customer_keys_{self.own}"], keystore)

    def store(self, keystore: KeyStore = KEKS, cipher: FieldCipher | None = None) -> SuppressionStore:
        lookup = LookupKeys(self.db[f"lookup_keys_{self.own}"], keystore)
        return SuppressionStore(self.entries, lookup=lookup, cipher=cipher or self.cipher(keystore))

    async def stored(self) -> str:
        return str(await self.entries.find().to_list())


@pytest.fixture
async def rig(cfg: StackConfig) -> AsyncIterator[Rig]:
    settings = mongo_settings(cfg)
    client = create_client(settings, server_selection_ms=1000)
    try:
        yield Rig(client[settings.database], uuid.uuid4().hex[:8])
    finally:
        await client.close()


def admin_api(store: SuppressionStore) -> httpx.AsyncClient:
    app = FastAPI()
    app.include_router(suppression_router(store, AdminSettings(tokens=[SecretStr(ADMIN)])))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sender.test")


async def listed(api: httpx.AsyncClient, **params: str) -> list[dict[str, object]]:
    answer = await api.get("/v1/suppressions", params={"tenant_id": TENANT, **params}, headers=BEARER)
    assert answer.status_code == 200, answer.text
    items: list[dict[str, object]] = answer.json()["items"]
    return items


async def test_a_suppression_keeps_no_address_and_outlives_the_customers_erasure(rig: Rig) -> None:
    cipher = rig.cipher()
    store = rig.store(cipher=cipher)  # one process: its erasure evicts its own cached key at once
    await store.suppress(
        TENANT,
        "Ana.Garcia@Correo-Ana.es",
        channel="email",
        reason="hard_bounce",
        detail="550 5.1.1 <ana.garcia@correo-ana.es>: Recipient address rejected",
        source_event_id="e-1",
        customer_id="C-7",
    )

    assert "ana.garcia" not in (await rig.stored()).casefold()
    assert (await store.find(TENANT, " ANA.GARCIA@correo-ana.es")) is not None
    assert await store.find("another-tenant", "ana.garcia@correo-ana.es") is None
    async with admin_api(store) as api:
        [entry] = await listed(api)
        assert (entry["address"], entry["reason"]) == ("ana.garcia@correo-ana.es", "hard_bounce")
        assert entry["detail"] == "550 5.1.1 <***@correo-ana.es>: Recipient address rejected"

        assert await cipher.erase(TENANT, "C-7")
        [entry] = await listed(api)
        assert entry["address"] == ERASED
        found = await store.find(TENANT, "ana.garcia@correo-ana.es")
        assert found is not None and found.reason == "hard_bounce"  # still protects the address

        lift = {"tenant_id": TENANT, "address": "Ana.Garcia@correo-ana.es", "by": "ops", "note": "asked by ana@x.es"}
        answer = await api.post("/v1/suppressions/lift", json=lift, headers=BEARER)
        assert answer.status_code == 200, answer.text
        assert await store.find(TENANT, "ana.garcia@correo-ana.es") is None
        [entry] = await listed(api, include_lifted="true")
        assert (entry["address"], entry["active"], entry["lifted_by"]) == (ERASED, False, "ops")
    assert "ana@x.es" not in await rig.stored()


async def test_without_a_customer_the_address_is_masked_and_without_a_kek_nothing_is_stored(rig: Rig) -> None:
    store = rig.store()
    await store.suppress(
        TENANT, "+34612345678", channel="sms", reason="complaint", detail="STOP from +34612345678", source_event_id=None
    )
    assert "612345678" not in await rig.stored()
    async with admin_api(store) as api:
        [entry] = await listed(api)
    assert (entry["address"], entry["detail"]) == (PHONE, f"STOP from {PHONE}")
    assert await store.find(TENANT, "+34612345678") is not None

    closed = rig.store(NoKeyStore())
    with pytest.raises(KeyStoreError):
        await closed.suppress(
            TENANT, "luis@correo.es", channel="email", reason="hard_bounce", detail="", source_event_id=None
        )
    with pytest.raises(KeyStoreError):  # a send pauses rather than skip the check
        await closed.find(TENANT, "+34612345678")
    assert await rig.entries.count_documents({}) == 1
    async with admin_api(closed) as api:
        lift = {"tenant_id": TENANT, "address": "+34612345678", "by": "ops"}
        assert (await api.post("/v1/suppressions/lift", json=lift, headers=BEARER)).status_code == 503


async def test_entries_from_before_are_honoured_then_migrated(rig: Rig) -> None:
    since = utcnow()
    for tenant, address in ((TENANT, "old.customer@correo.es"), ("no-kek", "luis@correo.es")):
        await rig.entries.insert_one(
            {
                "_id": f"{tenant}:{address}",
                "tenant_id": tenant,
                "address": address,
                "channel": "email",
                "reason": "hard_bounce",
                "detail": f"550 <{address}> unknown",
                "since": since,
                "source_event_id": "e-0",
                "active": True,
            }
        )
    store = rig.store(Without("no-kek"))
    assert await store.find(TENANT, "Old.Customer@correo.es") is not None  # read before any migration

    assert await store.migrate() == 1
    assert await store.migrate() == 0
    [migrated] = await rig.entries.find({"tenant_id": TENANT}).to_list()
    assert "old.customer" not in str(migrated)
    assert (migrated["address"], migrated["detail"], migrated["since"]) == (
        "***@correo.es",
        "550 <***@correo.es> unknown",
        since.replace(microsecond=since.microsecond // 1000 * 1000),
    )
    found = await store.find(TENANT, "old.customer@correo.es")
    assert found is not None and found.source_event_id == "e-0"
    assert await store.lift(TENANT, "OLD.customer@correo.es", by="ops")
    assert await store.find(TENANT, "old.customer@correo.es") is None

    assert await rig.entries.find_one({"_id": "no-kek:luis@correo.es"}) is not None  # left for a later start
    with pytest.raises(KeyStoreError):
        await store.find("no-kek", "luis@correo.es")


DSN = (
    b"Final-Recipient: rfc822; ana.garcia@correo-ana.es\r\n"
    b"To: Ana Garcia <ana.garcia@correo-ana.es>\r\n"
    b"X-Callback: To=%2B34612345678&MessageSid=SM0123456789abcdef\r\n"
)


async def test_the_webhook_log_keeps_masked_bodies_with_a_keyed_digest_for_a_limited_time(rig: Rig) -> None:
    collection = rig.db[f"webhook_log_{rig.own}"]
    key = b"d" * 32
    journal = WebhookLog(collection, digest_key=key, ttl_days=30)
    await journal.ensure_indexes()
    ttl = [
        i.get("expireAfterSeconds") for i in (await collection.index_information()).values() if "at" in dict(i["key"])
    ]
    assert ttl == [30 * 24 * 3600]

    old = WebhookLog(collection, digest_key=key, now=lambda: utcnow() - timedelta(days=31))
    await old.record("bounces", 404, "no delivery for <x@y.es>", b"old")
    await journal.record("bounces", 404, "no delivery for ana.garcia@correo-ana.es", DSN)

    [doc] = await journal.recent("bounces")  # the 31-day-old one is past its time, expired or not
    assert set(doc) == {"webhook", "status", "reason", "body", "body_bytes", "body_hmac", "at"}
    assert "ana.garcia" not in str(doc) and "612345678" not in str(doc) and "Ana Garcia" not in str(doc)
    assert doc["body"].startswith(
        "Final-Recipient: rfc822; ***@correo-ana.es\r\nTo: [hidden]\r\nX-Callback: To=[phone]"
    )
    assert doc["body_hmac"] == hmac.new(key, DSN, hashlib.sha256).hexdigest()
    assert doc["body_bytes"] == len(DSN)


@dataclass(frozen=True)
class Sender:
    mongo: MongoSettings
    links: LinkSettings
    pii: PiiSettings
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    tenants_dir: Path | None = None


async def test_a_sender_migrates_its_suppressions_and_expires_its_webhook_log_at_startup(cfg: StackConfig) -> None:
    database = f"rest{uuid.uuid4().hex[:10]}"
    client: AsyncMongoClient[Document] = AsyncMongoClient(cfg.mongo_url, tz_aware=True)
    try:
        legacy = {"_id": f"{TENANT}:bob@correo.es", "tenant_id": TENANT, "address": "bob@correo.es"}
        await client[database]["suppressions"].insert_one(
            legacy | {"channel": "email", "reason": "complaint", "since": utcnow(), "active": True}
        )
        settings = Sender(
            mongo=MongoSettings(url=cfg.mongo_url, database=database),
            links=LinkSettings(secret=SecretStr("contact-data-at-rest-link-secret")),
            pii=PiiSettings(secret=SecretStr("p" * 32), webhook_log_days=7),
        )
        async with AsyncExitStack() as stack:
            kit = await delivery_kit(settings, stack)
            assert await kit.suppressions.find(TENANT, "bob@correo.es") is not None
            await kit.webhook_log.record("sms-status", 404, "unknown sid", b"To=%2B34612345678")
        db = client[database]
        assert "bob@" not in str(await db["suppressions"].find().to_list())
        [logged] = await db["webhook_log"].find().to_list()
        assert logged["body"] == f"To={PHONE}" and len(logged["body_hmac"]) == 64
        indexes = await db["webhook_log"].index_information()
        assert [i["expireAfterSeconds"] for i in indexes.values() if "expireAfterSeconds" in i] == [7 * 24 * 3600]
    finally:
        await client.close()
