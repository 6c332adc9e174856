"""Wire ingest: its handlers on the ERP topics and its HTTP API, both through one intake; tenant
configs, the channel history, accepted versions, idempotent answers and API keys in MongoDB; the
ERP's own documents and uploaded imports in S3; the import worker and, where turned on, the SFTP
drop as background tasks.

Startup does not touch MongoDB, so ingest starts while it is down (accepting an invoice waits for
it: each accepted version is recorded there). Indexes are created by a background task once
MongoDB answers; nothing needs them to be correct (ids are unique by ``_id``), only to be fast.
S3 is no readiness check: only document uploads need it, and they answer 503 themselves, while
invoices keep flowing through the same pods.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

from pymongo.asynchronous.database import AsyncDatabase

from factura.common.apikeys import COLLECTION, ApiKeyStore, authenticator
from factura.common.delivery.effectiveness import ChannelEffectiveness
from factura.common.errors import ErrorKind, classify
from factura.common.kafka.consumer import Batched
from factura.common.kafka.producer import Publisher
from factura.common.mongo import Document, create_client, database, ping
from factura.common.runtime import BackgroundTask, Wiring
from factura.common.storage import DocumentStore
from factura.common.tenants import TenantDirectory
from factura.common.topics import ERP_INVOICES
from factura.ingest import documents, imports
from factura.ingest.api import router
from factura.ingest.handlers import IngestHandlers
from factura.ingest.settings import Settings
from factura.ingest.sftp import sftp_task
from factura.ingest.versions import IdempotencyStore, InvoiceVersions

INDEX_RETRY_MAX_S = 30.0
log = logging.getLogger(__name__)


async def ensure_indexes(db: AsyncDatabase[Document]) -> None:
    """Ingest's indexes: created in the background at start, and by ``python -m factura.ingest
    indexes`` (the Kubernetes index Job) so a new deployment does not start on unindexed collections."""
    for indexed in (
        InvoiceVersions.of(db),
        IdempotencyStore.of(db),
        ApiKeyStore(db[COLLECTION]),
        imports.ImportStore.of(db),
    ):
        await indexed.ensure_indexes()


async def bootstrap(settings: Settings, publisher: Publisher, stack: AsyncExitStack) -> Wiring:
    tenants = TenantDirectory(settings.tenants_dir)  # a bad tenant file stops the service here
    mongo = create_client(settings.mongo)
    stack.push_async_callback(mongo.close)
    db = database(mongo, settings.mongo)
    history = ChannelEffectiveness.in_database(db)
    versions = InvoiceVersions.of(db)
    idempotency = IdempotencyStore.of(db)
    keys = ApiKeyStore(db[COLLECTION])
    handlers = IngestHandlers(
        publisher,
        tenants,
        history,
        allow_test_email_domains=settings.allow_test_email_domains,
        versions=versions,
        dates=settings.dates,
        max_message_bytes=settings.max_message_bytes,
    )
    auth = authenticator(keys)
    api = router(handlers.intake, versions, idempotency, auth=auth, max_batch_bytes=settings.api_max_batch_bytes)
    store = await DocumentStore.connect(settings.s3, stack)
    uploads = documents.router(store, auth=auth, max_bytes=settings.documents_max_bytes)
    import_store = imports.ImportStore.of(db)
    import_files = await imports.ImportFiles.connect(settings.s3, stack, part_bytes=settings.imports.part_bytes)
    imports_api = imports.router(import_store, import_files, idempotency, auth=auth, settings=settings.imports)
    erp_invoices = ERP_INVOICES.physical(settings.kafka.topic_prefix)

    async def indexes(stopping: asyncio.Event) -> None:
        """Create the indexes once MongoDB answers, then idle until stop (a task that ends stops the service)."""
        delay = 1.0
        while not stopping.is_set():
            try:
                await ensure_indexes(db)
                break
            except Exception as e:
                if classify(e)[0] is not ErrorKind.TRANSIENT:
                    raise
                log.warning("cannot create ingest's MongoDB indexes yet; retrying", extra={"delay_s": delay})
                try:
                    await asyncio.wait_for(stopping.wait(), delay)
                except TimeoutError:
                    delay = min(delay * 2, INDEX_RETRY_MAX_S)
        await stopping.wait()

    async def mongo_ok() -> None:
        await ping(mongo)

    import_worker = imports.import_worker(
        import_store,
        import_files,
        publisher,
        topic=erp_invoices,
        settings=settings.imports,
        allow_test_domains=settings.allow_test_email_domains,
    )
    tasks: list[BackgroundTask] = [indexes, import_worker]
    if settings.sftp.enabled:
        tasks.append(
            sftp_task(
                settings.sftp,
                sender=publisher,
                topic=erp_invoices,
                store=store,
                allow_test_domains=settings.allow_test_email_domains,
                max_document_bytes=settings.documents_max_bytes,
            )
        )
    return Wiring(
        routes={
            "erp.invoices": Batched(handlers.on_erp_invoices),
            "erp.payments": Batched(handlers.on_erp_payments),
            "erp.cancellations": Batched(handlers.on_erp_cancellations),
        },
        checks={"mongo": mongo_ok},
        routers=[api, uploads, imports_api],
        tasks=tasks,
    )
