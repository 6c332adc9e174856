"""What every sender's bootstrap builds the same way: MongoDB stores (the ledger encrypting its
outcomes under customers' data keys, the suppression list keyed by hashes of the addresses, the
webhook log masking them), tenants, links."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pymongo.asynchronous.database import AsyncDatabase

from factura.common.delivery.journal import WebhookLog
from factura.common.delivery.links import LinkMaker
from factura.common.delivery.suppression import SuppressionStore
from factura.common.ledger import DeliveryLedger, LedgerSettings
from factura.common.links import LinkSigner
from factura.common.mongo import Document, create_client, database, ping
from factura.common.pii import COLLECTION as CUSTOMER_KEYS
from factura.common.pii import FieldCipher, pii_keystore
from factura.common.pii.lookup import COLLECTION as LOOKUP_KEYS
from factura.common.pii.lookup import LookupKeys
from factura.common.settings import LinkSettings, MongoSettings, PiiSettings
from factura.common.shortlinks import ShortLinks
from factura.common.tenants import TenantDirectory


@dataclass(frozen=True)
class DeliveryKit:
    db: AsyncDatabase[Document]
    ledger: DeliveryLedger
    suppressions: SuppressionStore
    webhook_log: WebhookLog
    tenants: TenantDirectory
    links: LinkMaker

    async def mongo_ok(self) -> None:
        """Readiness: MongoDB answers a ping."""
        await ping(self.db.client)


class SenderSettings(Protocol):
    """The settings every sender service has."""

    @property
    def mongo(self) -> MongoSettings: ...
    @property
    def ledger(self) -> LedgerSettings: ...
    @property
    def links(self) -> LinkSettings: ...
    @property
    def tenants_dir(self) -> Path | None: ...
    @property
    def pii(self) -> PiiSettings: ...


async def delivery_kit(settings: SenderSettings, stack: AsyncExitStack) -> DeliveryKit:
    mongo, links = settings.mongo, settings.links
    client = create_client(mongo)
    stack.push_async_callback(client.close)
    db = database(client, mongo)
    keystore = pii_keystore(settings.pii)
    cipher = FieldCipher(db[CUSTOMER_KEYS], keystore, cache_ttl_s=settings.pii.cache_ttl_s)
    await cipher.ensure_indexes()
    kit = DeliveryKit(
        db=db,
        ledger=DeliveryLedger(db["deliveries"], settings.ledger, cipher=cipher),
        suppressions=SuppressionStore(db["suppressions"], lookup=LookupKeys(db[LOOKUP_KEYS], keystore), cipher=cipher),
        webhook_log=WebhookLog(
            db["webhook_log"],
            digest_key=_webhook_log_key(links.secret.get_secret_value()),
            ttl_days=settings.pii.webhook_log_days,
        ),
        tenants=TenantDirectory(settings.tenants_dir),
        links=LinkMaker(
            LinkSigner.from_settings(links),
            ShortLinks(db["short_links"], links.secret.get_secret_value().encode()),
            base_url=links.base_url,
            ttl_s=links.ttl_s,
        ),
    )
    for store in (kit.ledger, kit.suppressions, kit.webhook_log, kit.links.shortlinks):
        await store.ensure_indexes()
    await kit.suppressions.migrate()
    return kit


def _webhook_log_key(links_secret: str) -> bytes | None:
    """The key of the webhook log's body digests: derived from the links secret (HKDF, its own
    label, so neither key tells anything about the other); none without a secret."""
    if not links_secret:
        return None
    info = b"factura.webhook_log.body_hmac.v1"
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(links_secret.encode())
