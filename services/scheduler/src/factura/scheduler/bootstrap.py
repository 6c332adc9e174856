"""Wire the scheduler: MongoDB schedules, channel credits and sweep lease, the handlers, the periodic sweep."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from factura.common.delivery.effectiveness import ChannelEffectiveness
from factura.common.kafka.producer import Publisher
from factura.common.mongo import create_client, database, ping, process_owner
from factura.common.runtime import Wiring
from factura.common.tenants import TenantDirectory
from factura.scheduler.handlers import SchedulerHandlers
from factura.scheduler.lease import Lease
from factura.scheduler.schedule import Schedules
from factura.scheduler.settings import Settings

SWEEP_LEASE = "reminder-sweep"


async def bootstrap(settings: Settings, publisher: Publisher, stack: AsyncExitStack) -> Wiring:
    tenants = TenantDirectory(settings.tenants_dir)  # a bad tenant file stops the service here
    mongo = create_client(settings.mongo)
    stack.push_async_callback(mongo.close)
    db = database(mongo, settings.mongo)
    schedules = Schedules(db["schedules"])
    await schedules.ensure_indexes()
    effectiveness = ChannelEffectiveness.in_database(db)
    await effectiveness.ensure_indexes()
    lease = Lease(db["leases"], SWEEP_LEASE, owner=settings.replica_id or process_owner(), ttl=settings.lease_ttl)
    handlers = SchedulerHandlers(publisher, schedules, lease, effectiveness=effectiveness, tenants=tenants)

    async def sweeps(stopping: asyncio.Event) -> None:
        await handlers.run_sweeps(stopping, settings.tick_seconds)

    async def mongo_ok() -> None:
        await ping(mongo)

    return Wiring(
        routes={
            "invoice.created": handlers.on_invoice_created,
            "invoice.rejected": handlers.on_invoice_rejected,
            "invoice.rendered": handlers.on_invoice_rendered,
            "payment.received": handlers.on_payment_received,
            "delivery.succeeded": handlers.on_delivery_succeeded,
        },
        checks={"mongo": mongo_ok},
        tasks=[sweeps],
    )
