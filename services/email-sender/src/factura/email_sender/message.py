"""Build one customer email (invoice, reminder or receipt): branded HTML, plain text, attachment;
and, in the same frame and brand, the tenant's daily summary to its process owner (purpose ``report``).

Who the email says it is from (From, subject, signature) comes only from the tenant's reviewed
config, never from ``invoice.seller_name``: that is ERP-supplied text, and anyone who can feed the
ERP could otherwise send mail that reads as another company's.

Text from the event (customer name, invoice number, file name) reaches headers only through
:func:`header_text`: a CR/LF would make the header invalid, a NUL or ESC would be written raw,
and a bidi override (U+202E) can make ``exe.pdf`` read as ``fdp.exe``. Addresses go through
:func:`mailbox`.

The HTML is written with a ``<style>`` block (readable, one place per rule) and inlined with
css-inline, because Gmail and Outlook drop or ignore most ``<style>`` CSS; only the media queries
stay in ``<style>``, where the clients that honour them read them. The logo travels as a CID
image inside ``multipart/related`` (remote images are blocked by default in most clients). An
SVG logo is shown as the tenant's name in its colour instead: most mail clients do not display
SVG, and nothing installed here rasterises it (no cairosvg/cairocffi).
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from functools import cache, lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import css_inline
from babel import Locale
from babel.dates import format_skeleton
from babel.numbers import format_decimal
from jinja2 import PackageLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup
from PIL import Image, UnidentifiedImageError

from factura.common.events import Amount, DailyReport, DocumentRef, Notice
from factura.common.locales import day, locale_of, money
from factura.common.tenants import HEX_COLOR, TenantConfig

Phase = Literal["invoice", "before", "due", "after", "receipt"]
#: Status pill colours (text, background) per phase: the same meaning whatever the brand colour.
TONES: dict[Phase, tuple[str, str]] = {
    "before": ("#93370d", "#fef0c7"),
    "due": ("#93370d", "#fef0c7"),
    "after": ("#b42318", "#fee4e2"),
    "receipt": ("#05603a", "#d1fadf"),
}
#: Pillow's format name → MIME subtype, for the formats every mail client shows.
IMAGE_SUBTYPES: dict[str, Literal["png", "jpeg"]] = {"PNG": "png", "JPEG": "jpeg"}
LOGO_MAX = (200, 56)  # display box in CSS pixels; the image keeps its own resolution for HiDPI screens
_SPACES = re.compile(r"\s+")
_FONT_NAME = re.compile(r"^[A-Za-z0-9 -]{1,60}$")
_HEX = re.compile(HEX_COLOR)


@dataclass(frozen=True)
class EmailLinks:
    download: str | None = None  # signed or short link to the document
    payment: str | None = None  # the tenant's payment link (maybe a tracked short link)
    pixel: str | None = None  # open-tracking pixel URL, when the tenant asks
    unsubscribe: str | None = None  # List-Unsubscribe target (https or mailto), reminders only


def header_text(value: str) -> str:
    """``value`` on one header line: control characters and line separators become spaces, and
    format characters (bidi marks and overrides, zero-width joiners, BOM) are dropped."""
    kept = (" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in value)
    cleaned = "".join(c for c in kept if unicodedata.category(c) != "Cf")
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


@dataclass(frozen=True)
class Logo:
    data: bytes
    subtype: Literal["png", "jpeg"]
    width: int  # display size, CSS pixels
    height: int


@lru_cache(maxsize=256)
def load_logo(path: Path, version: str) -> Logo | None:
    """The tenant's logo as a mail client can show it, or None (SVG, or not a PNG/JPEG at all).

    Cached per tenant config ``version`` (a hash of the folder), so a changed logo is read anew."""
    del version  # part of the cache key only
    if path.suffix.lower() == ".svg":
        return None
    data = path.read_bytes()
    try:
        with Image.open(path) as image:
            kind, (width, height) = image.format, image.size
    except UnidentifiedImageError:
        return None
    subtype = IMAGE_SUBTYPES.get(kind or "")
    if subtype is None or width < 1 or height < 1:
        return None
    scale = min(1.0, LOGO_MAX[0] / width, LOGO_MAX[1] / height)
    return Logo(data, subtype, max(1, round(width * scale)), max(1, round(height * scale)))


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _luminance(color: str) -> float:
    def channel(v: int) -> float:
        s = v / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(v) for v in _rgb(color))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _tint(color: str, keep: float) -> str:
    """``color`` mixed with white, ``keep`` of the colour: a light panel in the brand's hue."""
    return "#" + "".join(f"{round(v * keep + 255 * (1 - keep)):02x}" for v in _rgb(color))


