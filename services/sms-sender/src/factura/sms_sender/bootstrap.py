"""Wire the SMS sender: MongoDB (ledger, suppressions, short links) and the providers' HTTP APIs
for SMS, voice calls and push."""

from __future__ import annotations

from contextlib import AsyncExitStack

import httpx

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
from factura.common.tenants import TenantDirectory
from factura.sms_sender.handlers import PRODUCER, PushChannel, SmsChannel, VoiceChannel
from factura.sms_sender.provider import SmsProvider
from factura.sms_sender.push import PushProvider
from factura.sms_sender.settings import Settings
from factura.sms_sender.voice import VoiceProvider
from factura.sms_sender.webhooks import StatusHandler, status_router


async def bootstrap(settings: Settings, publisher: Publisher, stack: AsyncExitStack) -> Wiring:
    mongo = create_client(settings.mongo)
    stack.push_async_callback(mongo.close)
    http = await stack.enter_async_context(httpx.AsyncClient())
    db = database(mongo, settings.mongo)
    ledger = DeliveryLedger(db["deliveries"], settings.ledger)
    suppressions = SuppressionStore(db["suppressions"])
    shortlinks = ShortLinks(db["short_links"], settings.links.secret.get_secret_value().encode())
    for indexed in (ledger, suppressions, shortlinks):
        await indexed.ensure_indexes()
    tenants = TenantDirectory(settings.tenants_dir)
    signer = LinkSigner.from_settings(settings.links)
    links = LinkMaker(signer, shortlinks, base_url=settings.links.base_url, ttl_s=settings.links.ttl_s)
    sms = SmsProvider(settings.provider, http)
    voice = VoiceProvider(settings.voice, http)
    push = PushProvider(settings.push, http)
    callback = settings.status_callback_url
    sender = Sender(
        producer=PRODUCER,
        adapters=[SmsChannel(sms, links, callback), VoiceChannel(voice, callback), PushChannel(push, links)],
        ledger=ledger,
        publisher=publisher,
        tenants=tenants,
        suppressions=suppressions,
    )
    statuses = StatusHandler(ledger=ledger, publisher=publisher, tenants=tenants, suppressions=suppressions)

    async def mongo_ok() -> None:
        await ping(mongo)

    return Wiring(
        routes=sender.routes,
        checks={"mongo": mongo_ok, "sms": sms.probe, "voice": voice.probe, "push": push.probe},
        routers=[
            status_router(
                statuses,
                public_url=callback,
                auth_token=settings.provider.auth_token.get_secret_value(),
                journal=WebhookLog(db["webhook_log"]),
            )
        ],
    )
