"""Invoice → HTML (sandboxed Jinja2, autoescaped, tenant-overridable) → PDF (WeasyPrint).

Everything here is synchronous and pure so it runs inside the render worker processes
(:mod:`factura.renderer.pool`): WeasyPrint is CPU-bound and single-threaded, so throughput comes
from one process per core.
"""

from __future__ import annotations

from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import segno
from jinja2 import ChoiceLoader, FileSystemLoader, PackageLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup
from weasyprint import HTML
from weasyprint.text.fonts import FontConfiguration

from factura.common.events import Customer, InvoiceCreatedV1, PostalAddress
from factura.common.locales import day, money, number, percent
from factura.common.tenants import HTML_TEMPLATE, TenantConfig
from factura.renderer.einvoice import vat_breakdown
from factura.renderer.fetcher import AssetFetcher
from factura.renderer.strings import CATEGORIES, LABELS, tax_id_label


@cache
def environment(template_dir: Path | None) -> SandboxedEnvironment:
    """One sandboxed environment per template folder: the tenant's overrides first, then ours."""
    loaders: list[Any] = [FileSystemLoader(template_dir)] if template_dir is not None else []
    loaders.append(PackageLoader("factura.renderer", "templates"))
    return SandboxedEnvironment(
        loader=ChoiceLoader(loaders),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
    )


def fiscal_qr(text: str) -> Markup:
    """The fiscal QR code as inline SVG (vector, so it scans at any size; no fetch, no image file).

    Error correction M, as Portaria 195/2020 (Portugal) and the VERI*FACTU order (Spain) ask; the
    template sizes it (at least 30 mm, both say). segno writes only its own markup, so it is safe
    to mark up; the text itself ends up as modules, never as markup.
    """
    svg = segno.make(text, error="m", micro=False).svg_inline(scale=1, border=4, omitsize=True)
    return Markup(svg)


def _address(address: PostalAddress | None, country: str | None) -> list[str]:
    """An address as the lines a letter shows: street lines, then postcode and city, then region and country."""
    if address is None:
        return [country] if country else []
    place = " ".join(part for part in (address.postcode, address.city) if part)
    region = ", ".join(part for part in (address.subdivision, country) if part)
    return [*address.lines, *(text for text in (place, region) if text)]


def _party_ids(lang: str, country: str | None, tax_id: str | None, registration: str | None) -> list[str]:
    t = LABELS[lang]
    ids = [f"{tax_id_label(lang, country)}: {tax_id}"] if tax_id else []
    return ids + ([f"{t['registration']}: {registration}"] if registration else [])


def _seller(invoice: InvoiceCreatedV1, tenant: TenantConfig, lang: str) -> dict[str, Any]:
    """The issuer from the tenant's ``[seller]``; what it lacks, from the ERP's ``seller`` details."""
    given = invoice.seller
    registration = given.registration_id if given else None
    if tenant.seller is not None:
        s = tenant.seller
        address = PostalAddress(lines=[s.street], city=s.city, postcode=s.postcode)
        return {
            "name": s.legal_name,
            "address": _address(address, s.country),
            "ids": _party_ids(lang, s.country, s.vat_id, registration),
        }
    country = given.country if given else None
    return {
        "name": invoice.seller_name,
        "address": _address(given.address, country) if given and (given.address or country) else [],
        "ids": _party_ids(lang, country, given.vat_id if given else None, registration),
    }


def _buyer(customer: Customer, lang: str) -> dict[str, Any]:
    return {
        "name": customer.name,
        "address": _address(customer.address, customer.country),
        "ids": _party_ids(lang, customer.country, customer.tax_id, customer.registration_id),
    }


def context(invoice: InvoiceCreatedV1, tenant: TenantConfig) -> dict[str, Any]:
    """Everything the template shows, already formatted for the customer's locale."""
    lang = invoice.customer.locale
    customer = invoice.customer
    names = CATEGORIES[lang]

    def cash(value: Decimal) -> str:
        return money(value, invoice.currency, customer)

    seller = _seller(invoice, tenant, lang)
    return {
        "locale": lang,
        "t": LABELS[lang],
        "invoice": invoice,
        "brand": tenant.branding,
        "logo": tenant.branding.logo,
        "seller": tenant.seller,
        "seller_name": seller["name"],
        "issuer": seller,
        "buyer": _buyer(customer, lang),
        "payment_url": tenant.payment_url(invoice),
        "issue_date": day(invoice.issue_date, customer),
        "due_date": day(invoice.due_date, customer),
        "delivery_date": day(invoice.delivery_date, customer)
        if invoice.delivery_date and invoice.delivery_date != invoice.issue_date
        else None,
        "lines": [
            {
                "description": line.description,
                "quantity": number(line.quantity, customer),
                "unit_price": cash(line.unit_price),
                "tax_rate": percent(line.tax_rate, customer)
                if line.vat_category in (None, "S", "L", "M")
                else f"{percent(line.tax_rate, customer)} {line.vat_category}",
                "amount": cash(line.amount),
            }
            for line in invoice.lines
        ],
        "vat_rows": [
            {
                "label": names.get(group.category, ""),
                "category": group.category,
                "rate": "" if group.category == "O" else percent(group.rate, customer),
                "base": cash(group.basis),
                "tax": cash(group.tax),
                "reason": " ".join(part for part in (group.reason, group.code) if part),
            }
            for group in vat_breakdown(invoice)
        ],
        "subtotal": cash(invoice.subtotal),
        "tax_total": cash(invoice.tax_total),
        "total": cash(invoice.total),
        "atcud": invoice.atcud,
        "qr": fiscal_qr(invoice.fiscal_qr) if invoice.fiscal_qr else None,
        "legal_mentions": invoice.legal_mentions,
    }


def template_dir(tenant: TenantConfig) -> Path | None:
    if tenant.directory is None:
        return None
    folder = tenant.directory / "templates"
    return folder if folder.is_dir() else None


def render_html(invoice: InvoiceCreatedV1, tenant: TenantConfig) -> str:
    return environment(template_dir(tenant)).get_template(HTML_TEMPLATE).render(context(invoice, tenant))


@cache
def fonts() -> FontConfiguration:
    """One font configuration per worker process: building it per document costs a few percent."""
    return FontConfiguration()


def layout(html: str, tenant: TenantConfig, *, pdf_a: bool) -> Any:
    """Lay the document out (the expensive part) without writing it, so pages can be counted first."""
    options = {"pdf_variant": "pdf/a-3b"} if pdf_a else {}
    return HTML(string=html, url_fetcher=AssetFetcher(tenant.directory)).render(font_config=fonts(), **options)


def render_pdf(invoice: InvoiceCreatedV1, tenant: TenantConfig | None = None) -> bytes:
    """HTML → PDF in one go (tests, tools). The service goes through :func:`pipeline.produce`."""
    tenant = tenant or TenantConfig.default("default")
    pdf: bytes = layout(render_html(invoice, tenant), tenant, pdf_a=False).write_pdf()
    return pdf