def _palette(tenant: TenantConfig) -> dict[str, Markup]:
    """CSS values from the tenant's colours. They are written into ``<style>`` unescaped, so they
    are checked here again (a config built without validation must not inject CSS)."""
    primary, text = tenant.branding.primary_color, tenant.branding.text_color
    if not (_HEX.match(primary) and _HEX.match(text)):
        raise ValueError("branding colours must be #rrggbb")
    on_primary = "#ffffff" if _contrast(primary, "#ffffff") >= _contrast(primary, "#111827") else "#111827"
    # A brand colour too light to read as text on white (yellow, say) gives way to the text colour.
    accent = primary if _contrast(primary, "#ffffff") >= 3 else text
    values = {"primary": primary, "on_primary": on_primary, "accent": accent, "tint": _tint(primary, 0.07)}
    return {k: Markup(v) for k, v in values.items()} | {"text": Markup(text)}


def font_stack(family: str) -> Markup:
    """The tenant's font first, then fonts every mail client's system has, of the same kind."""
    if not _FONT_NAME.match(family):
        raise ValueError("branding.font_family has characters a CSS font name may not")
    lower = family.lower()
    if "serif" in lower and "sans" not in lower:
        fallback = "Georgia, 'Times New Roman', Times, serif"
    elif "mono" in lower:
        fallback = "Menlo, Consolas, 'Courier New', monospace"
    else:
        fallback = "-apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
    return Markup(f"'{family}', {fallback}")


def checked_url(value: str | None, field: str, schemes: tuple[str, ...] = ("https", "http")) -> str | None:
    """A link as given, if it is one a mail client should follow (never ``javascript:`` or ``data:``)."""
    if value is None:
        return None
    if urlsplit(value).scheme.lower() not in schemes or header_text(value) != value or " " in value:
        raise ValueError(f"links.{field} must be a plain {'/'.join(schemes)} URL")
    return value


@cache
def strings() -> dict[str, dict[str, Any]]:
    return tomllib.loads(files("factura.email_sender").joinpath("templates/strings.toml").read_text("utf-8"))


def phase_of(notice: Notice) -> tuple[Phase, int]:
    """Which message this is, and the days from the due date (a reminder without the count, from an
    older producer, counts from today)."""
    if notice.purpose == "invoice":
        return "invoice", 0
    if notice.purpose == "receipt":
        return "receipt", 0
    days = notice.days_from_due
    if days is None:
        days = (datetime.now(UTC).date() - notice.invoice.due_date).days
    return ("before" if days < 0 else "due" if days == 0 else "after"), days


def day_count(n: int, lang: str, locale: str) -> str:
    forms = strings()[lang]["days"]
    form = Locale.parse(locale).plural_form(n)
    return str(forms.get(form, forms["other"])).format(n=n)


