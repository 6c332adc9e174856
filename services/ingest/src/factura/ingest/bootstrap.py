"""Wire ingest: its handlers on the ERP topics, tenant configs and the channel history in MongoDB.

MongoDB is only read, and only for tenants that learn the most effective channel; startup does
not touch it, so ingest starts (and accepts other tenants' invoices) while MongoDB is down.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from factura.common.delivery.effectiveness import ChannelEffectiveness
from factura.common.kafka.producer import Publisher
from factura.common.mongo import create_client, database, ping
from factura.common.runtime import Wiring
from factura.common.tenants import TenantDirectory
from factura.ingest.handlers import IngestHandlers
from factura.ingest.settings import Settings


async def bootstrap(settings: Settings, publisher: Publisher, stack: AsyncExitStack) -> Wiring:
    tenants = TenantDirectory(settings.tenants_dir)  # a bad tenant file stops the service here
    mongo = create_client(settings.mongo)
    stack.push_async_callback(mongo.close)
    history = ChannelEffectiveness.in_database(database(mongo, settings.mongo))
    handlers = IngestHandlers(publisher, tenants, history, allow_test_email_domains=settings.allow_test_email_domains)

    async def mongo_ok() -> None:
        await ping(mongo)

    return Wiring(
        routes={
            "erp.invoices": handlers.on_erp_invoice,
            "erp.payments": handlers.on_erp_payment,
            "erp.cancellations": handlers.on_erp_cancellation,
        },
        checks={"mongo": mongo_ok},
    )
