"""The customer email (every purpose and language), its headers and their safety, and SMTP replies."""

from __future__ import annotations

import email
import email.policy
import re
from decimal import Decimal
from email.message import EmailMessage
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Literal

import aiosmtplib
import pytest
from PIL import Image, ImageDraw

from factura.common.errors import DependencyDown
from factura.common.events import DocumentRef, InvoiceRenderedV1, Notice, parse_event
from factura.common.schemas import EXAMPLES_DIR
from factura.common.tenants import Branding, Sender, TenantConfig
from factura.email_sender.message import EmailLinks, build_email, header_text
from factura.email_sender.smtp import Undeliverable, smtp_failure

#: Purpose case → (purpose, days_from_due).
CASES = {
    "invoice": ("invoice", None),
    "before": ("reminder:before-5", -5),
    "due": ("reminder:due", 0),
    "after": ("reminder:after-3", 3),
    "receipt": ("receipt", None),
}
#: Language → (country, currency).
MARKETS = {"es": ("ES", "EUR"), "pt": ("PT", "EUR"), "en": ("GB", "GBP"), "ro": ("RO", "RON")}
SUBJECTS = {
    ("es", "invoice"): "Factura F-2026-000123 de Harinas del Sur",
    ("es", "before"): "Recordatorio: factura F-2026-000123 vence el 2 dic",
    ("es", "due"): "Recordatorio: factura F-2026-000123 vence hoy",
    ("es", "after"): "Factura F-2026-000123 vencida hace 3 días",
    ("es", "receipt"): "Pago recibido: factura F-2026-000123",
    ("pt", "invoice"): "Fatura F-2026-000123 de Harinas del Sur",
    ("pt", "before"): "Lembrete: fatura F-2026-000123 vence em 2/12",
    ("pt", "due"): "Lembrete: fatura F-2026-000123 vence hoje",
    ("pt", "after"): "Fatura F-2026-000123 vencida há 3 dias",
    ("pt", "receipt"): "Pagamento recebido: fatura F-2026-000123",
    ("en", "invoice"): "Invoice F-2026-000123 from Harinas del Sur",
    ("en", "before"): "Reminder: invoice F-2026-000123 is due on 2 Dec",
    ("en", "due"): "Reminder: invoice F-2026-000123 is due today",
    ("en", "after"): "Invoice F-2026-000123 is 3 days overdue",
    ("en", "receipt"): "Payment received: invoice F-2026-000123",
    ("ro", "invoice"): "Factura F-2026-000123 de la Harinas del Sur",
    ("ro", "before"): "Reamintire: factura F-2026-000123 este scadentă pe 2 dec.",
    ("ro", "due"): "Reamintire: factura F-2026-000123 este scadentă astăzi",
    ("ro", "after"): "Factura F-2026-000123 este restantă de 3 zile",
    ("ro", "receipt"): "Plată primită: factura F-2026-000123",
}
AMOUNTS = {"es": "286,55\xa0€", "pt": "286,55\xa0€", "en": "£286.55", "ro": "286,55\xa0RON"}
PAYMENT = "https://pay.harinas-sur.test/F-2026-000123?importe=286.55&moneda=EUR"
LINKS = EmailLinks(
    download="https://dl.factura.test/d/abc?sig=1&exp=2",
    payment=PAYMENT,
    pixel="https://t.factura.test/o/abc.gif",
    unsubscribe="https://t.factura.test/u/abc",
)
SELLER = "ERP Text Seller Ltd"  # what the ERP says; the email must never speak as it
DEFAULT_SENDER = ("Factura", "no-reply@factura.test")
#: A <style> body made of @media blocks only: every other rule was inlined.
MEDIA_ONLY = re.compile(r"\s*(@media[^{}]*\{(\s*[^{}@]+\{[^{}]*\})*\s*\}\s*)+")


def rendered() -> InvoiceRenderedV1:
    data = parse_event((EXAMPLES_DIR / "invoice.rendered.v1.json").read_bytes()).data
    assert isinstance(data, InvoiceRenderedV1)
    return data


def notice(case: str = "invoice", lang: str = "es") -> Notice:
    data = rendered()
    country, currency = MARKETS[lang]
    customer = data.invoice.customer.model_copy(update={"locale": lang, "country": country})
    invoice = data.invoice.model_copy(update={"customer": customer, "currency": currency, "seller_name": SELLER})
    purpose, days = CASES[case]
    return Notice(purpose=purpose, invoice=invoice, document=data.document, days_from_due=days)