_env = SandboxedEnvironment(
    loader=PackageLoader("factura.email_sender", "templates"),
    autoescape=select_autoescape(["html.j2"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
# Media queries cannot be inlined: they stay in <style>. No stylesheet is ever fetched.
_inliner = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)


def build_email(
    *,
    notice: Notice,
    tenant: TenantConfig,
    recipient: str,
    attachment: tuple[bytes, DocumentRef] | None,
    links: EmailLinks,
    message_id: str,
    default_sender: tuple[str, str],
) -> EmailMessage:
    if notice.report is not None:
        return build_report_email(
            report=notice.report,
            notice=notice,
            tenant=tenant,
            recipient=recipient,
            message_id=message_id,
            default_sender=default_sender,
        )
    invoice, customer = notice.invoice, notice.invoice.customer
    lang, locale = customer.locale, locale_of(customer)
    t = strings()[lang]
    phase, days = phase_of(notice)
    from_name, from_address = (tenant.sender.from_name, tenant.sender.from_address) if tenant.sender else default_sender
    brand = header_text(tenant.display_name or from_name)
    number = header_text(invoice.invoice_number)
    words = {
        "number": number,
        "brand": brand,
        "name": header_text(customer.name),
        "due": day(invoice.due_date, customer, "long"),
        "days": day_count(abs(days), lang, locale),
    }
    subject = header_text(
        t[f"subject_{phase}"].format(**words | {"due": format_skeleton("MMMd", invoice.due_date, locale=locale)})
    )
    filename = header_text(attachment[1].filename) if attachment else None
    if attachment:
        document_note = t["attached_zip" if attachment[1].content_type == "application/zip" else "attached_pdf"]
    else:
        document_note = t["by_link"] if links.download else None
    unsubscribe = checked_url(links.unsubscribe, "unsubscribe", ("https", "mailto"))
    context = {
        "lang": lang,
        "t": t,
        "subject": subject,
        "brand": brand,
        "greeting": t["greeting"].format(**words),
        "heading": t[f"heading_{phase}"].format(**words),
        "intro": t[f"intro_{phase}"].format(**words),
        "status": t[f"status_{phase}"].format(**words) if phase != "invoice" else None,
        "tone": TONES.get(phase),
        "amount_label": t["label_total" if phase == "receipt" else "label_amount"],
        # After partial payments a reminder asks for what is still owed, not the invoice total.
        "amount": money(
            notice.outstanding if notice.outstanding is not None and phase != "receipt" else invoice.total,
            invoice.currency,
            customer,
        ),
        "number": number,
        "due": words["due"],
        # A receipt never asks for money, whatever links it is given.
        "pay": None if phase == "receipt" else checked_url(links.payment, "payment"),
        "download": checked_url(links.download, "download"),
        "document_note": document_note.format(filename=filename) if document_note else None,
        "pixel": checked_url(links.pixel, "pixel"),
        "unsubscribe": unsubscribe,
        "reason": t["reason"].format(**words),
        **_branding(tenant, message_id),
    }
    msg = _compose("email", context, mailbox(from_name, from_address), mailbox(customer.name, recipient), tenant)
    if unsubscribe:
        msg["List-Unsubscribe"] = f"<{unsubscribe}>"
        if unsubscribe.startswith("https:"):
            msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"  # RFC 8058
    if attachment:
        body, document = attachment
        maintype, _, subtype = document.content_type.partition("/")
        msg.add_attachment(body, maintype=maintype, subtype=subtype, filename=filename)
    return msg


def build_report_email(
    *,
    report: DailyReport,
    notice: Notice,
    tenant: TenantConfig,
    recipient: str,
    message_id: str,
    default_sender: tuple[str, str],
) -> EmailMessage:
    """The daily summary (purpose ``report``): the owner stands as ``notice.invoice.customer``
    (:func:`factura.common.delivery.sender.report_notice`). No links, no pixel, no attachment: the
    owner is not a customer, and nothing in it is tracked."""
    owner = notice.invoice.customer
    lang, locale = owner.locale, locale_of(owner)
    t = strings()[lang]
    from_name, from_address = (tenant.sender.from_name, tenant.sender.from_address) if tenant.sender else default_sender
    brand = header_text(tenant.display_name or from_name)
    words = {
        "brand": brand,
        "day": day(report.day, owner, "medium"),
        "day_long": day(report.day, owner, "full"),
        "timezone": header_text(report.timezone),
    }
    subject = header_text(t["subject_report"].format(**words))

    def count(n: int) -> str:
        return format_decimal(n, locale=locale)

    def amounts(values: list[Amount]) -> list[str]:
        return [money(a.amount, a.currency, owner) for a in values]

    paid = amounts(report.paid)
    facts = [
        (t["report_unpaid"], count(report.unpaid)),
        (t["report_sent"], count(report.sent)),
        (t["report_delivered"], count(report.delivered)),
        (t["report_failed"], count(report.failed)),
        (t["report_exhausted"], count(report.exhausted)),
        (t["report_reminders_due"], count(report.reminders_due)),
        (t["report_reminders_delivered"], count(report.reminders_delivered)),
        (t["report_payments"], count(report.payments)),
        (t["report_paid"], ", ".join(paid) if paid else count(0)),
    ]
    channel_names = t["channels"]
    by_channel = [
        (channel_names.get(name, name), f"{count(f.delivered)} / {count(f.failed)}")
        for name, f in sorted(report.by_channel.items())
    ]
    by_reason = [(reason, count(n)) for reason, n in sorted(report.failed_by_reason.items(), key=lambda kv: -kv[1])]
    context = {
        "lang": lang,
        "t": t,
        "subject": subject,
        "brand": brand,
        "greeting": t["greeting_report"],
        "heading": t["heading_report"],
        "intro": t["intro_report"].format(**words),
        "report": report,
        "unpaid_amounts": amounts(report.unpaid_amount),
        "facts": facts,
        "tables": [(t["report_by_channel"], by_channel), (t["report_by_reason"], by_reason)],
        "unsubscribe": None,
        "pixel": None,
        "reason": t["reason_report"].format(**words),
        **_branding(tenant, message_id),
    }
    return _compose("report", context, mailbox(from_name, from_address), mailbox("", recipient), tenant)


def _branding(tenant: TenantConfig, message_id: str) -> dict[str, Any]:
    """What every message's frame shows of the tenant: logo (sent inline, by CID), footer, colours."""
    logo_file = tenant.asset(tenant.branding.logo) if tenant.branding.logo else None
    logo = load_logo(logo_file, tenant.version) if logo_file else None
    return {
        "logo": logo,
        "logo_cid": message_id.strip("<>").replace("@", ".logo@", 1) if logo else None,
        "message_id": message_id,
        "footer_lines": [line for line in tenant.branding.legal_footer.splitlines() if line.strip()],
        "css": _palette(tenant) | {"font": font_stack(tenant.branding.font_family)},
    }


def _compose(
    template: str, context: dict[str, Any], sender: Address, to: Address, tenant: TenantConfig
) -> EmailMessage:
    """Headers, the text and the CSS-inlined HTML body of ``template``, and the inline logo."""
    msg = EmailMessage()
    msg["Subject"] = context["subject"]
    msg["From"] = sender
    msg["To"] = to
    if tenant.sender and tenant.sender.reply_to:
        msg["Reply-To"] = mailbox("", tenant.sender.reply_to)
    msg["Message-ID"] = header_text(context["message_id"])  # deterministic: a retried send keeps its id
    msg.set_content(_env.get_template(f"{template}.txt.j2").render(context))
    msg.add_alternative(_inliner.inline(_env.get_template(f"{template}.html.j2").render(context)), subtype="html")
    logo, logo_cid = context["logo"], context["logo_cid"]
    if logo and logo_cid:
        html = msg.get_body(("html",))
        assert html is not None
        html.add_related(
            logo.data, maintype="image", subtype=logo.subtype, cid=f"<{logo_cid}>", filename=f"logo.{logo.subtype}"
        )
    return msg
