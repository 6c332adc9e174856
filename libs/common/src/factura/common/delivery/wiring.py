"""What every sender's bootstrap builds the same way: MongoDB stores (the ledger encrypting its
outcomes under customers' data keys), tenants, links."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pymongo.asynchronous.database import AsyncDatabase

from factura.common.delivery.links import LinkMaker
from factura.common.delivery.suppression import SuppressionStore
from factura.common.ledger import DeliveryLedger, LedgerSettings
from factura.common.links import LinkSigner
from factura.common.mongo import Document, create_client, database, ping
from factura.common.pii import COLLECTION as CUSTOMER_KEYS
from factura.common.pii import field_cipher
from factura.common.settings import LinkSettings, MongoSettings, PiiSettings
from factura.common.shortlinks import ShortLinks
from factura.common.tenants import TenantDirectory


@dataclass(frozen=True)
class DeliveryKit:
    db: AsyncDatabase[Document]
    ledger: DeliveryLedger
    suppressions: SuppressionStore
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
    cipher = field_cipher(db[CUSTOMER_KEYS], settings.pii)
    await cipher.ensure_indexes()
    kit = DeliveryKit(
        db=db,
        ledger=DeliveryLedger(db["deliveries"], settings.ledger, cipher=cipher),
        suppressions=SuppressionStore(db["suppressions"]),
        tenants=TenantDirectory(settings.tenants_dir),
        links=LinkMaker(
            LinkSigner.from_settings(links),
            ShortLinks(db["short_links"], links.secret.get_secret_value().encode()),
            base_url=links.base_url,
            ttl_s=links.ttl_s,
        ),
    )
    for store in (kit.ledger, kit.suppressions, kit.links.shortlinks):
        await store.ensure_indexes()
    return kit
