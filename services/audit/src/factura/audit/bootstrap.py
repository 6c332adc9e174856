"""Wire audit: the chained record store, batched handlers on every event and DLQ topic, signed
checkpoints, API keys, and the compliance API that records every call it answers."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from pymongo.asynchronous.database import AsyncDatabase

from factura.audit import web
from factura.audit.api import READ_ROLES, AccessHook, ExportChain, VerifyChain, audited_route, plain_query, router
from factura.audit.chain import ChainWriter
from factura.audit.checkpoints import Checkpointer, Signer
from factura.audit.daily import DailyReports, daily_router
from factura.audit.erase import Erasure, IdleContacts, erase_router
from factura.audit.evidence import EvidenceBundles
from factura.audit.handlers import AuditHandlers
from factura.audit.queries import AuditQueries
from factura.audit.records import UNIDENTIFIED_TENANT, access, reveal
from factura.audit.retention import RetentionTask
from factura.audit.settings import Settings
from factura.audit.store import AuditDb
from factura.audit.verify import CachedVerifier, export_chain
from factura.audit.watch import ChainWatch
from factura.common.apikeys import COLLECTION, ApiKeyStore, Principal
from factura.common.apikeys.http import authenticator
from factura.common.envelope import TENANT_PATTERN
from factura.common.kafka.consumer import Batched, Route
from factura.common.kafka.producer import Publisher
from factura.common.lease import Lease
from factura.common.mongo import Document, create_client, database, ping, process_owner
from factura.common.pii import COLLECTION as CUSTOMER_KEYS
from factura.common.pii import FieldCipher, NoKeyStore, field_cipher
from factura.common.runtime import Wiring
from factura.common.storage import DocumentStore
from factura.common.tenants import TenantDirectory
from factura.common.topics import dead_letter_topics, event_topics

log = logging.getLogger(__name__)


def access_recorder(writer: ChainWriter) -> AccessHook:
    """Every call by an API key becomes a record: in the queried tenant's chain when the key may
    read that tenant, else in the ``unidentified`` chain (a key refused for tenant B must not write
    into B's chain). Calls without a valid key are not chained: they name no one, and an anonymous
    caller must not be able to grow the audit trail; the key store counts them
    (``factura_api_key_rejections_total``) and logs them."""

    async def on_access(principal: Principal | None, request: Request, status: int) -> None:
        if principal is None:
            return
        tenant = request.query_params.get("tenant_id", "")
        allowed = principal.has_role(*READ_ROLES) and principal.may_read(tenant)
        if not allowed or not re.fullmatch(TENANT_PATTERN, tenant):
            tenant = UNIDENTIFIED_TENANT
        record = access(
            record_id=f"access:{uuid.uuid4()}",
            tenant_id=tenant,
            key_id=principal.key_id,
            role=principal.role.value,
            method=request.method,
            path=request.url.path,
            query=str(request.url.query)[:2000],
            status=status,
        )
        await writer.append([record])

    return on_access


#: The verifier's lease, in a collection of its own (as the scheduler's campaign lease).
VERIFY_LEASES = "audit_leases"
VERIFY_LEASE = "audit-chain-verify"


async def ensure_indexes(db: AsyncDatabase[Document]) -> None:
    """Audit's indexes: at start, and by ``python -m factura.audit indexes`` (the Kubernetes index
    Job, before a rollout; it needs no signing key)."""
    await AuditDb.of(db).ensure_indexes()
    await ApiKeyStore(db[COLLECTION]).ensure_indexes()
    await FieldCipher(db[CUSTOMER_KEYS], NoKeyStore()).ensure_indexes()


async def bootstrap(settings: Settings, publisher: Publisher, stack: AsyncExitStack) -> Wiring:
    signer = Signer.from_file(settings.signer_path())  # first: no key, no start
    mongo = create_client(settings.mongo)
    stack.push_async_callback(mongo.close)
    mongo_db = database(mongo, settings.mongo)
    await ensure_indexes(mongo_db)
    db = AuditDb.of(mongo_db)
    keys = ApiKeyStore(mongo_db[COLLECTION])
    writer = ChainWriter(db.records, db.tombstones)
    # Unconfigured KEKs fall back to a key derived from the signer (development only).
    cipher = field_cipher(mongo_db[CUSTOMER_KEYS], settings.pii, signer.derived_secret("pii-kek"))
    handlers = AuditHandlers(writer, cipher)
    checkpointer = Checkpointer(db, writer, signer, settings.checkpoint_interval_s)
    tenants = TenantDirectory(settings.tenants_dir)
    retention = RetentionTask(
        db,
        signer,
        lambda tenant: tenants.get(tenant).audit,
        settings.retention_interval_s,
        contacts=IdleContacts(cipher, writer),
    )
    batch = settings.batch_max_records
    routes: dict[str, Route] = {
        **{topic.name: Batched(handlers.on_events, batch) for topic in event_topics()},
        **{topic.name: Batched(handlers.on_dead_letters, batch) for topic in dead_letter_topics()},
    }

    keyring = settings.keyring()
    verify = CachedVerifier(db, keyring, settings.verify_cache_s)
    # One verifier among the replicas; the term outlasts a tenant's walk (~70 s per million records).
    verifier_lease = Lease(mongo_db[VERIFY_LEASES], VERIFY_LEASE, owner=process_owner(), ttl=timedelta(minutes=15))
    watch = ChainWatch(db, keyring, settings.verify_interval_s, settings.verify_full_interval_s, lease=verifier_lease)

    def export(tenant: str, from_seq: int, to_seq: int | None) -> AsyncIterator[bytes]:
        return export_chain(db, tenant, keyring, from_seq, to_seq)

    s3 = settings.s3
    documents = await DocumentStore.connect(s3, stack) if s3 is not None else None

    async def revealed(doc: Document, raw: Any) -> Any:
        return await reveal(doc, raw, cipher)

    evidence = EvidenceBundles(db, keyring, documents, revealed)

    async def mongo_ok() -> None:
        await ping(mongo)

    reports = DailyReports(db.records, mongo_db["audit_daily_reports"], tenants, publisher)
    return Wiring(
        routes=routes,
        checks={"mongo": mongo_ok},
        routers=http_routers(
            db,
            keys,
            tenants,
            cursor_key=signer.derived_secret("cursor"),
            on_access=access_recorder(writer),
            verify=verify,
            export=export,
            cipher=cipher,
            writer=writer,
            evidence=evidence,
        ),
        tasks=[checkpointer.run, retention.run, reports.run, watch.run],
    )


def http_routers(
    db: AuditDb,
    keys: ApiKeyStore,
    tenants: TenantDirectory,
    *,
    cursor_key: bytes,
    on_access: AccessHook,
    verify: VerifyChain,
    export: ExportChain,
    cipher: FieldCipher | None = None,
    writer: ChainWriter | None = None,
    evidence: EvidenceBundles | None = None,
) -> list[APIRouter]:
    """The compliance API (``/v1``, in the OpenAPI schema) and the compliance page (``/ui``).

    ``cipher`` decrypts contact data for readers and erases customers; without one (an OpenAPI
    schema build) the erase route still exists (erasing needs no KEK).
    ``writer`` records erasures (the service's own, so it shares its chains' group commit).
    ``evidence`` adds ``/v1/invoices/{id}/evidence`` (the bundles need the signing keys and S3)."""
    auth = authenticator(keys)
    api = router(
        db,
        auth=auth,
        cursor_key=cursor_key,
        on_access=on_access,
        verify=verify,
        export_chain=export,
        cipher=cipher,
        evidence=evidence,
    )
    shredder = Erasure(
        cipher or FieldCipher(db.records.database[CUSTOMER_KEYS], NoKeyStore()),
        AuditQueries(db.records),
        writer or ChainWriter(db.records, db.tombstones),
    )
    erase = erase_router(shredder, auth=auth, on_access=on_access)
    daily = daily_router(
        db.records, tenants, auth=auth, route_class=audited_route(on_access), dependencies=[Depends(plain_query)]
    )
    ui = web.router(db, keys=keys, cursor_key=cursor_key, on_access=on_access, verify=verify)
    return [api, erase, daily, ui]
