"""Wire the email sender: S3 (documents), MongoDB (ledger, suppressions, short links), SMTP."""

from __future__ import annotations

from contextlib import AsyncExitStack

from factura.common.delivery.api import suppression_router
from factura.common.delivery.journal import WebhookLog
from factura.common.delivery.links import LinkMaker
from factura.common.delivery.sender import Sender
from factura.common.delivery.suppression import SuppressionStore
from factura.common.kafka.producer import Publisher
from factura.common.ledger import DeliveryLedger
from factura.common.links import LinkSigner
from factura.common.mongo import create_client, database, ping
from factura.common.runtime import Wiring
from factura.common.shortlinks import ShortLinks
from factura.common.storage import DocumentStore
from factura.common.tenants import TenantDirectory
from factura.email_sender.handlers import PRODUCER, EmailChannel
from factura.email_sender.settings import Settings
from factura.email_sender.smtp import SmtpMailer
from factura.email_sender.webhooks import BounceHandler, bounce_router


async def bootstrap(settings: Settings, publisher: Publisher, stack: AsyncExitStack) -> Wiring:
    store = await DocumentStore.connect(settings.s3, stack)
    mongo = create_client(settings.mongo)
    stack.push_async_callback(mongo.close)
    db = database(mongo, settings.mongo)
    ledger = DeliveryLedger(db["deliveries"], settings.ledger)
    suppressions = SuppressionStore(db["suppressions"])
    shortlinks = ShortLinks(db["short_links"], settings.links.secret.get_secret_value().encode())
    for indexed in (ledger, suppressions, shortlinks):
        await indexed.ensure_indexes()
    tenants = TenantDirectory(settings.tenants_dir)
    mailer = SmtpMailer(settings.smtp)
    links = LinkMaker(
        LinkSigner.from_settings(settings.links),
        shortlinks,
        base_url=settings.links.base_url,
        ttl_s=settings.links.ttl_s,
    )
    default_sender = (settings.smtp.from_name, settings.smtp.from_address)
    sender = Sender(
        producer=PRODUCER,
        adapters=[EmailChannel(store=store, mailer=mailer, links=links, default_sender=default_sender)],
        ledger=ledger,
        publisher=publisher,
        tenants=tenants,
        suppressions=suppressions,
    )
    bounces = BounceHandler(ledger=ledger, publisher=publisher, tenants=tenants, suppressions=suppressions)

    async def mongo_ok() -> None:
        await ping(mongo)

    return Wiring(
        routes=sender.routes,
        checks={"mongo": mongo_ok, "smtp": mailer.probe},
        tasks=[suppressions.run_gauge],
        routers=[
            bounce_router(bounces, settings.webhooks, WebhookLog(db["webhook_log"])),
            suppression_router(suppressions, settings.admin),
        ],
    )
