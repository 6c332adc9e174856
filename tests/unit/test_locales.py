"""Money and dates read the way each customer expects (CLDR via Babel)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from factura.common.events import Customer, Locale
from factura.common.locales import babel_locale, day, money


def customer(locale: Locale, country: str) -> Customer:
    return Customer(customer_id="c", name="n", country=country, locale=locale)


@pytest.mark.parametrize(
    ("lang", "country", "currency", "expected"),
    [
        ("es", "ES", "EUR", "1.234,56\xa0€"),
        ("pt", "BR", "BRL", "R$\xa01.234,56"),
        ("en", "US", "USD", "$1,234.56"),
        ("ro", "RO", "RON", "1.234,56\xa0RON"),
        ("pt", "PT", "EUR", "1\xa0234,56\xa0€"),
    ],
)
def test_money_follows_language_and_country(lang: Locale, country: str, currency: str, expected: str) -> None:
    assert money(Decimal("1234.56"), currency, customer(lang, country)) == expected


def test_country_without_a_locale_in_that_language_falls_back() -> None:
    assert babel_locale("pt", "ES") == "pt_PT"
    assert babel_locale("es", "MX") == "es_MX"


def test_dates_are_localised() -> None:
    assert day(date(2026, 12, 2), customer("ro", "RO"), "long") == "2 decembrie 2026"
    assert day(date(2026, 12, 2), customer("es", "ES"), "long") == "2 de diciembre de 2026"
