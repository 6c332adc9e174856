"""Wire the email sender: S3 (to fetch the PDF), MongoDB (delivery ledger), SMTP."""

from __future__ import annotations

from contextlib import AsyncExitStack

from factura.common.kafka.producer import Publisher
from factura.common.ledger import DeliveryLedger
from factura.common.mongo import create_client, database, ping
from factura.common.runtime import Wiring
from factura.common.storage import DocumentStore
from factura.common.tenants import TenantDirectory
from factura.email_sender.handlers import EmailHandlers, SmtpMailer
from factura.email_sender.settings import Settings


async def bootstrap(settings: Settings, publisher: Publisher, stack: AsyncExitStack) -> Wiring:
    store = await DocumentStore.connect(settings.s3, stack)
    mongo = create_client(settings.mongo)
    stack.push_async_callback(mongo.close)
    ledger = DeliveryLedger(database(mongo, settings.mongo)["deliveries"], settings.ledger)
    await ledger.ensure_indexes()
    mailer = SmtpMailer(settings.smtp)
    handlers = EmailHandlers(
        publisher=publisher,
        store=store,
        ledger=ledger,
        mailer=mailer,
        tenants=TenantDirectory(settings.tenants_dir),
        default_sender=(settings.smtp.from_name, settings.smtp.from_address),
    )

    async def mongo_ok() -> None:
        await ping(mongo)

    return Wiring(
        routes={"invoice.rendered": handlers.on_invoice_rendered},
        checks={"mongo": mongo_ok, "smtp": mailer.probe},
    )
