"""SMS text: GSM-7 or UCS-2, how many segments a body costs, and making a body GSM-7 when asked.

An SMS is billed per segment, and one character outside the GSM 03.38 alphabet switches the whole
body to UCS-2: 70 characters a segment instead of 160. Babel writes ``1.286,55 €`` with a no-break
space, and one such invisible character would triple the price of a message, so :func:`normalise`
(always applied) turns typography into its plain equivalent, and :func:`transliterate` (applied
when the tenant allows it) trades the remaining letters for look-alikes.

The alphabet and its extension table come from the ``gsm0338`` codec (3GPP TS 23.038 §6.2.1 and
§6.2.1.1, default tables): the extension characters ``^ { } \\ [ ~ ] | €`` and form feed are sent as
escape + character, two septets each.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import cache
from typing import Final, Literal

import gsm0338

Encoding = Literal["gsm7", "ucs2"]

#: Septets (GSM-7) or UTF-16 code units (UCS-2) in a single message, and in each part of a
#: concatenated one (the user data header takes the difference).
_SINGLE: Final = {"gsm7": 160, "ucs2": 70}
_PART: Final = {"gsm7": 153, "ucs2": 67}
_ESC: Final = "\x1b"  # the codec maps it, but it is the escape code, not a character to send

#: Typography with a plain GSM-7 equivalent that reads the same. Space separators (Zs) are
#: handled by category in :func:`normalise`.
_PLAIN: Final = str.maketrans(
    {
        "\t": " ",
        "\u2028": "\n",  # line separator
        "\u2029": "\n",  # paragraph separator
        "‘": "'",
        "’": "'",
        "‚": "'",
        "‛": "'",
        "′": "'",
        "‹": "'",
        "›": "'",
        "“": '"',
        "”": '"',
        "„": '"',
        "‟": '"',
        "″": '"',
        "«": '"',
        "»": '"',
        "\u2010": "-",  # hyphen
        "\u2011": "-",  # non-breaking hyphen
        "\u2012": "-",  # figure dash
        "–": "-",
        "—": "-",
        "\u2015": "-",  # horizontal bar
        "\u2212": "-",  # minus sign (CLDR writes it for negative numbers in some locales)
        "…": "...",
    }
)

#: Look-alikes :func:`transliterate` uses before the NFKD fallback: letters NFKD does not
#: decompose, and ``ç``, which NFKD would turn into ``c``. GSM-7 has only the capital ``Ç``
#: (0x09; earlier editions of the standard had the small one there and many handsets still show
#: it so), so ``ç`` → ``Ç`` keeps the cedilla a Portuguese reader expects.
_LOOKALIKE: Final = {
    "ç": "Ç",
    "œ": "oe",
    "Œ": "OE",
    "ł": "l",
    "Ł": "L",
    "đ": "d",
    "Đ": "D",
    "ı": "i",
    "`": "'",
}

_KEEP_CONTROLS: Final = frozenset("\n\r")


@dataclass(frozen=True)
class SmsBody:
    """A body ready for the provider, with what it will cost."""

    text: str
    encoding: Encoding
    segments: int


@cache
def _septets(char: str) -> int:
    """Septets one character takes in GSM-7 (1, or 2 for the extension table); 0 if it has none."""
    if char == _ESC:
        return 0
    try:
        return len(char.encode(gsm0338.Codec.NAME))
    except UnicodeEncodeError:
        return 0


def _is_gsm(text: str) -> bool:
    return all(_septets(c) for c in text)


def encoding(text: str) -> Encoding:
    """``gsm7`` if every character is in the GSM 03.38 alphabet or its extension table."""
    return "gsm7" if _is_gsm(text) else "ucs2"


def segments(text: str) -> int:
    """Segments the body is billed as; an empty body still costs one.

    Up to 160 septets (GSM-7) or 70 UTF-16 units (UCS-2) is one; beyond that every part holds 153
    or 67, which is ``ceil(units / 153)`` (``/ 67``) except that a part never splits an escape
    sequence or a surrogate pair: such a character moves whole to the next part, as SMSCs and
    providers split it, so a body can take one part more than the plain division says.
    """
    kind = encoding(text)
    widths = [_septets(c) if kind == "gsm7" else len(c.encode("utf-16-le")) // 2 for c in text]
    if sum(widths) <= _SINGLE[kind]:
        return 1
    part, parts, used = _PART[kind], 1, 0
    for width in widths:
        if used + width > part:
            parts, used = parts + 1, 0
        used += width
    return parts


def normalise(text: str) -> str:
    """Fixes that never change what the text says, applied to every body.

    NFC composition (a decomposed ``é`` is GSM-7 once composed); every space separator (no-break,
    narrow no-break, thin, ...) → space; typographic quotes, dashes and the ellipsis → ASCII; tab →
    space; control and format characters removed (bidi marks and isolates, zero-width spaces and
    joiners, soft hyphens, BOM, form feed, escape), keeping line breaks. Those are invisible on a
    phone, some are spoofing tools in a name, and any of them would make the body UCS-2.
    """
    out = []
    for char in text.translate(_PLAIN):
        category = unicodedata.category(char)
        if category == "Zs":
            out.append(" ")
        elif category not in ("Cc", "Cf", "Cs") or char in _KEEP_CONTROLS:
            out.append(char)
    # Last, so that a mark a removed character kept apart from its letter composes with it too.
    return unicodedata.normalize("NFC", "".join(out))


def _lookalike(char: str) -> str:
    if _septets(char):
        return char
    if char in _LOOKALIKE:
        return _LOOKALIKE[char]
    base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
    return "".join(c if _septets(c) else _LOOKALIKE.get(c, "?") for c in base) or "?"


def transliterate(text: str) -> str:
    """:func:`normalise`, then every character outside GSM-7 becomes a GSM-7 look-alike.

    ``ș ş ț ţ ă â î`` → ``s t a a i``, ``á í ó ú ã õ ê ô`` → their base letter, ``ç`` → ``Ç``;
    letters GSM-7 has (``é è à ù ì ò Ç ñ Ñ ü ö ä ß``...) stay. NFKD decomposition without its
    combining marks is the general fallback (``ﬁ`` → ``fi``, ``²`` → ``2``); what is still
    outside the alphabet becomes ``?`` (an emoji, a CJK character).
    """
    return "".join(_lookalike(c) for c in normalise(text))


_to_gsm: Final = transliterate  # ``prepare``'s keyword argument shadows the function's name


def prepare(text: str, *, transliterate: bool) -> SmsBody:
    """The body to send: always normalised; transliterated only if the tenant allows it.

    Without transliteration a character outside GSM-7 stays, and the body is counted as UCS-2.
    """
    body = _to_gsm(text) if transliterate else normalise(text)
    return SmsBody(text=body, encoding=encoding(body), segments=segments(body))
