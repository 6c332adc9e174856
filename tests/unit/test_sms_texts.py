"""SMS, voice and push wording: every language and purpose renders, and en/es/pt SMS cost one segment."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import TypedDict, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from factura.common.delivery.gsm import encoding, prepare, segments
from factura.common.events import LOCALES, Customer, Locale
from factura.common.locales import day, money
from factura.sms_sender.texts import WORDS, Kind, kind, push_text, sms_text, voice_text

LINK = "https://fx.example.es/l/Ab3xK9q2"
PAY = "https://fx.example.es/l/Pay4xK9q"
SENDER = "Ferreteria Lopez e H"  # 20: the longest display name the one-segment promise covers
NUMBER = "FA-2025-000123"  # 14
AMOUNT = "1.286,55\xa0€"  # as Babel writes it for es_ES
DUE = "15/03/2025"  # 10: the longest short date CLDR writes for these languages
PURPOSES = [
    ("invoice", None, "invoice"),
    ("reminder:before-5", -5, "before"),
    ("reminder:due", 0, "today"),
    ("reminder:after-3", 3, "overdue"),
    ("receipt", None, "receipt"),
]
LINKS = [(PAY, LINK), (PAY, None), (None, LINK), (None, None)]
ONE_SEGMENT: list[Locale] = ["en", "es", "pt"]


class Inputs(TypedDict):
    locale: Locale
    purpose: str
    sender_name: str
    invoice_number: str
    amount: str
    due_date: str
    days_from_due: int | None
    pay_url: str | None
    download_url: str | None


def inputs(locale: Locale, purpose: str, days: int | None, pay: str | None, pdf: str | None) -> Inputs:
    return Inputs(
        locale=locale,
        purpose=purpose,
        sender_name=SENDER,
        invoice_number=NUMBER,
        amount=AMOUNT,
        due_date=DUE,
        days_from_due=days,
        pay_url=pay,
        download_url=pdf,
    )


def test_every_language_has_every_kind() -> None:
    assert set(WORDS) == set(LOCALES)
    for words in WORDS.values():
        assert set(words.sms) == set(words.voice) == set(words.push) == set(get_args(Kind))


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize(("purpose", "days", "expected_kind"), PURPOSES)
@pytest.mark.parametrize("links", LINKS)
def test_renders(
    locale: Locale, purpose: str, days: int | None, expected_kind: Kind, links: tuple[str | None, str | None]
) -> None:
    pay, pdf = links
    assert kind(purpose, days) == expected_kind
    given_ = inputs(locale, purpose, days, pay, pdf)
    sms, voice, push = sms_text(**given_), voice_text(**given_), push_text(**given_)
    assert SENDER in sms and AMOUNT in sms and NUMBER in sms
    assert "{" not in sms + voice + "".join(push)
    assert (DUE in sms) == (expected_kind in ("invoice", "before"))
    assert (PAY in sms) == (pay is not None and expected_kind != "receipt")
    assert (LINK in sms) == (pdf is not None)
    if pay is None and pdf is None:
        assert "\n" not in sms and "http" not in sms
    # The call says the amount (and the date, unless it is today or a receipt), never a link.
    assert AMOUNT in voice and "http" not in voice
    assert (DUE in voice) == (expected_kind in ("invoice", "before", "overdue"))
    assert voice.endswith(WORDS[locale].voice_end)
    title, body = push
    assert title and AMOUNT in body and "http" not in title + body
    if pay is not None and expected_kind != "receipt":
        assert body.endswith(WORDS[locale].tap_pay)
    elif pdf is not None:
        assert body.endswith(WORDS[locale].tap_view)
    else:
        assert body.endswith(".")


@pytest.mark.parametrize("locale", ONE_SEGMENT)
@pytest.mark.parametrize(("purpose", "days", "_kind"), PURPOSES)
def test_en_es_pt_sms_with_both_links_fit_one_gsm7_segment(
    locale: Locale, purpose: str, days: int | None, _kind: str
) -> None:
    body = prepare(sms_text(**inputs(locale, purpose, days, PAY, LINK)), transliterate=False)
    assert (body.encoding, body.segments) == ("gsm7", 1), body.text


@pytest.mark.parametrize("locale", ONE_SEGMENT)
def test_en_es_pt_fixed_words_are_gsm7(locale: Locale) -> None:
    words = WORDS[locale]
    for fixed in [*words.sms.values(), words.pay, words.pdf]:
        assert encoding(fixed) == "gsm7", fixed


@pytest.mark.parametrize(("purpose", "days", "_kind"), PURPOSES)
def test_romanian_is_ucs2_unless_transliterated(purpose: str, days: int | None, _kind: str) -> None:
    sms = sms_text(**inputs("ro", purpose, days, PAY, LINK))
    assert prepare(sms, transliterate=False).encoding == "ucs2"
    assert prepare(sms, transliterate=True).encoding == "gsm7"


@pytest.mark.parametrize(
    ("locale", "country", "currency"),
    [("es", "ES", "EUR"), ("pt", "PT", "EUR"), ("pt", "BR", "BRL"), ("en", "GB", "GBP")],
)
def test_babel_money_and_short_date_keep_one_segment(locale: Locale, country: str, currency: str) -> None:
    customer = Customer(customer_id="c", name="n", country=country, locale=locale)
    amount = money(Decimal("1286.55"), currency, customer)
    due = day(date(2025, 12, 31), customer, "short")
    assert len(due) <= len(DUE)
    for purpose, days, _ in PURPOSES:
        sms = sms_text(
            locale=locale,
            purpose=purpose,
            sender_name=SENDER,
            invoice_number=NUMBER,
            amount=amount,
            due_date=due,
            days_from_due=days,
            pay_url=PAY,
            download_url=LINK,
        )
        body = prepare(sms, transliterate=False)
        assert (body.encoding, body.segments) == ("gsm7", 1), body.text


@given(
    locale=st.sampled_from(ONE_SEGMENT),
    purpose=st.sampled_from(PURPOSES),
    sender=st.text(alphabet=st.characters(codec="ascii", categories=["L", "N", "Zs"]), min_size=1, max_size=20),
    number=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-/", min_size=1, max_size=14),
    days=st.integers(-60, 60),
)
def test_one_segment_for_any_name_and_number_within_the_sizes(
    locale: Locale, purpose: tuple[str, int | None, str], sender: str, number: str, days: int
) -> None:
    name, fixed_days, _ = purpose
    sms = sms_text(
        locale=locale,
        purpose=name,
        sender_name=sender,
        invoice_number=number,
        amount=AMOUNT,
        due_date=DUE,
        days_from_due=days if name.startswith("reminder:") else fixed_days,
        pay_url=PAY,
        download_url=LINK,
    )
    assert segments(prepare(sms, transliterate=False).text) == 1


@given(st.text(min_size=1, max_size=20), st.sampled_from(["\u202e", "\u2066", "\u200f", "\u202a"]))
def test_bidi_controls_in_a_sender_name_never_survive_prepare(name: str, control: str) -> None:
    sms = sms_text(
        locale="en",
        purpose="invoice",
        sender_name=f"{control}{name}{control}",
        invoice_number=NUMBER,
        amount=AMOUNT,
        due_date=DUE,
        days_from_due=None,
        pay_url=PAY,
        download_url=None,
    )
    assert control in sms  # texts.py leaves cleaning to prepare
    for allowed in (False, True):
        assert control not in prepare(sms, transliterate=allowed).text


def test_reminder_without_days_states_the_due_date() -> None:
    assert kind("reminder:custom", None) == "before"


@pytest.mark.parametrize("purpose", ["", "reminder", "payment", "Invoice"])
def test_unknown_purpose_is_refused_by_name(purpose: str) -> None:
    with pytest.raises(ValueError, match="purpose"):
        kind(purpose, None)
