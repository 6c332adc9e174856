"""The invoice email and the SMTP reply classification."""

from __future__ import annotations

import aiosmtplib

from factura.common.events import InvoiceRenderedV1, parse_event
from factura.common.schemas import EXAMPLES_DIR
from factura.email_sender.handlers import classify
from factura.email_sender.message import build_invoice_email


def rendered() -> InvoiceRenderedV1:
    data = parse_event((EXAMPLES_DIR / "invoice.rendered.v1.json").read_bytes()).data
    assert isinstance(data, InvoiceRenderedV1)
    return data


def test_email_has_localised_parts_and_the_pdf() -> None:
    data = rendered()
    msg = build_invoice_email(
        invoice=data.invoice,
        sender=("Factura", "inv@example.com"),
        attachment=b"%PDF-1.7 x",
        document=data.document,
        message_id_seed="abc",
    )
    assert msg["Subject"] == "Factura F-2026-000123 de Harinas del Sur S.A."
    assert msg["Message-ID"] == "<abc@example.com>"
    body = msg.get_body(("plain",))
    assert body is not None and "286,55" in body.get_content()
    attachments = list(msg.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["F-2026-000123.pdf"]
    assert attachments[0].get_content() == b"%PDF-1.7 x"


def test_html_part_escapes_customer_text() -> None:
    invoice = rendered().invoice
    hostile = invoice.model_copy(
        update={"customer": invoice.customer.model_copy(update={"name": "<script>x</script>"})}
    )
    msg = build_invoice_email(
        invoice=hostile, sender=("F", "a@b.c"), attachment=b"%PDF", document=rendered().document, message_id_seed="s"
    )
    html = msg.get_body(("html",))
    assert html is not None and "<script>" not in html.get_content() and "&lt;script&gt;" in html.get_content()


def test_5xx_recipient_refusal_is_permanent_4xx_is_not() -> None:
    bounce = aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "5.1.1 unknown", "a@b.c")])
    permanent = classify(bounce)
    assert permanent is not None and permanent.code == 550
    later = aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(451, "4.3.0 later", "a@b.c")])
    assert classify(later) is None
    assert classify(aiosmtplib.SMTPServerDisconnected("gone")) is None
    assert classify(aiosmtplib.SMTPDataError(554, "5.7.1 spam")) is not None
