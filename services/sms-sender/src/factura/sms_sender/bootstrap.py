"""Wire the SMS sender: MongoDB (ledger, suppressions, short links) and the providers' HTTP APIs
for SMS, voice calls and push."""

from __future__ import annotations

from contextlib import AsyncExitStack

from factura.common.delivery.sender import ChannelAdapter, Sender
from factura.common.delivery.wiring import delivery_kit
from factura.common.http import HealthCheck
from factura.common.kafka.producer import Publisher
from factura.common.runtime import Wiring
from factura.common.tls import http_client
from factura.sms_sender.handlers import PRODUCER, PushChannel, SmsChannel, UnconfiguredChannel, VoiceChannel
from factura.sms_sender.provider import SmsProvider
from factura.sms_sender.push import PushProvider
from factura.sms_sender.settings import Settings
from factura.sms_sender.voice import VoiceProvider
from factura.sms_sender.webhooks import StatusHandler, status_router


async def bootstrap(settings: Settings, publisher: Publisher, stack: AsyncExitStack) -> Wiring:
    kit = await delivery_kit(settings, stack)
    http = await stack.enter_async_context(http_client(settings.provider_tls))
    sms = SmsProvider(settings.provider, http)
    voice = VoiceProvider(settings.voice, http)
    callback = settings.status_callback_url
    checks: dict[str, HealthCheck] = {"mongo": kit.mongo_ok, "sms": sms.probe, "voice": voice.probe}
    push: ChannelAdapter
    if settings.push.project_id:
        provider = PushProvider(settings.push, http)
        push, checks["push"] = PushChannel(provider, kit.links), provider.probe
    else:
        push = UnconfiguredChannel("push", lambda customer: customer.push_token)
    sender = Sender(
        producer=PRODUCER,
        adapters=[SmsChannel(sms, kit.links, callback), VoiceChannel(voice, callback), push],
        ledger=kit.ledger,
        publisher=publisher,
        tenants=kit.tenants,
        suppressions=kit.suppressions,
    )
    statuses = StatusHandler(ledger=kit.ledger, publisher=publisher, tenants=kit.tenants, suppressions=kit.suppressions)
    return Wiring(
        routes=sender.routes,
        checks=checks,
        routers=[
            status_router(
                statuses,
                public_url=callback,
                auth_token=settings.provider.auth_token.get_secret_value(),
                journal=kit.webhook_log,
            )
        ],
    )
