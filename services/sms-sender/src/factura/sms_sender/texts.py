"""What an SMS, a voice call and a push notification say, per language and purpose.

An SMS is paid per segment, so the en/es/pt wording is written to fit ONE GSM-7 segment (160
septets) with a pay link and a download link of 32 characters each, a sender name of 20, an
invoice number of 14, an amount like ``1.286,55 €`` and a date like ``15/03/2025``: the fixed words
use only GSM-7 letters (``fatura``, ``vence``, ``em atraso``: no ``á ó ç ã``) and say no more than a
customer needs to recognise the message and act on it. Romanian keeps its diacritics: whether
they are transliterated is the tenant's choice, made by the caller with
:func:`factura.common.delivery.gsm.prepare`, which also removes what must not reach a phone.

The greeting names ``sender_name``, the tenant's configured display name, never the ERP's
``seller_name``: the tenant decides how it is known to its customers. Amounts and dates come
formatted for the customer (:mod:`factura.common.locales`); nothing here counts days, so no text
needs plural rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from factura.common.events import Locale

#: What a message says, from its purpose and, for a reminder, where it falls against the due date.
Kind = Literal["invoice", "before", "today", "overdue", "receipt"]


@dataclass(frozen=True)
class _Words:
    """One language's wording. Templates take ``sender``, ``number``, ``amount`` and ``due``."""

    sms: Mapping[Kind, str]
    pay: str  # label before the pay link
    pdf: str  # label before the download link
    voice_hello: str  # who is calling
    voice: Mapping[Kind, str]
    voice_end: str  # the details are in the message already sent
    push: Mapping[Kind, tuple[str, str]]  # (title, body)
    tap_pay: str
    tap_view: str


WORDS: Final[Mapping[Locale, _Words]] = {
    "en": _Words(
        sms={
            "invoice": "{sender}: invoice {number} for {amount}, due {due}.",
            "before": "{sender}: invoice {number} for {amount} is due {due}.",
            "today": "{sender}: invoice {number} for {amount} is due today.",
            "overdue": "{sender}: invoice {number} for {amount} is overdue.",
            "receipt": "{sender}: payment of {amount} received for invoice {number}. Thank you!",
        },
        pay="Pay: ",
        pdf="PDF: ",
        voice_hello="Hello, this is a message from {sender}.",
        voice={
            "invoice": "Your invoice {number} for {amount} is due on {due}.",
            "before": "A reminder: your invoice {number} for {amount} is due on {due}.",
            "today": "A reminder: your invoice {number} for {amount} is due today.",
            "overdue": "Your invoice {number} for {amount} was due on {due} and is still unpaid.",
            "receipt": "We have received your payment of {amount} for invoice {number}. Thank you.",
        },
        voice_end="We have sent you the details in a message.",
        push={
            "invoice": ("New invoice from {sender}", "Invoice {number} for {amount}, due {due}."),
            "before": ("Invoice due {due}", "{sender}: invoice {number} for {amount} is due {due}."),
            "today": ("Invoice due today", "{sender}: invoice {number} for {amount} is due today."),
            "overdue": ("Invoice overdue", "{sender}: invoice {number} for {amount} was due {due}."),
            "receipt": ("Payment received", "{sender}: thank you for your payment of {amount} for invoice {number}."),
        },
        tap_pay="Tap to pay.",
        tap_view="Tap to view it.",
    ),
    "es": _Words(
        sms={
            "invoice": "{sender}: factura {number} de {amount}, vence {due}.",
            "before": "{sender}: su factura {number} de {amount} vence {due}.",
            "today": "{sender}: su factura {number} de {amount} vence hoy.",
            "overdue": "{sender}: factura {number} de {amount} pendiente de pago.",
            "receipt": "{sender}: hemos recibido su pago de {amount} de la factura {number}. ¡Gracias!",
        },
        pay="Pagar: ",
        pdf="PDF: ",
        voice_hello="Hola, le llamamos de {sender}.",
        voice={
            "invoice": "Su factura {number} de {amount} vence el {due}.",
            "before": "Le recordamos que su factura {number} de {amount} vence el {due}.",
            "today": "Le recordamos que su factura {number} de {amount} vence hoy.",
            "overdue": "Su factura {number} de {amount} venció el {due} y sigue pendiente de pago.",
            "receipt": "Hemos recibido su pago de {amount} de la factura {number}. Gracias.",
        },
        voice_end="Le hemos enviado los detalles en un mensaje.",
        push={
            "invoice": ("Nueva factura de {sender}", "Factura {number} de {amount}, vence el {due}."),
            "before": ("Su factura vence el {due}", "{sender}: la factura {number} de {amount} vence el {due}."),
            "today": ("Su factura vence hoy", "{sender}: la factura {number} de {amount} vence hoy."),
            "overdue": ("Factura vencida", "{sender}: la factura {number} de {amount} venció el {due}."),
            "receipt": ("Pago recibido", "{sender}: gracias por su pago de {amount} de la factura {number}."),
        },
        tap_pay="Toque para pagar.",
        tap_view="Toque para verla.",
    ),
    "pt": _Words(
        sms={
            "invoice": "{sender}: fatura {number} de {amount}, vence {due}.",
            "before": "{sender}: a fatura {number} de {amount} vence {due}.",
            "today": "{sender}: a fatura {number} de {amount} vence hoje.",
            "overdue": "{sender}: fatura {number} de {amount} em atraso.",
            "receipt": "{sender}: recebemos o pagamento de {amount} da fatura {number}. Obrigado!",
        },
        pay="Pagar: ",
        pdf="PDF: ",
        voice_hello="Olá, esta é uma mensagem de {sender}.",
        voice={
            "invoice": "A sua fatura {number} de {amount} vence em {due}.",
            "before": "Lembramos que a sua fatura {number} de {amount} vence em {due}.",
            "today": "Lembramos que a sua fatura {number} de {amount} vence hoje.",
            "overdue": "A sua fatura {number} de {amount} venceu em {due} e continua por pagar.",
            "receipt": "Recebemos o seu pagamento de {amount} da fatura {number}. Obrigado.",
        },
        voice_end="Os detalhes foram enviados por mensagem.",
        push={
            "invoice": ("Nova fatura de {sender}", "Fatura {number} de {amount}, vencimento {due}."),
            "before": ("Fatura vence em {due}", "{sender}: a fatura {number} de {amount} vence em {due}."),
            "today": ("Fatura vence hoje", "{sender}: a fatura {number} de {amount} vence hoje."),
            "overdue": ("Fatura vencida", "{sender}: a fatura {number} de {amount} venceu em {due}."),
            "receipt": ("Pagamento recebido", "{sender}: obrigado pelo pagamento de {amount} da fatura {number}."),
        },
        tap_pay="Toque para pagar.",
        tap_view="Toque para ver.",
    ),
    "ro": _Words(
        sms={
            "invoice": "{sender}: factura {number} de {amount}, scadență {due}.",
            "before": "{sender}: factura {number} de {amount} scadentă pe {due}.",
            "today": "{sender}: factura {number} de {amount} este scadentă azi.",
            "overdue": "{sender}: factura {number} de {amount} este restantă.",
            "receipt": "{sender}: am primit plata de {amount} pentru factura {number}. Mulțumim!",
        },
        pay="Plată: ",
        pdf="PDF: ",
        voice_hello="Bună ziua, vă contactăm din partea {sender}.",
        voice={
            "invoice": "Factura {number} de {amount} este scadentă pe {due}.",
            "before": "Vă reamintim că factura {number} de {amount} este scadentă pe {due}.",
            "today": "Vă reamintim că factura {number} de {amount} este scadentă astăzi.",
            "overdue": "Factura {number} de {amount} a fost scadentă pe {due} și nu a fost achitată.",
            "receipt": "Am primit plata de {amount} pentru factura {number}. Vă mulțumim.",
        },
        voice_end="V-am trimis detaliile într-un mesaj.",
        push={
            "invoice": ("Factură nouă de la {sender}", "Factura {number} de {amount}, scadentă pe {due}."),
            "before": ("Factură scadentă pe {due}", "{sender}: factura {number} de {amount} este scadentă pe {due}."),
            "today": ("Factură scadentă azi", "{sender}: factura {number} de {amount} este scadentă azi."),
            "overdue": ("Factură restantă", "{sender}: factura {number} de {amount} a fost scadentă pe {due}."),
            "receipt": ("Plată primită", "{sender}: vă mulțumim pentru plata de {amount} pentru factura {number}."),
        },
        tap_pay="Atingeți pentru a plăti.",
        tap_view="Atingeți pentru a o vedea.",
    ),
}


