"""GSM-7 awareness: which bodies cost one segment, and what normalising and transliterating keep."""

from __future__ import annotations

import unicodedata
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from factura.common.delivery.gsm import encoding, normalise, prepare, segments, transliterate
from factura.common.events import Customer, Locale
from factura.common.locales import money

#: The GSM 03.38 default alphabet and extension table, typed out from 3GPP TS 23.038 §6.2.1 as an
#: independent check of the codec the module uses (ESC, 0x1B, is left out: it is not a character).
BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
EXTENSION = "\f^{}\\[]~|€"
BIDI = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def test_the_alphabet_is_the_standard_one() -> None:
    assert len(BASIC) == 127
    assert all(encoding(c) == "gsm7" for c in BASIC + EXTENSION)
    for code in range(0x20, 0x2000):  # Latin, Greek, punctuation: nothing else is GSM-7
        char = chr(code)
        if char not in BASIC + EXTENSION:
            assert encoding(char) == "ucs2", repr(char)
    assert encoding("\x1b") == "ucs2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # 160 septets: every extension character is escape + character
        ("€" * 81, 2),
        ("a" * 159 + "€", 2),
        ("a" * 152 + "€" + "a" * 152, 3),  # 306 septets, but a part never splits an escape sequence
        ("ș" * 70, 1),
        ("ș" * 71, 2),
        ("ș" * 134, 2),
        ("ș" * 135, 3),
        ("😀" * 35, 1),  # 70 UTF-16 units
        ("😀" * 36, 2),
        ("ș" * 66 + "😀" * 34, 3),  # 134 units, but a part never splits a surrogate pair
    ],
)
def test_segments(text: str, expected: int) -> None:
    assert segments(text) == expected


@given(st.text(alphabet=BASIC + EXTENSION, max_size=800))
def test_gsm_segments_follow_the_formula(text: str) -> None:
    septets = len(text) + sum(c in EXTENSION for c in text)
    expected = 1 if septets <= 160 else -(-septets // 153)
    assert expected <= segments(text) <= max(1, -(-septets // 152))  # a part loses at most one septet
    if not set(text) & set(EXTENSION):
        assert segments(text) == expected


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("1.286,55\xa0€", "1.286,55 €"),
        ("1\u202f234,56\u2009€", "1 234,56 €"),
        ("‘quoted’ “twice” «guillemets»", '\'quoted\' "twice" "guillemets"'),
        ("a–b—c…", "a-b-c..."),
        ("\u2212" + "5", "-5"),
        ("line\r\nnext\tcol", "line\r\nnext col"),
        ("zero\u200bwidth\u00adsoft\ufeffbom\x0cff\x1besc\x00nul", "zerowidthsoftbomffescnul"),
        ("e\u0301", "é"),  # NFC: the composed letter is GSM-7
        ("e\u200b\u0301", "é"),  # ... also once what kept the mark apart is gone
        ("Ședința", "Ședința"),  # letters are not normalise's business
    ],
)
def test_normalise(raw: str, clean: str) -> None:
    assert normalise(raw) == clean


@pytest.mark.parametrize(
    ("raw", "gsm"),
    [
        ("ș ş ț ţ ă â î Ș Ş Ț Ţ Ă Â Î", "s s t t a a i S S T T A A I"),
        ("á í ó ú ã õ ê ô â Á Í Ó Ú Ã Õ Ê Ô", "a i o u a o e o a A I O U A O E O"),
        ("é è à ù ì ò Ç ñ Ñ ü ö ä Ä Ö Ü ß É", "é è à ù ì ò Ç ñ Ñ ü ö ä Ä Ö Ü ß É"),
        ("Gonçalves", "GonÇalves"),  # GSM-7 has only the capital Ç
        ("Œuvre ﬁn ½ Łódź", "OEuvre fin 1?2 Lodz"),
        ("😀 漢字", "? ??"),
        ("«Ședința» — 1.286,55\xa0€", '"Sedinta" - 1.286,55 €'),
    ],
)
def test_transliterate(raw: str, gsm: str) -> None:
    assert transliterate(raw) == gsm


@given(st.text())
def test_transliterate_always_gives_gsm7(text: str) -> None:
    assert encoding(transliterate(text)) == "gsm7"


@given(st.text())
def test_normalise_is_idempotent_and_leaves_no_control_or_format_character(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once
    assert transliterate(once) == transliterate(text)
    assert all(c in "\n\r " or unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zs") for c in once)


@given(st.text(alphabet=BASIC + EXTENSION))
def test_gsm_text_survives_both_untouched(text: str) -> None:
    kept = "".join(c for c in text if c != "\f")  # a form feed is a control character: dropped
    assert normalise(text) == kept
    assert transliterate(text) == kept


@given(st.text(alphabet=st.characters(codec="utf-8")), st.sampled_from(list(BIDI)))
def test_bidi_controls_never_survive_prepare(text: str, control: str) -> None:
    spoofed = f"{control}{text}{control}"
    for allowed in (False, True):
        assert not set(prepare(spoofed, transliterate=allowed).text) & set(BIDI)


@pytest.mark.parametrize(
    ("lang", "country", "currency"), [("es", "ES", "EUR"), ("pt", "PT", "EUR"), ("ro", "RO", "RON")]
)
def test_babel_amounts_are_gsm7(lang: Locale, country: str, currency: str) -> None:
    amount = money(Decimal("-1234567.89"), currency, Customer(customer_id="c", name="n", country=country, locale=lang))
    assert encoding(amount) == "ucs2"  # CLDR puts no-break spaces in amounts
    body = prepare(f"Total {amount}", transliterate=False)
    assert (body.encoding, body.segments) == ("gsm7", 1)


def test_prepare_counts_what_it_sends() -> None:
    kept = prepare("Factură 1.286,55\xa0RON", transliterate=False)
    assert kept.text == "Factură 1.286,55 RON"
    assert (kept.encoding, kept.segments) == ("ucs2", 1)
    swapped = prepare("Factură 1.286,55\xa0RON", transliterate=True)
    assert swapped.text == "Factura 1.286,55 RON"
    assert (swapped.encoding, swapped.segments) == ("gsm7", 1)
    long = prepare("ă" * 71, transliterate=False)
    assert (long.encoding, long.segments) == ("ucs2", 2)
    assert prepare("ă" * 71, transliterate=True).segments == 1
