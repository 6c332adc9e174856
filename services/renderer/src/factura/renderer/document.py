"""Invoice → HTML (sandboxed Jinja2, autoescaped) → PDF (WeasyPrint, allow-listed fetches).

Pure and synchronous: the handler runs it on a dedicated worker thread so the event loop keeps
heartbeating while WeasyPrint, which is CPU-bound and single-threaded, works.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from babel.numbers import format_decimal, format_percent
from jinja2 import PackageLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment
from weasyprint import HTML

from factura.common.events import InvoiceCreatedV1
from factura.common.locales import BABEL_LOCALE, day, money
from factura.renderer.fetcher import AssetFetcher

LABELS: dict[str, dict[str, str]] = {
    "en": {"invoice": "Invoice", "issued": "Issued", "due": "Due", "from": "From", "to": "Bill to",
           "description": "Description", "quantity": "Qty", "unit_price": "Unit price", "tax": "Tax",
           "amount": "Amount", "subtotal": "Subtotal", "total": "Total"},
    "es": {"invoice": "Factura", "issued": "Emitida", "due": "Vence", "from": "Emisor", "to": "Cliente",
           "description": "Descripción", "quantity": "Cant.", "unit_price": "Precio unitario", "tax": "IVA",
           "amount": "Importe", "subtotal": "Base imponible", "total": "Total"},
    "pt": {"invoice": "Fatura", "issued": "Emitida", "due": "Vencimento", "from": "Emitente", "to": "Cliente",
           "description": "Descrição", "quantity": "Qtd.", "unit_price": "Preço unitário", "tax": "IVA",
           "amount": "Valor", "subtotal": "Subtotal", "total": "Total"},
    "ro": {"invoice": "Factură", "issued": "Emisă", "due": "Scadentă", "from": "Furnizor", "to": "Client",
           "description": "Descriere", "quantity": "Cant.", "unit_price": "Preț unitar", "tax": "TVA",
           "amount": "Valoare", "subtotal": "Subtotal", "total": "Total"},
}  # fmt: skip

_env = SandboxedEnvironment(
    loader=PackageLoader("factura.renderer", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    undefined=StrictUndefined,
)


def context(invoice: InvoiceCreatedV1) -> dict[str, Any]:
    """Everything the template shows, already formatted for the customer's locale."""
    lang = invoice.customer.locale
    loc = BABEL_LOCALE[lang]

    def cash(value: Decimal) -> str:
        return money(value, invoice.currency, lang)

    return {
        "locale": lang,
        "t": LABELS[lang],
        "invoice": invoice,
        "issue_date": day(invoice.issue_date, lang),
        "due_date": day(invoice.due_date, lang),
        "lines": [
            {
                "description": line.description,
                "quantity": format_decimal(line.quantity, locale=loc),
                "unit_price": cash(line.unit_price),
                "tax_rate": format_percent(line.tax_rate / 100, "#,##0.##%", locale=loc),
                "amount": cash(line.amount),
            }
            for line in invoice.lines
        ],
        "subtotal": cash(invoice.subtotal),
        "tax_total": cash(invoice.tax_total),
        "total": cash(invoice.total),
    }


def render_html(invoice: InvoiceCreatedV1) -> str:
    return _env.get_template("invoice.html.j2").render(context(invoice))


def render_pdf(invoice: InvoiceCreatedV1) -> bytes:
    pdf: bytes = HTML(string=render_html(invoice), url_fetcher=AssetFetcher()).write_pdf()
    return pdf
