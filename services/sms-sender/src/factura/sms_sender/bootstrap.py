"""Wire the SMS sender: S3 (links), MongoDB (delivery ledger), the provider's HTTP API."""

from __future__ import annotations

from contextlib import AsyncExitStack

import httpx

from factura.common.kafka.producer import Publisher
from factura.common.ledger import DeliveryLedger
from factura.common.links import LinkSigner
from factura.common.mongo import create_client, database, ping
from factura.common.runtime import Wiring
from factura.common.tenants import TenantDirectory
from factura.sms_sender.handlers import SmsHandlers
from factura.sms_sender.provider import SmsProvider
from factura.sms_sender.settings import Settings


async def bootstrap(settings: Settings, publisher: Publisher, stack: AsyncExitStack) -> Wiring:
    mongo = create_client(settings.mongo)
    stack.push_async_callback(mongo.close)
    http = await stack.enter_async_context(httpx.AsyncClient())
    ledger = DeliveryLedger(database(mongo, settings.mongo)["deliveries"], settings.ledger)
    await ledger.ensure_indexes()
    provider = SmsProvider(settings.provider, http)
    handlers = SmsHandlers(
        publisher,
        ledger,
        provider,
        LinkSigner.from_settings(settings.links),
        TenantDirectory(settings.tenants_dir),
    )

    async def mongo_ok() -> None:
        await ping(mongo)

    return Wiring(
        routes={"delivery.failed": handlers.on_delivery_failed},
        checks={"mongo": mongo_ok, "sms": provider.probe},
    )
