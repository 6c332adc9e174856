"""The product's languages and how money and dates read in each (Babel/CLDR, never by hand)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from babel.dates import format_date as _format_date
from babel.numbers import format_currency

#: Invoice language → Babel locale (the region picks number and currency conventions).
BABEL_LOCALE = {"es": "es_ES", "pt": "pt_PT", "en": "en_US", "ro": "ro_RO"}


def money(amount: Decimal, currency: str, lang: str) -> str:
    return format_currency(amount, currency, locale=BABEL_LOCALE[lang])


def day(value: date, lang: str, style: str = "medium") -> str:
    return _format_date(value, style, locale=BABEL_LOCALE[lang])
