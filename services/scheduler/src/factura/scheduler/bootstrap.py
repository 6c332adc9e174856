"""Wire the scheduler: MongoDB schedules, channel credits and sweep lease, the handlers, the periodic
sweep, (when configured) the helpdesk client for tickets, and the campaigns API with its runner."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import timedelta

from pymongo.asynchronous.database import AsyncDatabase

from factura.common.apikeys import COLLECTION, ApiKeyStore, authenticator
from factura.common.delivery.effectiveness import ChannelEffectiveness
from factura.common.kafka.consumer import Handler
from factura.common.kafka.producer import Publisher
from factura.common.lease import Lease
from factura.common.ledger import DeliveryLedger
from factura.common.mongo import Document, create_client, database, ping, process_owner
from factura.common.pii import COLLECTION as CUSTOMER_KEYS
from factura.common.pii import field_cipher
from factura.common.runtime import Wiring
from factura.common.tenants import TenantDirectory
from factura.common.tls import http_client
from factura.scheduler.campaigns import api as campaigns_api
from factura.scheduler.campaigns.runner import LEASE as CAMPAIGNS_LEASE
from factura.scheduler.campaigns.runner import LEASES as CAMPAIGNS_LEASES
from factura.scheduler.campaigns.runner import CampaignRunner
from factura.scheduler.campaigns.store import COLLECTION as CAMPAIGNS
from factura.scheduler.campaigns.store import Campaigns
from factura.scheduler.handlers import SchedulerHandlers
from factura.scheduler.schedule import Schedules
from factura.scheduler.settings import Settings
from factura.scheduler.tickets import HelpdeskClient, TicketHandlers

SWEEP_LEASE = "reminder-sweep"
SCHEDULES = "schedules"
TICKET_DELIVERIES = "ticket_deliveries"


async def ensure_indexes(settings: Settings, db: AsyncDatabase[Document]) -> None:
    """The scheduler's indexes: at start, and by ``python -m factura.scheduler indexes`` (the
    Kubernetes index Job, before a rollout)."""
    await Schedules(db[SCHEDULES], field_cipher(db[CUSTOMER_KEYS], settings.pii)).ensure_indexes()
    await ChannelEffectiveness.in_database(db).ensure_indexes()
    await Campaigns(db[CAMPAIGNS]).ensure_indexes()
    await ApiKeyStore(db[COLLECTION]).ensure_indexes()
    if settings.helpdesk is not None:
        await DeliveryLedger(db[TICKET_DELIVERIES]).ensure_indexes()


async def bootstrap(settings: Settings, publisher: Publisher, stack: AsyncExitStack) -> Wiring:
    tenants = TenantDirectory(settings.tenants_dir)  # a bad tenant file stops the service here
    mongo = create_client(settings.mongo)
    stack.push_async_callback(mongo.close)
    db = database(mongo, settings.mongo)
    await ensure_indexes(settings, db)
    schedules = Schedules(db[SCHEDULES], field_cipher(db[CUSTOMER_KEYS], settings.pii))
    effectiveness = ChannelEffectiveness.in_database(db)
    owner = settings.replica_id or process_owner()
    lease = Lease(db["leases"], SWEEP_LEASE, owner=owner, ttl=settings.lease_ttl)
    handlers = SchedulerHandlers(
        publisher,
        schedules,
        lease,
        effectiveness=effectiveness,
        tenants=tenants,
        unknown_invoice_grace=timedelta(seconds=settings.unknown_invoice_grace_s),
    )
    routes: dict[str, Handler] = {
        "invoice.created": handlers.on_invoice_created,
        "invoice.rejected": handlers.on_invoice_rejected,
        "invoice.rendered": handlers.on_invoice_rendered,
        "invoice.cancelled": handlers.on_invoice_cancelled,
        "payment.received": handlers.on_payment_received,
        "delivery.succeeded": handlers.on_delivery_succeeded,
    }
    if settings.helpdesk is not None:
        http = await stack.enter_async_context(http_client(settings.helpdesk.tls))
        ticket_ledger = DeliveryLedger(db[TICKET_DELIVERIES])

        def ticket_url(tenant_id: str) -> str | None:
            ticket = tenants.get(tenant_id).reminders.ticket
            return ticket.url if ticket else None

        tickets = TicketHandlers(HelpdeskClient(settings.helpdesk, http), ticket_ledger, publisher.publish, ticket_url)
        routes["ticket.due"] = tickets.on_ticket_due

    campaigns = Campaigns(db[CAMPAIGNS])
    keys = ApiKeyStore(db[COLLECTION])
    runner = CampaignRunner(
        campaigns,
        schedules,
        publisher,
        tenants,
        Lease(db[CAMPAIGNS_LEASES], CAMPAIGNS_LEASE, owner=owner, ttl=settings.lease_ttl),
    )
    api = campaigns_api.router(
        schedules,
        campaigns,
        tenants,
        auth=authenticator(keys),
        wake=runner.wake,
        cap=settings.campaign_max_invoices,
    )

    async def sweeps(stopping: asyncio.Event) -> None:
        await handlers.run_sweeps(stopping, settings.tick_seconds)

    async def campaign_runs(stopping: asyncio.Event) -> None:
        await runner.run(stopping, settings.tick_seconds)

    async def mongo_ok() -> None:
        await ping(mongo)

    return Wiring(
        routes=routes,
        checks={"mongo": mongo_ok},
        routers=[api],
        tasks=[sweeps, campaign_runs],
    )