def write_logo(path: Path, color: str = "#b45309") -> Path:
    """A 2x PNG logo (400 by 112): a rounded mark and a bar standing for the name."""
    image = Image.new("RGB", (400, 112), "white")
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((0, 8, 96, 104), radius=20, fill=color)
    draw.rounded_rectangle((28, 36, 68, 76), radius=8, fill="white")
    draw.rounded_rectangle((120, 34, 380, 56), radius=6, fill=color)
    draw.rounded_rectangle((120, 66, 300, 80), radius=6, fill="#98a2b3")
    image.save(path, "PNG")
    return path


def tenant(directory: Path | None = None, *, logo: str | None = None, **branding: str) -> TenantConfig:
    return TenantConfig(
        tenant_id="harinas-sur",
        version="v1",
        directory=directory,
        branding=Branding(
            display_name="Harinas del Sur",
            logo=logo,
            primary_color=branding.get("primary_color", "#b45309"),
            font_family=branding.get("font_family", "DejaVu Sans"),
            legal_footer="Harinas del Sur S.A. · CIF A41234567\nRegistro Mercantil de Sevilla",
        ),
        sender=Sender(
            from_name="Harinas del Sur · Facturación",
            from_address="facturas@harinas-sur.test",
            reply_to="cobros@harinas-sur.test",
        ),
    )


def build(
    n: Notice | None = None,
    t: TenantConfig | None = None,
    *,
    links: EmailLinks = LINKS,
    attachment: tuple[bytes, DocumentRef] | Literal["pdf"] | None = "pdf",
) -> EmailMessage:
    """The email for ``n``; by default with the notice's document attached as a PDF."""
    n = n or notice()
    if attachment == "pdf":
        assert n.document is not None
        attachment = (b"%PDF-1.7 x", n.document)
    return build_email(
        notice=n,
        tenant=t or tenant(),
        recipient="facturas@pasteleria-lucia.es",
        attachment=attachment,
        links=links,
        message_id="<434888e1.email@harinas-sur.test>",
        default_sender=DEFAULT_SENDER,
    )


def wire(msg: EmailMessage) -> EmailMessage:
    """The message as a receiving client parses it."""
    parsed = email.message_from_bytes(msg.as_bytes(policy=email.policy.SMTP), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def html_of(msg: EmailMessage) -> str:
    part = msg.get_body(("html",))
    assert part is not None
    return str(part.get_content())


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}))


def elements(html: str, tag: str, **wanted: str) -> list[dict[str, str]]:
    """Attributes of each ``tag`` element whose attributes include ``wanted`` (``class_`` for class)."""
    parser = _Elements()
    parser.feed(html)
    want = {k.rstrip("_"): v for k, v in wanted.items()}
    return [a for t, a in parser.found if t == tag and all(a.get(k) == v for k, v in want.items())]


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


@pytest.mark.parametrize("lang", list(MARKETS))
@pytest.mark.parametrize("case", list(CASES))
def test_every_purpose_and_language(case: str, lang: str) -> None:
    msg = wire(build(notice(case, lang)))
    assert msg["Subject"] == SUBJECTS[(lang, case)]
    assert msg["Message-ID"] == "<434888e1.email@harinas-sur.test>"
    [sender] = msg["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Harinas del Sur · Facturación", "facturas@harinas-sur.test")
    assert SELLER not in str(msg)  # nowhere: not in From, subject, body or signature
    assert msg["Reply-To"].addresses[0].addr_spec == "cobros@harinas-sur.test"
    assert msg["List-Unsubscribe"] == "<https://t.factura.test/u/abc>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html, text = html_of(msg), text_of(msg)
    assert f'lang="{lang}"' in html
    # Inlined: only the media queries are left in <style>.
    styles = re.findall(r"<style[^>]*>(.*?)</style>", html, re.S)
    assert len(styles) == 1 and MEDIA_ONLY.fullmatch(styles[0]), styles
    assert 'class="content" style="' in html and "font-family: 'DejaVu Sans'" in html
    assert AMOUNTS[lang] in unescape(html) and AMOUNTS[lang] in text
    assert [i["width"] for i in elements(html, "img", src=LINKS.pixel or "")] == ["1"]
    assert "Harinas del Sur S.A. · CIF A41234567" in html and "Registro Mercantil de Sevilla" in text
    paying = case != "receipt"
    assert [a["href"] for a in elements(html, "a", id="pay", class_="button")] == ([PAYMENT] if paying else [])
    assert (f": {PAYMENT}" in text) is paying
    assert "https://dl.factura.test/d/abc?sig=1&exp=2" in text
    assert [a.get_filename() for a in msg.iter_attachments()] == ["F-2026-000123.pdf"]


