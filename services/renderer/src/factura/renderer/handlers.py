"""Renderer handler: invoice.created → document(s) in S3 → invoice.rendered (or invoice.rejected).

Documents are immutable. Each rendered version is stored in its own folder, named by a hash of
its files (:func:`~factura.common.storage.version_id`), and is never overwritten. A corrected
invoice re-sent with the same number becomes a second version beside the first, so the PDF the
customer already received, and any link to it, stay as they were.

Idempotent across redeliveries: the published event is saved as a manifest keyed by the
``invoice.created`` event id, written only after every document is stored. A redelivered event
finds it and re-publishes the same event instead of rendering again (a fresh render would have a
different hash than the one already on record).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

from prometheus_client import Histogram

from factura.common.envelope import Envelope, child_of, utcnow
from factura.common.events import (
    CURRENT_VERSION,
    DocumentRef,
    FieldError,
    InvoiceCreatedV1,
    InvoiceRejectedV2,
    InvoiceRenderedV1,
    parse_event,
    summary_of,
)
from factura.common.kafka.consumer import Message
from factura.common.kafka.producer import Publisher
from factura.common.metrics import PREFIX, counter
from factura.common.storage import (
    DocumentStore,
    ObjectExists,
    document_key,
    manifest_key,
    safe_name,
    version_id,
)
from factura.common.tenants import TenantConfig, TenantDirectory
from factura.renderer.einvoice import EInvoiceError
from factura.renderer.limits import DocumentRejected
from factura.renderer.packaging import build_zip
from factura.renderer.pipeline import ENGINES, Produced, produce
from factura.renderer.pool import RenderPool, WorkerDied
from factura.renderer.settings import RenderLimits
from factura.renderer.signing import SigningJobs, TimestampUnavailable
from factura.renderer.supplied import fetch_supplied

PRODUCER = "renderer"
DOCUMENTS = counter("documents_total", "Invoice documents by source and outcome.", ("source", "outcome"))
RENDERED = counter(
    "invoices_rendered_total",
    "invoice.created events done with: rendered (a PDF made here), supplied (the ERP's own PDF) or rejected.",
    ("outcome",),
)
RENDER_SECONDS = Histogram(
    f"{PREFIX}render_seconds",
    "Time to render one invoice in a worker (HTML, layout, PDF and e-invoice XML), by engine.",
    ["engine"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TIMESTAMP_FAILURES = counter(
    "timestamp_failures_total",
    "Renders paused because the TSA was unreachable (outage) or answered nonsense (bad_answer).",
    ("kind",),
)
#: The detached RFC 3161 token beside the PDF: ``<pdf key>.tsr`` (a DER TimeStampResp).
TIMESTAMP_SUFFIX = ".tsr"
TIMESTAMP_CONTENT_TYPE = "application/timestamp-reply"
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
    #: RFC 3161 TimeStampResp over SHA-256(pdf), for tenants that timestamp (rendered documents only).
    timestamp: bytes | None = None


@dataclass(frozen=True)
class StoredFile:
    suffix: str
    body: bytes
    content_type: str
    sha256: str


class RenderHandlers:
    def __init__(
        self,
        publisher: Publisher,
        store: DocumentStore,
        tenants: TenantDirectory,
        pool: RenderPool,
        limits: RenderLimits,
        *,
        signing: SigningJobs | None = None,
    ) -> None:
        self._publisher = publisher
        self._signing = signing
        self._store = store
        self._tenants = tenants
        self._pool = pool
        self._limits = limits
        self._worker_deaths: dict[tuple[str, str, date], int] = {}
        for engine in ENGINES:  # every series a panel or an alert reads exists from startup
            RENDER_SECONDS.labels(engine)
        for outcome in ("rendered", "supplied", "rejected"):
            RENDERED.labels(outcome)
        for kind in ("outage", "bad_answer"):
            TIMESTAMP_FAILURES.labels(kind)

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
            recorded.add_done_callback(_retrieve)  # the render's error is the one to report
            raise
        previous = await recorded
        if previous is not None:
            log.info("already rendered; re-publishing the recorded event", extra={"event_id": str(event.event_id)})
            await self._publisher.publish(previous)
        elif isinstance(outcome, Files):
            await self._publisher.publish(await self._store_files(event, tenant, outcome))
            DOCUMENTS.labels(source=outcome.source, outcome="stored").inc()
            RENDERED.labels("rendered" if outcome.source == "rendered" else "supplied").inc()
        else:
            reasons = (
                outcome.reasons
                if isinstance(outcome, DocumentRejected)
                else [FieldError(field="$", message=str(outcome))]
            )
            await self._reject(message, reasons)

    def _manifest_key(self, event: Envelope[InvoiceCreatedV1]) -> str:
        invoice = event.data
        return manifest_key(event.tenant_id, invoice.issue_date, invoice.invoice_number, event.event_id)

    async def _recorded(self, event: Envelope[InvoiceCreatedV1]) -> Envelope[Any] | None:
        """The ``invoice.rendered`` a previous delivery of this very event already stored, if any."""
        key = self._manifest_key(event)
        previous = await self._store.get_if_exists(key)
        if previous is None:
            return None
        recorded = parse_event(previous)
        if recorded.causation_id != event.event_id:
            raise RuntimeError(f"manifest {key} records the render of event {recorded.causation_id}")
        return recorded

    async def _files(self, invoice: InvoiceCreatedV1, tenant: TenantConfig) -> Files:
        if invoice.supplied_document is not None:
            supplied = await fetch_supplied(
                self._store, tenant.tenant_id, invoice.supplied_document, self._limits.max_supplied_bytes
            )
            einvoice: EInvoice = "erp_supplied" if supplied.xml else "none"
            return Files(supplied.pdf, supplied.xml, supplied.annexes, "erp_supplied", einvoice)
        produced = await self._render(invoice, tenant)
        rendered: EInvoice = "factur-x-en16931" if produced.xml else "none"
        return Files(produced.pdf, produced.xml, [], "rendered", rendered, produced.timestamp)

    async def _render(self, invoice: InvoiceCreatedV1, tenant: TenantConfig) -> Produced:
        """Render in the pool; an invoice in flight at every one of several worker deaths is rejected.

        Each death is first a transient error (the pool is replaced and the invoice retried), since
        a worker also dies for reasons that are not the invoice's (another job, the OOM killer).
        Counts live in this process only: a restart forgives, which errs on the side of retrying.
        """
        key = (tenant.tenant_id, invoice.invoice_number, invoice.issue_date)
        # ERP-supplied documents are passed on as they came; only what is rendered here is signed.
        signing = self._signing.job(tenant) if self._signing is not None else None
        try:
            produced = await self._pool.run(produce, invoice, tenant, self._limits, signing)
        except TimestampUnavailable as e:
            TIMESTAMP_FAILURES.labels("bad_answer" if e.bad_answer else "outage").inc()
            if e.bad_answer:  # not a routine outage: the TSA (or TSA__URL / TSA__CA_FILE) needs fixing
                log.error("the TSA answered nonsense; rendering waits for it", extra={"detail": e.detail})
            raise
        except WorkerDied:
            deaths = self._worker_deaths.pop(key, 0) + 1
            if deaths >= self._limits.max_worker_crashes:
                message = f"its render worker died on each of {deaths} attempts (a crash or out of memory)"
                raise DocumentRejected([FieldError(field="$", message=message)]) from None
            self._worker_deaths[key] = deaths
            while len(self._worker_deaths) > 1000:  # bounded: the oldest entries go first
                del self._worker_deaths[next(iter(self._worker_deaths))]
            raise
        self._worker_deaths.pop(key, None)
        RENDER_SECONDS.labels(produced.engine).observe(produced.seconds)
        return produced

    async def _store_files(
        self, event: Envelope[InvoiceCreatedV1], tenant: TenantConfig, files: Files
    ) -> Envelope[Any]:
        """Store the documents, then the manifest; return the event to publish.

        The order is the point. The manifest (the event itself) is written only after every
        document upload is confirmed, and the caller publishes only after the manifest. A failure
        before the manifest leaves nothing announced: the retry renders again, and if its bytes
        differ they go to a new version folder while the unannounced one expires with its
        retention tag. A failure after it makes the retry re-publish the recorded event.
        """
        invoice = event.data
        name = safe_name(invoice.invoice_number)
        meta = {
            "tenant-id": event.tenant_id,
            "invoice-id": invoice.invoice_number,
            "source-event-id": str(event.event_id),
        }
        bodies: list[tuple[str, bytes, str]] = [("pdf", files.pdf, "application/pdf")]
        if files.xml is not None:
            bodies.append(("xml", files.xml, "application/xml"))
        if tenant.packaging == "zip":
            entries = [(f"{name}.pdf", files.pdf)]
            entries += [(f"{name}.xml", files.xml)] if files.xml is not None else []
            package = build_zip(entries + files.annexes, invoice.issue_date)
            bodies.append(("zip", package, "application/zip"))
        stored = {s: StoredFile(s, body, ct, hashlib.sha256(body).hexdigest()) for s, body, ct in bodies}
        version = version_id((f.suffix, f.sha256) for f in stored.values())

        def key(suffix: str) -> str:
            return document_key(event.tenant_id, invoice.issue_date, invoice.invoice_number, suffix, version=version)

        stamp_key = key("pdf") + TIMESTAMP_SUFFIX if files.timestamp is not None else None

        def ref(suffix: str, content_type: ContentType) -> DocumentRef:
            return DocumentRef(
                timestamp_key=stamp_key,
                bucket=self._store.bucket,
                key=key(suffix),
                sha256=stored[suffix].sha256,
                size_bytes=len(stored[suffix].body),
                content_type=content_type,
                filename=f"{name}.{suffix}",
            )

        document = ref("zip", "application/zip") if tenant.packaging == "zip" else ref("pdf", "application/pdf")
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
                pdf_sha256=stored["pdf"].sha256,
                retention_days=tenant.retention_days,
                expires_on=utcnow().date() + timedelta(days=tenant.retention_days),
                tenant_config_version=tenant.version,
            ),
            producer=PRODUCER,
        )
        # Every upload settles before we look at the results: none is still running once this
        # handler has returned or raised.
        uploads = [(key(f.suffix), f) for f in stored.values()]
        if stamp_key is not None and files.timestamp is not None:
            token = files.timestamp
            uploads.append(
                (stamp_key, StoredFile("tsr", token, TIMESTAMP_CONTENT_TYPE, hashlib.sha256(token).hexdigest()))
            )
        results = await asyncio.gather(
            *(self._put_document(k, f, meta, tenant.retention_days) for k, f in uploads),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        manifest = rendered.model_dump_json().encode()
        try:
            await self._store.put(
                self._manifest_key(event),
                manifest,
                content_type="application/json",
                sha256=hashlib.sha256(manifest).hexdigest(),
                metadata=meta,
                retention_days=tenant.retention_days,
            )
        except ObjectExists:
            # Another consumer of this very event (a zombie after a rebalance) recorded its version
            # first: announce that one, so every publication of this event names the same document.
            previous = await self._recorded(event)
            if previous is None:
                raise RuntimeError(f"manifest {self._manifest_key(event)} exists but could not be read") from None
            return previous
        return rendered

    async def _put_document(self, key: str, file: StoredFile, meta: dict[str, str], retention_days: int) -> None:
        """Store one document; an object already at its key must hold these very bytes."""
        try:
            await self._store.put(
                key,
                file.body,
                content_type=file.content_type,
                sha256=file.sha256,
                metadata=meta,
                retention_days=retention_days,
            )
            return
        except ObjectExists:
            pass
        # The folder is named by the files' hashes, so only the same bytes can be there already.
        existing = await self._store.stored_sha256(key)
        if existing != file.sha256:
            raise RuntimeError(f"{key} holds a document with sha256 {existing}, not {file.sha256}; left as it is")

    async def _reject(self, message: Message[Envelope[InvoiceCreatedV1]], reasons: list[FieldError]) -> None:
        event = message.value
        DOCUMENTS.labels(source="any", outcome="rejected").inc()
        RENDERED.labels("rejected").inc()
        log.warning(
            "invoice rejected at render", extra={"reasons": "; ".join(f"{r.field}: {r.message}" for r in reasons)}
        )
        rejected: Envelope[Any] = child_of(
            event,
            type="invoice.rejected",
            schema_version=CURRENT_VERSION["invoice.rejected"],
            data=InvoiceRejectedV2(
                source_topic=message.topic.name,
                source_offset=message.source,
                stage="render",
                reasons=reasons,
                erp_reference=event.data.invoice_number,
            ),
            producer=PRODUCER,
        )
        await self._publisher.publish(rejected)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a side task's failure as seen once its caller has another error to raise."""
    if not task.cancelled():
        task.exception()
