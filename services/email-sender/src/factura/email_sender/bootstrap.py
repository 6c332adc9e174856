"""Wire the email sender: S3 (documents), MongoDB (ledger, suppressions, short links), SMTP, and
the relay's message search when ``smtp.lookup_url`` names one."""

from __future__ import annotations

from contextlib import AsyncExitStack

from factura.common.delivery.api import suppression_router
from factura.common.delivery.sender import Sender
from factura.common.delivery.wiring import delivery_kit
from factura.common.kafka.producer import Publisher
from factura.common.runtime import Wiring
from factura.common.storage import DocumentStore
from factura.common.tls import TlsSettings, http_client
from factura.email_sender.handlers import PRODUCER, EmailChannel
from factura.email_sender.relay_lookup import RelayLookup
from factura.email_sender.settings import Settings
from factura.email_sender.smtp import SmtpMailer
from factura.email_sender.webhooks import BounceHandler, bounce_router


async def bootstrap(settings: Settings, publisher: Publisher, stack: AsyncExitStack) -> Wiring:
    store = await DocumentStore.connect(settings.s3, stack)
    kit = await delivery_kit(settings, stack)
    mailer = SmtpMailer(settings.smtp)
    smtp = settings.smtp
    default_sender = (smtp.from_name, smtp.from_address)
    lookup = None
    if smtp.lookup_url is not None:
        # The relay's certificate checks apply to its search API too (same host, same CA).
        tls = TlsSettings(verify_certificate=smtp.verify_certificate, ca_file=smtp.ca_file)
        http = await stack.enter_async_context(http_client(tls))
        lookup = RelayLookup(smtp.lookup_url, http, smtp.timeout_s)
    channel = EmailChannel(store=store, mailer=mailer, links=kit.links, default_sender=default_sender, lookup=lookup)
    sender = Sender(
        producer=PRODUCER,
        adapters=[channel],
        ledger=kit.ledger,
        publisher=publisher,
        tenants=kit.tenants,
        suppressions=kit.suppressions,
    )
    bounces = BounceHandler(ledger=kit.ledger, publisher=publisher, tenants=kit.tenants, suppressions=kit.suppressions)
    return Wiring(
        routes=sender.routes,
        checks={"mongo": kit.mongo_ok, "smtp": mailer.probe},
        routers=[
            bounce_router(bounces, settings.webhooks, kit.webhook_log),
            suppression_router(kit.suppressions, settings.admin),
        ],
        tasks=[kit.suppressions.run_gauge],
    )
