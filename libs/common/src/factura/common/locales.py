"""The product's languages and how money and dates read for each customer (Babel/CLDR, never by hand).

The language picks the words; language *and* country pick the conventions: a Brazilian customer
reads ``R$ 1.234,56``, a Portuguese one ``1234,56 €``, both in Portuguese.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from functools import cache

from babel import Locale, UnknownLocaleError
from babel.dates import format_date as _format_date
from babel.numbers import format_currency, format_decimal, format_percent

from factura.common.events import Customer

#: Language → the locale used when the customer's country has no CLDR locale in that language.
DEFAULT_LOCALE = {"es": "es_ES", "pt": "pt_PT", "en": "en_US", "ro": "ro_RO"}


@cache
def babel_locale(lang: str, country: str) -> str:
    """``pt`` + ``BR`` → ``pt_BR``; ``pt`` + ``ES`` (no such locale) → ``pt_PT``."""
    try:
        Locale.parse(f"{lang}_{country}")
    except (UnknownLocaleError, ValueError):
        return DEFAULT_LOCALE[lang]
    return f"{lang}_{country}"


def locale_of(customer: Customer) -> str:
    return babel_locale(customer.locale, customer.country)


def money(amount: Decimal, currency: str, customer: Customer) -> str:
    return format_currency(amount, currency, locale=locale_of(customer))


def day(value: date, customer: Customer, style: str = "medium") -> str:
    return _format_date(value, style, locale=locale_of(customer))


def number(value: Decimal, customer: Customer) -> str:
    return format_decimal(value, locale=locale_of(customer))


def percent(rate: Decimal, customer: Customer) -> str:
    """A tax rate given in percent (21 → ``21 %`` or ``21%`` as the locale writes it)."""
    return format_percent(rate / 100, "#,##0.##%", locale=locale_of(customer))
