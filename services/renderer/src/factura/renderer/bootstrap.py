"""Wire the renderer: tenant configs, S3 (bucket, retention rules), the render pool, MongoDB (short
links, hit de-duplication), and the public link host (downloads, short links, open pixel)."""

from __future__ import annotations

import functools
from contextlib import AsyncExitStack

from pymongo.asynchronous.database import AsyncDatabase

from factura.common.kafka.producer import Publisher
from factura.common.links import LinkSigner
from factura.common.mongo import Document, create_client, database, ping
from factura.common.runtime import Wiring
from factura.common.shortlinks import ShortLinks
from factura.common.storage import DocumentStore
from factura.common.tenants import TenantConfig, TenantDirectory
from factura.renderer.download import download_router
from factura.renderer.handlers import RenderHandlers
from factura.renderer.pages import LinkPages
from factura.renderer.pool import RenderPool, warm_engines
from factura.renderer.settings import Settings
from factura.renderer.signing import SigningJobs
from factura.renderer.tracking import HitGuard, Tracker, tracking_router


def link_stores(settings: Settings, db: AsyncDatabase[Document]) -> tuple[ShortLinks, HitGuard]:
    """The link host's MongoDB stores: short links and hit de-duplication."""
    shortlinks = ShortLinks(db["short_links"], settings.links.secret.get_secret_value().encode())
    return shortlinks, HitGuard(db["link_hits"], settings.tracking)


async def ensure_indexes(settings: Settings, db: AsyncDatabase[Document]) -> None:
    """The renderer's indexes: at start, and by ``python -m factura.renderer indexes`` (the
    Kubernetes index Job, before a rollout)."""
    for indexed in link_stores(settings, db):
        await indexed.ensure_indexes()


async def bootstrap(settings: Settings, publisher: Publisher, stack: AsyncExitStack) -> Wiring:
    tenants = TenantDirectory(settings.tenants_dir)
    # A tenant that timestamps needs a TSA: refuse to start without one rather than reject its invoices.
    # (No readiness check calls the TSA: each request costs a token; an outage shows as "tsa" once an
    # invoice meets it, through the consumer's outage list.)
    signing = SigningJobs(settings.signing, settings.tsa)
    signing.check(tenants)
    # Checked before anything starts: the link host records hits, so it needs the pseudonym key.
    signer = LinkSigner.from_settings(settings.links, require_pseudonym=True)
    store = await DocumentStore.connect(settings.s3, stack)
    await store.ensure_bucket()
    default_retention = TenantConfig.default("default").retention_days
    await store.ensure_retention_rules({default_retention, *(t.retention_days for t in tenants)})
    mongo = create_client(settings.mongo)
    stack.push_async_callback(mongo.close)
    db = database(mongo, settings.mongo)
    await ensure_indexes(settings, db)
    shortlinks, guard = link_stores(settings, db)
    engines = sorted({TenantConfig.default("default").engine, *(t.engine for t in tenants)})
    pool = RenderPool(settings.workers, warm=functools.partial(warm_engines, engines))
    stack.callback(pool.close)
    await pool.warm_up()
    handlers = RenderHandlers(publisher, store, tenants, pool, settings.limits, signing=signing)
    tracker = Tracker(guard, signer.pseudonym, settings.tracking, minimal_user_agent=settings.links.minimal_user_agent)
    pages = LinkPages()

    async def mongo_ok() -> None:
        await ping(mongo)

    return Wiring(
        routes={"invoice.created": handlers.on_invoice_created},
        checks={"s3": store.ping, "render-pool": pool.check, "mongo": mongo_ok},
        routers=[
            download_router(signer, store, publisher, tracker=tracker, pages=pages, tenants=tenants),
            tracking_router(links=shortlinks, tracker=tracker, publisher=publisher, pages=pages, tenants=tenants),
        ],
    )
