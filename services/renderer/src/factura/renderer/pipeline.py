"""The CPU-bound part of rendering, as one picklable function for the worker processes."""

from __future__ import annotations

import time
from dataclasses import dataclass

from factura.common.events import InvoiceCreatedV1, parse_event
from factura.common.schemas import EXAMPLES_DIR
from factura.common.tenants import Seller, TenantConfig
from factura.renderer.document import layout, render_html
from factura.renderer.einvoice import build_cii_xml, embed_xml
from factura.renderer.limits import check_input, check_pages
from factura.renderer.settings import RenderLimits
from factura.renderer.signing import SigningJob, sign_and_stamp

#: What turns an invoice into a PDF here (the ``engine`` label of ``factura_render_seconds``).
ENGINE = "weasyprint"


def warm_up_job() -> tuple[InvoiceCreatedV1, TenantConfig, RenderLimits]:
    """A representative job: the checked-in example invoice, issued as a Factur-X e-invoice."""
    invoice = parse_event((EXAMPLES_DIR / "invoice.created.v1.json").read_bytes()).data
    seller = Seller(
        legal_name="Warm-up S.A.", vat_id="ESA00000000", street="-", city="-", postcode="00000", country="ES"
    )
    return invoice, TenantConfig(tenant_id="warm-up", einvoice="factur-x-en16931", seller=seller), RenderLimits()


@dataclass(frozen=True)
class Produced:
    pdf: bytes
    xml: bytes | None
    pages: int
    #: CPU time of the whole render in the worker (e-invoice XML included), without the pool's queue
    #: and without signing (whose TSA round trip is network time).
    seconds: float = 0.0
    #: RFC 3161 TimeStampResp (DER) over SHA-256(pdf), when the tenant timestamps its documents.
    timestamp: bytes | None = None


def produce(
    invoice: InvoiceCreatedV1, tenant: TenantConfig, limits: RenderLimits, signing: SigningJob | None = None
) -> Produced:
    """Limits → HTML → layout → page limit → PDF (PDF/A-3b with embedded EN 16931 XML if configured),
    then, with a ``signing`` job, the PAdES signature and the detached timestamp (factura.renderer.signing).

    Raises :class:`~factura.renderer.limits.DocumentRejected` for an invoice that must not become a
    document (or a tenant signing setting that cannot be used), :class:`~factura.renderer.einvoice.EInvoiceError`
    if the XML cannot be built or validated, :class:`~factura.renderer.signing.TimestampUnavailable`
    while the TSA cannot give a usable timestamp.
    """
    started = time.perf_counter()
    check_input(invoice, limits)
    einvoice = tenant.einvoice != "none" and tenant.seller is not None
    document = layout(render_html(invoice, tenant), tenant, pdf_a=einvoice)
    check_pages(len(document.pages), limits)
    xml: bytes | None = None
    if not einvoice or tenant.seller is None:
        pdf = document.write_pdf()
    else:
        xml = build_cii_xml(invoice, tenant.seller)
        pdf = embed_xml(document.write_pdf(pdf_variant="pdf/a-3b"), xml)
    seconds = time.perf_counter() - started
    if signing is None:
        return Produced(pdf, xml, len(document.pages), seconds)
    signed = sign_and_stamp(pdf, signing)
    return Produced(signed.pdf, xml, len(document.pages), seconds, signed.timestamp)
