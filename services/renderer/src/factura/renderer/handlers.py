"""Renderer handler: invoice.created → document(s) in S3 → invoice.rendered (or invoice.rejected).

Idempotent across redeliveries: the published event is saved beside the documents as a
manifest; a redelivered ``invoice.created`` finds it and re-publishes the same event instead of
rendering again (a fresh render would have a different hash than the one already on record).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from factura.common.envelope import Envelope, child_of, utcnow
from factura.common.events import (
    CURRENT_VERSION,
    DocumentRef,
    FieldError,
    InvoiceCreatedV1,
    InvoiceRejectedV1,
    InvoiceRenderedV1,
    parse_event,
    summary_of,
)
from factura.common.kafka.consumer import Message
from factura.common.kafka.producer import Publisher
from factura.common.metrics import counter
from factura.common.storage import DocumentStore, document_key, safe_name
from factura.common.tenants import TenantConfig, TenantDirectory
from factura.renderer.einvoice import EInvoiceError
from factura.renderer.limits import DocumentRejected
from factura.renderer.packaging import build_zip
from factura.renderer.pipeline import produce
from factura.renderer.pool import RenderPool
from factura.renderer.settings import RenderLimits
from factura.renderer.supplied import fetch_supplied

PRODUCER = "renderer"
DOCUMENTS = counter("documents_total", "Invoice documents by source and outcome.", ("source", "outcome"))
log = logging.getLogger(__name__)
EInvoice = Literal["none", "factur-x-en16931", "erp_supplied"]
ContentType = Literal["application/pdf", "application/zip"]


@dataclass(frozen=True)
class Files:
    pdf: bytes
    xml: bytes | None
    annexes: list[tuple[str, bytes]]
    source: Literal["rendered", "erp_supplied"]
    einvoice: EInvoice


class RenderHandlers:
    def __init__(
        self,
        publisher: Publisher,
        store: DocumentStore,
        tenants: TenantDirectory,
        pool: RenderPool,
        limits: RenderLimits,
    ) -> None:
        self._publisher = publisher
        self._store = store
        self._tenants = tenants
        self._pool = pool
        self._limits = limits

    async def on_invoice_created(self, message: Message[Envelope[InvoiceCreatedV1]]) -> None:
        event = message.value
        invoice = event.data
        manifest_key = document_key(event.tenant_id, invoice.issue_date, invoice.invoice_number, "rendered.json")
        previous = await self._store.get_if_exists(manifest_key)
        if previous is not None:
            recorded = parse_event(previous)
            if recorded.causation_id == event.event_id:
                log.info("already rendered; re-publishing the recorded event", extra={"key": manifest_key})
                await self._publisher.publish(recorded)
                return
        tenant = self._tenants.get(event.tenant_id)
        try:
            files = await self._files(invoice, tenant)
        except (DocumentRejected, EInvoiceError) as e:
            reasons = e.reasons if isinstance(e, DocumentRejected) else [FieldError(field="$", message=str(e))]
            await self._reject(message, reasons)
            return
        rendered = await self._store_files(event, tenant, files)
        record = rendered.model_dump_json().encode()
        await self._store.put(
            manifest_key,
            record,
            content_type="application/json",
            sha256=hashlib.sha256(record).hexdigest(),
            metadata={"tenant-id": event.tenant_id},
            retention_days=tenant.retention_days,
        )
        await self._publisher.publish(rendered)
        DOCUMENTS.labels(source=files.source, outcome="stored").inc()

    async def _files(self, invoice: InvoiceCreatedV1, tenant: TenantConfig) -> Files:
        if invoice.supplied_document is not None:
            supplied = await fetch_supplied(
                self._store, tenant.tenant_id, invoice.supplied_document, self._limits.max_supplied_bytes
            )
            einvoice: EInvoice = "erp_supplied" if supplied.xml else "none"
            return Files(supplied.pdf, supplied.xml, supplied.annexes, "erp_supplied", einvoice)
        produced = await self._pool.run(produce, invoice, tenant, self._limits)
        return Files(produced.pdf, produced.xml, [], "rendered", "factur-x-en16931" if produced.xml else "none")

    async def _store_files(
        self, event: Envelope[InvoiceCreatedV1], tenant: TenantConfig, files: Files
    ) -> Envelope[InvoiceRenderedV1]:
        invoice = event.data
        name = safe_name(invoice.invoice_number)
        meta = {
            "tenant-id": event.tenant_id,
            "invoice-id": invoice.invoice_number,
            "source-event-id": str(event.event_id),
        }

        async def put(suffix: str, body: bytes, content_type: str) -> tuple[str, str]:
            key = document_key(event.tenant_id, invoice.issue_date, invoice.invoice_number, suffix)
            sha = hashlib.sha256(body).hexdigest()
            await self._store.put(
                key, body, content_type=content_type, sha256=sha, metadata=meta, retention_days=tenant.retention_days
            )
            return key, sha

        def ref(suffix: str, body: bytes, stored: tuple[str, str], content_type: ContentType) -> DocumentRef:
            key, sha = stored
            return DocumentRef(
                bucket=self._store.bucket,
                key=key,
                sha256=sha,
                size_bytes=len(body),
                content_type=content_type,
                filename=f"{name}.{suffix}",
            )

        package: bytes | None = None
        uploads = [put("pdf", files.pdf, "application/pdf")]
        if files.xml is not None:
            uploads.append(put("xml", files.xml, "application/xml"))
        if tenant.packaging == "zip":
            entries = [(f"{name}.pdf", files.pdf)]
            entries += [(f"{name}.xml", files.xml)] if files.xml is not None else []
            package = build_zip(entries + files.annexes, invoice.issue_date)
            uploads.append(put("zip", package, "application/zip"))
        stored = await asyncio.gather(*uploads)  # independent objects: upload them concurrently
        pdf = ref("pdf", files.pdf, stored[0], "application/pdf")
        document = ref("zip", package, stored[-1], "application/zip") if package is not None else pdf
        return child_of(
            event,
            type="invoice.rendered",
            schema_version=CURRENT_VERSION["invoice.rendered"],
            data=InvoiceRenderedV1(
                document=document,
                invoice=summary_of(invoice),
                source=files.source,
                packaging=tenant.packaging,
                einvoice=files.einvoice,
                pdf_sha256=pdf.sha256,
                retention_days=tenant.retention_days,
                expires_on=utcnow().date() + timedelta(days=tenant.retention_days),
                tenant_config_version=tenant.version,
            ),
            producer=PRODUCER,
        )

    async def _reject(self, message: Message[Envelope[InvoiceCreatedV1]], reasons: list[FieldError]) -> None:
        event = message.value
        DOCUMENTS.labels(source="any", outcome="rejected").inc()
        log.warning(
            "invoice rejected at render", extra={"reasons": "; ".join(f"{r.field}: {r.message}" for r in reasons)}
        )
        rejected: Envelope[Any] = child_of(
            event,
            type="invoice.rejected",
            schema_version=CURRENT_VERSION["invoice.rejected"],
            data=InvoiceRejectedV1(
                source_topic=message.topic.name,
                source_offset=message.source,
                stage="render",
                reasons=reasons,
                erp_reference=event.data.invoice_number,
            ),
            producer=PRODUCER,
        )
        await self._publisher.publish(rejected)
