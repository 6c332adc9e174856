"""Wire the renderer: tenant configs, S3 (bucket, retention rules), the render pool, links, handlers."""

from __future__ import annotations

from contextlib import AsyncExitStack

from factura.common.kafka.producer import Publisher
from factura.common.links import LinkSigner
from factura.common.runtime import Wiring
from factura.common.storage import DocumentStore
from factura.common.tenants import TenantConfig, TenantDirectory
from factura.renderer.download import download_router
from factura.renderer.handlers import RenderHandlers
from factura.renderer.pool import RenderPool
from factura.renderer.settings import Settings


async def bootstrap(settings: Settings, publisher: Publisher, stack: AsyncExitStack) -> Wiring:
    tenants = TenantDirectory(settings.tenants_dir)
    store = await DocumentStore.connect(settings.s3, stack)
    await store.ensure_bucket()
    default_retention = TenantConfig.default("default").retention_days
    await store.ensure_retention_rules({default_retention, *(t.retention_days for t in tenants)})
    pool = RenderPool(settings.workers)
    stack.callback(pool.close)
    await pool.warm_up()
    handlers = RenderHandlers(publisher, store, tenants, pool, settings.limits)
    signer = LinkSigner.from_settings(settings.links)
    return Wiring(
        routes={"invoice.created": handlers.on_invoice_created},
        checks={"s3": store.ping, "render-pool": pool.check},
        routers=[download_router(signer, store, publisher)],
    )
