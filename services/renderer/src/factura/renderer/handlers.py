"""Renderer handler: invoice.created → PDF → S3 → invoice.rendered."""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor

from factura.common.envelope import Envelope, child_of
from factura.common.events import CURRENT_VERSION, DocumentRef, InvoiceCreatedV1, InvoiceRenderedV1, summary_of
from factura.common.kafka.consumer import Message
from factura.common.kafka.producer import Publisher
from factura.common.storage import DocumentStore, document_key
from factura.renderer.document import render_pdf

PRODUCER = "renderer"


class RenderHandlers:
    def __init__(self, publisher: Publisher, store: DocumentStore) -> None:
        self._publisher = publisher
        self._store = store
        # WeasyPrint is CPU-bound and not meant for concurrent use: one render at a time, off the loop.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    async def on_invoice_created(self, message: Message[Envelope[InvoiceCreatedV1]]) -> None:
        event = message.value
        invoice = event.data
        pdf = await asyncio.get_running_loop().run_in_executor(self._pool, render_pdf, invoice)
        sha256 = hashlib.sha256(pdf).hexdigest()
        key = document_key(event.tenant_id, invoice.issue_date, invoice.invoice_number)
        # Re-rendering a redelivered event overwrites the same key: idempotent by construction.
        await self._store.put_pdf(
            key, pdf, sha256, {"tenant-id": event.tenant_id, "invoice-id": invoice.invoice_number}
        )
        document = DocumentRef(bucket=self._store.bucket, key=key, sha256=sha256, size_bytes=len(pdf))
        await self._publisher.publish(
            child_of(
                event,
                type="invoice.rendered",
                schema_version=CURRENT_VERSION["invoice.rendered"],
                data=InvoiceRenderedV1(document=document, invoice=summary_of(invoice)),
                producer=PRODUCER,
            )
        )
