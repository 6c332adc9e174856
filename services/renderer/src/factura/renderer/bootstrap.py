"""Wire the renderer: an S3 client, the bucket, and the handler on invoice.created."""

from __future__ import annotations

from contextlib import AsyncExitStack

from factura.common.kafka.producer import Publisher
from factura.common.runtime import Wiring
from factura.common.storage import DocumentStore
from factura.renderer.handlers import RenderHandlers
from factura.renderer.settings import Settings


async def bootstrap(settings: Settings, publisher: Publisher, stack: AsyncExitStack) -> Wiring:
    store = await DocumentStore.connect(settings.s3, stack)
    await store.ensure_bucket()
    handlers = RenderHandlers(publisher, store)
    stack.callback(handlers.close)
    return Wiring(routes={"invoice.created": handlers.on_invoice_created}, checks={"s3": store.ping})
