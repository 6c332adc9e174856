"""Build the invoice email: localised text and HTML parts plus the PDF, as a stdlib EmailMessage.

Text from the event (customer and seller names, invoice number, file name) reaches headers only through
:func:`header_text`, which folds line breaks and other control characters into spaces: a
``customer.name`` with CR/LF would otherwise make the header invalid (``ValueError``), or, for a
NUL or ESC, be written into the header raw. Addresses go through :func:`mailbox`.
"""

from __future__ import annotations

import re
import unicodedata
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import make_msgid

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

_SPACES = re.compile(r"\s+")


def header_text(value: str) -> str:
    """``value`` on one header line: control characters (CR, LF, NUL, ...) and line separators become spaces."""
    cleaned = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in value)
    return _SPACES.sub(" ", cleaned).strip()


def mailbox(name: str, address: str) -> Address:
    """``name <address>`` as a header object, so the display name is always quoted or encoded whole.

    ``formataddr`` is not enough: it RFC 2047-encodes a non-ASCII name, the header parser decodes
    it, and the generator then writes ``Lucía Bcc: x@evil.test`` partly unquoted, which a mail
    client reads as another address. Username and domain are passed apart so an internationalised
    local part (sent with SMTPUTF8) is accepted.
    """
    username, _, domain = address.rpartition("@")
    return Address(display_name=header_text(name), username=username, domain=domain)


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
    seller = header_text(invoice.seller_name)
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
    msg["Subject"] = t["subject"].format(number=header_text(invoice.invoice_number), seller=seller)
    msg["From"] = mailbox(sender[0], sender[1])
    msg["To"] = mailbox(invoice.customer.name, str(invoice.customer.email))
    domain = sender[1].rpartition("@")[2] or "factura.local"
    # Deterministic Message-ID: a retried send of the same delivery is recognisable downstream.
    msg["Message-ID"] = f"<{message_id_seed}@{domain}>" if message_id_seed else make_msgid(domain=domain)
    if reply_to:
        msg["Reply-To"] = reply_to
    msg.set_content(_env.get_template("invoice.txt.j2").render(ctx))
    msg.add_alternative(_env.get_template("invoice.html.j2").render(ctx), subtype="html")
    maintype, _, subtype = document.content_type.partition("/")
    msg.add_attachment(attachment, maintype=maintype, subtype=subtype, filename=header_text(document.filename))
    return msg
