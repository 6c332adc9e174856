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
        tenant = self._tenants.get(event.tenant_id)
        # Look for a previous run's record while rendering: redeliveries are rare, so the hot
        # path should not wait for that S3 round trip before starting the CPU work.
        recorded = asyncio.ensure_future(self._recorded(event))
        try:
            outcome: Files | DocumentRejected | EInvoiceError = await self._files(event.data, tenant)
        except (DocumentRejected, EInvoiceError) as e:
            outcome = e
        except BaseException:
            recorded.cancel()
            raise
        previous = await recorded
        if previous is not None:
            log.info("already rendered; re-publishing the recorded event", extra={"event_id": str(event.event_id)})
            await self._publisher.publish(previous)
        elif isinstance(outcome, Files):
            await self._publisher.publish(await self._store_files(event, tenant, outcome))
            DOCUMENTS.labels(source=outcome.source, outcome="stored").inc()
        else:
            reasons = (
                outcome.reasons
                if isinstance(outcome, DocumentRejected)
                else [FieldError(field="$", message=str(outcome))]
            )
            await self._reject(message, reasons)

    def _manifest_key(self, event: Envelope[InvoiceCreatedV1]) -> str:
        invoice = event.data
        return document_key(event.tenant_id, invoice.issue_date, invoice.invoice_number, "rendered.json")

    async def _recorded(self, event: Envelope[InvoiceCreatedV1]) -> Envelope[Any] | None:
        """The ``invoice.rendered`` a previous delivery of this very event already stored, if any."""
        invoice = event.data
        key = document_key(event.tenant_id, invoice.issue_date, invoice.invoice_number, "rendered.json")
        previous = await self._store.get_if_exists(key)
        if previous is None:
            return None
        recorded = parse_event(previous)
        return recorded if recorded.causation_id == event.event_id else None

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

        def key(suffix: str) -> str:
            return document_key(event.tenant_id, invoice.issue_date, invoice.invoice_number, suffix)

        def ref(suffix: str, body: bytes, content_type: ContentType) -> DocumentRef:
            return DocumentRef(
                bucket=self._store.bucket,
                key=key(suffix),
                sha256=hashlib.sha256(body).hexdigest(),
                size_bytes=len(body),
                content_type=content_type,
                filename=f"{name}.{suffix}",
            )

        objects: list[tuple[str, bytes, str]] = [("pdf", files.pdf, "application/pdf")]
        if files.xml is not None:
            objects.append(("xml", files.xml, "application/xml"))
        pdf = document = ref("pdf", files.pdf, "application/pdf")
        if tenant.packaging == "zip":
            entries = [(f"{name}.pdf", files.pdf)]
            entries += [(f"{name}.xml", files.xml)] if files.xml is not None else []
            package = build_zip(entries + files.annexes, invoice.issue_date)
            objects.append(("zip", package, "application/zip"))
            document = ref("zip", package, "application/zip")
        rendered = child_of(
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
        # The manifest (the event itself) is written with the documents, all before publishing:
        # a crash after this point re-publishes the same event; before it, nothing was announced.
        objects.append(("rendered.json", rendered.model_dump_json().encode(), "application/json"))
        await asyncio.gather(
            *(
                self._store.put(
                    key(suffix),
                    body,
                    content_type=content_type,
                    sha256=hashlib.sha256(body).hexdigest(),
                    metadata=meta,
                    retention_days=tenant.retention_days,
                )
                for suffix, body, content_type in objects
            )
        )
        return rendered

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
