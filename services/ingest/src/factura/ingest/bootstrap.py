"""Wire ingest: its handlers on the ERP topics. No clients beyond the publisher."""

from __future__ import annotations

from contextlib import AsyncExitStack

from factura.common.kafka.producer import Publisher
from factura.common.runtime import Wiring
from factura.ingest.handlers import IngestHandlers
from factura.ingest.settings import Settings


async def bootstrap(settings: Settings, publisher: Publisher, stack: AsyncExitStack) -> Wiring:
    handlers = IngestHandlers(publisher, allow_test_email_domains=settings.allow_test_email_domains)
    return Wiring(routes={"erp.invoices": handlers.on_erp_invoice, "erp.payments": handlers.on_erp_payment})
