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

from jinja2 import ChoiceLoader, FileSystemLoader, PackageLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment
from weasyprint import HTML
from weasyprint.text.fonts import FontConfiguration

from factura.common.events import InvoiceCreatedV1
from factura.common.locales import day, money, number, percent
from factura.common.tenants import TenantConfig
from factura.renderer.fetcher import AssetFetcher
from factura.renderer.strings import LABELS


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


def context(invoice: InvoiceCreatedV1, tenant: TenantConfig) -> dict[str, Any]:
    """Everything the template shows, already formatted for the customer's locale."""
    lang = invoice.customer.locale
    customer = invoice.customer

    def cash(value: Decimal) -> str:
        return money(value, invoice.currency, customer)

    return {
        "locale": lang,
        "t": LABELS[lang],
        "invoice": invoice,
        "brand": tenant.branding,
        "logo": tenant.branding.logo,
        "seller": tenant.seller,
        "seller_name": tenant.seller.legal_name if tenant.seller else invoice.seller_name,
        "payment_url": tenant.payment_url(invoice),
        "issue_date": day(invoice.issue_date, customer),
        "due_date": day(invoice.due_date, customer),
        "lines": [
            {
                "description": line.description,
                "quantity": number(line.quantity, customer),
                "unit_price": cash(line.unit_price),
                "tax_rate": percent(line.tax_rate, customer),
                "amount": cash(line.amount),
            }
            for line in invoice.lines
        ],
        "subtotal": cash(invoice.subtotal),
        "tax_total": cash(invoice.tax_total),
        "total": cash(invoice.total),
    }


def template_dir(tenant: TenantConfig) -> Path | None:
    if tenant.directory is None:
        return None
    folder = tenant.directory / "templates"
    return folder if folder.is_dir() else None


def render_html(invoice: InvoiceCreatedV1, tenant: TenantConfig) -> str:
    return environment(template_dir(tenant)).get_template("invoice.html.j2").render(context(invoice, tenant))


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