def test_status_and_day_counts_follow_the_language_plural_rules() -> None:
    after = notice("after", "ro").model_copy(update={"days_from_due": 20})
    assert wire(build(after))["Subject"] == "Factura F-2026-000123 este restantă de 20 de zile"
    one = notice("after", "es").model_copy(update={"days_from_due": 1})
    assert wire(build(one))["Subject"] == "Factura F-2026-000123 vencida hace 1 día"
    soon = notice("before", "en")
    assert "Due in 5 days" in html_of(build(soon)) and "Due in 5 days" in text_of(build(soon))


def test_png_logo_travels_as_an_inline_cid_image(tmp_path: Path) -> None:
    write_logo(tmp_path / "logo.png")
    msg = wire(build(t=tenant(tmp_path, logo="logo.png")))
    assert msg.get_content_type() == "multipart/mixed"
    [alternative, pdf] = msg.iter_parts()
    [plain, related] = alternative.iter_parts()
    assert (plain.get_content_type(), related.get_content_type()) == ("text/plain", "multipart/related")
    [html, image] = related.iter_parts()
    assert image.get_content_type() == "image/png" and image["Content-ID"] == "<434888e1.email.logo@harinas-sur.test>"
    assert image.get_content() == (tmp_path / "logo.png").read_bytes()
    [img] = elements(html.get_content(), "img", class_="logo")
    assert (img["src"], img["width"], img["height"]) == ("cid:434888e1.email.logo@harinas-sur.test", "200", "56")
    assert pdf.get_filename() == "F-2026-000123.pdf"