def kind(purpose: str, days_from_due: int | None) -> Kind:
    """``invoice``, ``receipt``, or for ``reminder:<step>`` where the reminder falls.

    A reminder without ``days_from_due`` gets the "before" wording, which only states the due date
    and so stays true on any day.
    """
    if purpose in ("invoice", "receipt"):
        return "invoice" if purpose == "invoice" else "receipt"
    if not purpose.startswith("reminder:"):
        raise ValueError(f"purpose: expected invoice, receipt or reminder:<step>, got {purpose!r}")
    if days_from_due is None or days_from_due < 0:
        return "before"
    return "today" if days_from_due == 0 else "overdue"


def sms_text(
    *,
    locale: Locale,
    purpose: str,
    sender_name: str,
    invoice_number: str,
    amount: str,
    due_date: str,
    days_from_due: int | None,
    pay_url: str | None,
    download_url: str | None,
) -> str:
    """The SMS body, one link a line; a receipt never carries a pay link. Pass it through ``prepare``."""
    words = WORDS[locale]
    what = kind(purpose, days_from_due)
    lines = [words.sms[what].format(sender=sender_name, number=invoice_number, amount=amount, due=due_date)]
    if pay_url is not None and what != "receipt":
        lines.append(words.pay + pay_url)
    if download_url is not None:
        lines.append(words.pdf + download_url)
    return "\n".join(lines)


def voice_text(
    *,
    locale: Locale,
    purpose: str,
    sender_name: str,
    invoice_number: str,
    amount: str,
    due_date: str,
    days_from_due: int | None,
    pay_url: str | None,
    download_url: str | None,
) -> str:
    """The sentence a text-to-speech call says: the amount and the date, and that the details were sent.

    No link is spoken; the link arguments are accepted so every channel takes the same keywords.
    """
    words = WORDS[locale]
    what = kind(purpose, days_from_due)
    spoken = f"{words.voice_hello} {words.voice[what]} {words.voice_end}"
    return spoken.format(sender=sender_name, number=invoice_number, amount=amount, due=due_date)


def push_text(
    *,
    locale: Locale,
    purpose: str,
    sender_name: str,
    invoice_number: str,
    amount: str,
    due_date: str,
    days_from_due: int | None,
    pay_url: str | None,
    download_url: str | None,
) -> tuple[str, str]:
    """(title, body) of a push notification; the body says what a tap opens (pay, else the invoice)."""
    words = WORDS[locale]
    what = kind(purpose, days_from_due)
    title, body = (
        part.format(sender=sender_name, number=invoice_number, amount=amount, due=due_date) for part in words.push[what]
    )
    if pay_url is not None and what != "receipt":
        body = f"{body} {words.tap_pay}"
    elif download_url is not None:
        body = f"{body} {words.tap_view}"
    return title, body
