"""The CPU-bound part of rendering, as one picklable function for the worker processes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final, get_args

from factura.common.events import InvoiceCreatedV1, parse_event
from factura.common.schemas import EXAMPLES_DIR
from factura.common.tenants import Seller, TenantConfig
from factura.renderer.document import layout, render_html
from factura.renderer.einvoice import build_cii_xml, write_facturx
from factura.renderer.limits import check_input, check_pages
from factura.renderer.settings import RenderLimits
from factura.renderer.signing import SigningJob, sign_and_stamp
from factura.renderer.typst_engine import render_typst

#: The engines a tenant can choose (``TenantConfig.engine``): the values of the ``engine`` label of
#: ``factura_render_seconds``, one series each.
ENGINES: Final[tuple[str, ...]] = get_args(TenantConfig.model_fields["engine"].annotation)
#: The engine of a tenant that names none.
ENGINE: Final[str] = TenantConfig.model_fields["engine"].default


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
    #: The engine that rendered it (the tenant's), for the ``engine`` label of the render metric.
    engine: str = ENGINE


def produce(
    invoice: InvoiceCreatedV1, tenant: TenantConfig, limits: RenderLimits, signing: SigningJob | None = None
) -> Produced:
    """Limits → EN 16931 XML (if configured) → the tenant's engine: HTML → layout → page limit → PDF
    with WeasyPrint, or one Typst compile then the page limit; PDF/A-3b with the XML embedded when
    the tenant issues Factur-X. Then, with a ``signing`` job, the PAdES signature and the detached
    timestamp (factura.renderer.signing).

    Raises :class:`~factura.renderer.limits.DocumentRejected` for an invoice that must not become a
    document (or a tenant signing setting that cannot be used), :class:`~factura.renderer.einvoice.EInvoiceError`
    if the XML cannot be built or validated, :class:`~factura.renderer.signing.TimestampUnavailable`
    while the TSA cannot give a usable timestamp.
    """
    started = time.perf_counter()
    check_input(invoice, limits)
    seller = tenant.seller if tenant.einvoice != "none" else None
    xml = build_cii_xml(invoice, seller) if seller is not None else None
    if tenant.engine == "typst":
        pdf, pages = render_typst(invoice, tenant, xml)
        check_pages(pages, limits)
    else:
        document = layout(render_html(invoice, tenant), tenant, pdf_a=xml is not None)
        pages = len(document.pages)
        check_pages(pages, limits)
        # Tagged (structure tree, /Marked): readable by assistive technology, at no measurable cost.
        pdf = document.write_pdf(pdf_tags=True) if xml is None else write_facturx(document, xml)
    seconds = time.perf_counter() - started
    if signing is None:
        return Produced(pdf, xml, pages, seconds, engine=tenant.engine)
    signed = sign_and_stamp(pdf, signing)
    return Produced(signed.pdf, xml, pages, seconds, signed.timestamp, tenant.engine)
