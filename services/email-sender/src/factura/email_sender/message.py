"""Build the invoice email: localised text and HTML parts plus the PDF, as a stdlib EmailMessage."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formataddr, make_msgid

from jinja2 import PackageLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from factura.common.events import DocumentRef, InvoiceSummary
from factura.common.locales import day, money

STRINGS: dict[str, dict[str, str]] = {
    "en": {"subject": "Invoice {number} from {seller}", "greeting": "Dear", "invoice": "Invoice",
           "total": "Total", "due": "Due date", "body": "Please find your invoice attached.",
           "closing": "Kind regards,"},
    "es": {"subject": "Factura {number} de {seller}", "greeting": "Estimado/a", "invoice": "Factura",
           "total": "Total", "due": "Vencimiento", "body": "Le adjuntamos su factura.",
           "closing": "Saludos cordiales,"},
    "pt": {"subject": "Fatura {number} de {seller}", "greeting": "Caro/a", "invoice": "Fatura", "total": "Total",
           "due": "Vencimento", "body": "Segue em anexo a sua fatura.",
           "closing": "Com os melhores cumprimentos,"},
    "ro": {"subject": "Factura {number} de la {seller}", "greeting": "Stimate/Stimată", "invoice": "Factura",
           "total": "Total", "due": "Scadență", "body": "Vă transmitem atașat factura.", "closing": "Cu stimă,"},
}  # fmt: skip

_env = SandboxedEnvironment(
    loader=PackageLoader("factura.email_sender", "templates"),
    autoescape=select_autoescape(["html.j2"]),
    undefined=StrictUndefined,
)


def build_invoice_email(
    *,
    invoice: InvoiceSummary,
    sender: tuple[str, str],
    reply_to: str | None = None,
    attachment: bytes,
    document: DocumentRef,
    message_id_seed: str,
) -> EmailMessage:
    seller = invoice.seller_name
    lang = invoice.customer.locale
    t = STRINGS[lang]
    ctx = {
        "t": t,
        "locale": lang,
        "invoice": invoice,
        "seller": seller,
        "total": money(invoice.total, invoice.currency, invoice.customer),
        "due_date": day(invoice.due_date, invoice.customer, "long"),
    }
    msg = EmailMessage()
    msg["Subject"] = t["subject"].format(number=invoice.invoice_number, seller=seller)
    msg["From"] = formataddr(sender)
    msg["To"] = formataddr((invoice.customer.name, str(invoice.customer.email)))
    domain = sender[1].rpartition("@")[2] or "factura.local"
    # Deterministic Message-ID: a retried send of the same delivery is recognisable downstream.
    msg["Message-ID"] = f"<{message_id_seed}@{domain}>" if message_id_seed else make_msgid(domain=domain)
    if reply_to:
        msg["Reply-To"] = reply_to
    msg.set_content(_env.get_template("invoice.txt.j2").render(ctx))
    msg.add_alternative(_env.get_template("invoice.html.j2").render(ctx), subtype="html")
    maintype, _, subtype = document.content_type.partition("/")
    msg.add_attachment(attachment, maintype=maintype, subtype=subtype, filename=document.filename)
    return msg