def test_svg_logo_becomes_a_text_wordmark(tmp_path: Path) -> None:
    (tmp_path / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    msg = wire(build(t=tenant(tmp_path, logo="logo.svg")))
    assert not [p for p in msg.walk() if p.get_content_maintype() == "image"]
    html = html_of(msg)
    assert "cid:" not in html and re.search(r'class="wordmark"[^>]*>Harinas del Sur</span>', html)


def test_link_only_document_and_zip_attachment() -> None:
    linked = wire(build(attachment=None))
    assert not list(linked.iter_attachments())
    assert "Puede descargar la factura desde este enlace:" in text_of(linked)
    assert [a["href"] for a in elements(html_of(linked), "a", id="download")] == [LINKS.download]
    n = notice("after", "pt")
    assert n.document is not None
    zipped = n.document.model_copy(update={"content_type": "application/zip", "filename": "F-2026-000123.zip"})
    msg = wire(build(n, attachment=(b"PK\x03\x04", zipped)))
    [attached] = msg.iter_attachments()
    assert (attached.get_content_type(), attached.get_filename()) == ("application/zip", "F-2026-000123.zip")
    assert "num ficheiro ZIP (F-2026-000123.zip)" in text_of(msg)


def test_no_optional_links_no_optional_parts() -> None:
    msg = wire(build(links=EmailLinks(), attachment=None))
    html = html_of(msg)
    assert msg["List-Unsubscribe"] is None and msg["List-Unsubscribe-Post"] is None
    assert 'id="pay"' not in html and 'id="download"' not in html and "<img" not in html
    assert "descargar" not in text_of(msg).lower()


def test_mailto_unsubscribe_has_no_one_click_post() -> None:
    msg = wire(build(links=EmailLinks(unsubscribe="mailto:unsubscribe@factura.test?subject=abc")))
    assert msg["List-Unsubscribe"] == "<mailto:unsubscribe@factura.test?subject=abc>"
    assert msg["List-Unsubscribe-Post"] is None


@pytest.mark.parametrize(
    "links",
    [
        EmailLinks(payment="javascript:alert(1)"),
        EmailLinks(download="data:text/html,x"),
        EmailLinks(pixel="https://t.test/p\r\nBcc: x@evil.test"),
        EmailLinks(unsubscribe="http://t.test/u"),  # RFC 8058 one-click needs https
    ],
)
def test_links_a_mail_client_should_not_follow_are_refused(links: EmailLinks) -> None:
    with pytest.raises(ValueError, match="links\\."):
        build(links=links)


def test_without_a_tenant_sender_the_default_sender_speaks_not_the_erp() -> None:
    bare = TenantConfig.default("acme")
    msg = wire(build(t=bare))
    assert msg["From"].addresses[0].display_name == "Factura"
    assert msg["Subject"] == "Factura F-2026-000123 de Factura" and SELLER not in str(msg)
    assert msg["Reply-To"] is None


def test_tenant_colours_and_font_reach_the_inlined_html() -> None:
    msg = build(t=tenant(primary_color="#fde047", font_family="DejaVu Serif"))
    html = html_of(msg)
    [cell] = elements(html, "td", class_="button-cell")
    assert cell["bgcolor"] == "#fde047" and "background-color: #fde047" in cell["style"]
    assert "color: #111827" in html  # dark text on a light brand colour
    assert "font-family: 'DejaVu Serif', Georgia" in html


def test_html_part_escapes_customer_text() -> None:
    n = notice()
    customer = n.invoice.customer.model_copy(update={"name": "<script>x</script>"})
    msg = build(n.model_copy(update={"invoice": n.invoice.model_copy(update={"customer": customer})}))
    html = html_of(msg)
    assert "<script>" not in html and "&lt;script&gt;" in html


@pytest.mark.parametrize(
    "hostile",
    [
        "Lucía\r\nBcc: x@evil.test",
        "Lucía\nX",
        "Lucía\x00\x1bX",
        "Lucía\u2028X\x85",
        "Lucía\u202efdp.exe",
        "\u2066Lucía\u2069\u200e\u200f\u202a\u202b\u202c\u202d\ufeff",
    ],
)
def test_control_and_bidi_characters_in_names_are_stripped(hostile: str) -> None:
    n = notice("after")
    assert n.document is not None
    customer = n.invoice.customer.model_copy(update={"name": hostile})
    invoice = n.invoice.model_copy(update={"customer": customer, "invoice_number": f"F-1{hostile}"})
    document = n.document.model_copy(update={"filename": f"F\r\n1{hostile}.pdf"})
    sender = Sender(from_name=f"Harinas{hostile}", from_address="f@harinas-sur.test")
    t = tenant().model_copy(update={"sender": sender})
    msg = wire(build(n.model_copy(update={"invoice": invoice}), t, attachment=(b"%PDF", document)))
    [to] = msg["To"].addresses
    assert to.addr_spec == "facturas@pasteleria-lucia.es" and to.display_name == header_text(hostile)
    assert msg["Bcc"] is None and msg["From"].addresses[0].display_name == header_text(f"Harinas{hostile}")
    assert header_text(hostile) in str(msg["Subject"])
    for value in (str(msg["Subject"]), str(msg["From"]), str(msg["To"]), msg.as_string()):
        assert not re.search("[\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff\x00\x1b]", value)
    [attached] = msg.iter_attachments()
    assert attached.get_filename() == header_text(f"F 1{hostile}.pdf")


def test_header_text() -> None:
    assert header_text("Pastelería Lucía S.L.") == "Pastelería Lucía S.L."
    assert header_text("  a\r\n\r\n b\t") == "a b"
    assert header_text("abc\u202edcba\u200b") == "abcdcba"  # bidi override and zero-width space dropped
    assert header_text("São Paulo · Ltda.") == "São Paulo · Ltda."


def test_an_internationalised_address_keeps_its_local_part() -> None:
    n = notice()
    customer = n.invoice.customer.model_copy(update={"name": 'José, "Pepe"'})
    msg = build_email(
        notice=n.model_copy(update={"invoice": n.invoice.model_copy(update={"customer": customer})}),
        tenant=tenant(),
        recipient="josé@ejemplo.es",
        attachment=None,
        links=EmailLinks(),
        message_id="<s@b.c>",
        default_sender=DEFAULT_SENDER,
    )
    sent = msg.as_bytes(policy=email.policy.SMTPUTF8).decode("utf-8")  # what goes out with SMTPUTF8
    [to] = email.message_from_string(sent, policy=email.policy.default)["To"].addresses
    assert (to.display_name, to.addr_spec) == ('José, "Pepe"', "josé@ejemplo.es")


def test_amounts_follow_the_customer_country() -> None:
    n = notice("invoice", "pt")
    customer = n.invoice.customer.model_copy(update={"country": "BR"})
    invoice = n.invoice.model_copy(update={"customer": customer, "currency": "BRL", "total": Decimal("1234.56")})
    assert "R$\xa01.234,56" in text_of(build(n.model_copy(update={"invoice": invoice})))


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
