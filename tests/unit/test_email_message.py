"""The invoice email and the SMTP reply classification."""

from __future__ import annotations

import email
import email.policy

import aiosmtplib
import pytest

from factura.common.errors import DependencyDown
from factura.common.events import InvoiceRenderedV1, parse_event
from factura.common.schemas import EXAMPLES_DIR
from factura.email_sender.handlers import Undeliverable, smtp_failure
from factura.email_sender.message import build_invoice_email, header_text


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


def test_5xx_is_a_permanent_refusal_with_its_codes() -> None:
    bounce = aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "5.1.1 unknown", "a@b.c")])
    refused = smtp_failure(bounce)
    assert isinstance(refused, Undeliverable)
    assert (refused.reason, refused.code, refused.enhanced_code) == ("rejected_by_server", 550, "5.1.1")
    spam = smtp_failure(aiosmtplib.SMTPDataError(554, "5.7.1 spam"))
    assert isinstance(spam, Undeliverable) and spam.code == 554
    utf8 = smtp_failure(aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server"))
    assert isinstance(utf8, Undeliverable) and utf8.code is None


@pytest.mark.parametrize(
    "error",
    [
        aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(451, "4.3.0 later", "a@b.c")]),
        aiosmtplib.SMTPDataError(452, "4.3.1 insufficient storage"),
        aiosmtplib.SMTPSenderRefused(421, "4.7.0 closing", "from@b.c"),
        aiosmtplib.SMTPServerDisconnected("gone"),
        aiosmtplib.SMTPReadTimeoutError("no answer"),
        aiosmtplib.SMTPHeloError(501, "who are you"),  # the relay refuses to talk at all: not about this message
    ],
    ids=["rcpt-451", "data-452", "mail-421", "disconnected", "timeout", "helo-501"],
)
def test_4xx_and_connection_trouble_mean_the_relay_is_down(error: aiosmtplib.SMTPException) -> None:
    down = smtp_failure(error)
    assert isinstance(down, DependencyDown) and down.dependency == "smtp"


@pytest.mark.parametrize("hostile", ["Lucía\r\nBcc: x@evil.test", "Lucía\nX", "Lucía\x00\x1bX", "Lucía\u2028X\x85"])
def test_control_characters_in_names_fold_to_spaces(hostile: str) -> None:
    data = rendered()
    customer = data.invoice.customer.model_copy(update={"name": hostile})
    invoice = data.invoice.model_copy(update={"customer": customer, "seller_name": hostile})
    document = data.document.model_copy(update={"filename": "F\r\n1.pdf"})
    msg = build_invoice_email(
        invoice=invoice, sender=("F\r\nG", "a@b.c"), attachment=b"%PDF", document=document, message_id_seed="s"
    )
    parsed = email.message_from_bytes(msg.as_bytes(policy=email.policy.SMTP), policy=email.policy.default)
    to = parsed["To"].addresses
    assert len(to) == 1 and to[0].addr_spec == data.invoice.customer.email
    assert to[0].display_name == header_text(hostile) and "\n" not in to[0].display_name
    assert parsed["Bcc"] is None and parsed["From"].addresses[0].display_name == "F G"
    assert header_text(hostile) in str(parsed["Subject"])
    assert [a.get_filename() for a in parsed.iter_attachments()] == ["F 1.pdf"]


def test_header_text_keeps_ordinary_text() -> None:
    assert header_text("Pastelería Lucía S.L.") == "Pastelería Lucía S.L."
    assert header_text("  a\r\n\r\n b\t") == "a b"


def test_an_internationalised_address_keeps_its_local_part() -> None:
    data = rendered()
    customer = data.invoice.customer.model_copy(update={"email": "josé@ejemplo.es", "name": 'José, "Pepe"'})
    msg = build_invoice_email(
        invoice=data.invoice.model_copy(update={"customer": customer}),
        sender=("F", "a@b.c"),
        attachment=b"%PDF",
        document=data.document,
        message_id_seed="s",
    )
    wire = msg.as_bytes(policy=email.policy.SMTPUTF8).decode("utf-8")  # what goes out with SMTPUTF8
    [to] = email.message_from_string(wire, policy=email.policy.default)["To"].addresses
    assert (to.display_name, to.addr_spec) == ('José, "Pepe"', "josé@ejemplo.es")
