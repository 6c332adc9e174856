"""Locale-aware cell values: what a spreadsheet export writes, read as the ERP contract's types.

CSV cells are text in the exporter's locale (``1.234,56``, ``05/01/2026``); XLSX cells are often
typed already (numbers, datetimes, or a date serial when the cell lost its format). Each parser
takes either and raises :class:`CellError` with a reason the uploader can act on.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Literal

Cell = str | int | float | Decimal | date | datetime | bool | None
DateOrder = Literal["dd/mm/yyyy", "mm/dd/yyyy", "yyyy-mm-dd"]
DATE_ORDERS: tuple[DateOrder, ...] = ("dd/mm/yyyy", "mm/dd/yyyy", "yyyy-mm-dd")

#: Thousands separators seen in exports besides the one that is not the decimal mark: space,
#: no-break space and narrow no-break space (French, Portuguese, Romanian spreadsheets).
_SPACES = " \u00a0\u202f"
#: Excel's 1900 date system counts from 1899-12-30 (it keeps Lotus' phantom 29 February 1900).
_EXCEL_EPOCH = date(1899, 12, 30)
_MAX_SERIAL = (date(9999, 12, 31) - _EXCEL_EPOCH).days
_ISO = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T][0-9:.]+)?$")
_SLASHED = re.compile(r"^(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})(?: [0-9:.]+)?$")


class CellError(ValueError):
    """A cell that cannot be read as the type its column holds."""


def is_blank(value: Cell) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def parse_text(value: Cell) -> str:
    """Text as written; integral numbers without ``.0`` (ids and phones typed as numbers in XLSX)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime | date):
        return value.isoformat()
    return "" if value is None else str(value).strip()


@cache
def _number_patterns(decimal_mark: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """A number with ``decimal_mark`` and grouping in threes, and the grouping characters."""
    grouping = re.escape(("." if decimal_mark == "," else ",") + _SPACES)
    mark = re.escape(decimal_mark)
    number = re.compile(rf"[+-]?(\d{{1,3}}([{grouping}])\d{{3}}(\2\d{{3}})*|\d+)({mark}\d+)?")
    return number, re.compile(f"[{grouping}]")


def parse_decimal(value: Cell, *, decimal_mark: str = ".", percent: bool = False) -> Decimal:
    """A number written with ``decimal_mark`` and optional thousands grouping (``1.234.567,89``).

    Grouping must be in threes, so a value in the other locale (``1,5`` where ``.`` is the mark)
    is refused rather than read as fifteen. ``percent`` allows a trailing ``%``.
    """
    if isinstance(value, bool | date | datetime):
        raise CellError(f"expected a number, got {parse_text(value)!r}")
    if isinstance(value, int | Decimal):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))  # the shortest decimal that round-trips, not the binary expansion
    text = (value or "").strip()
    if percent:
        text = text.removesuffix("%").rstrip()
    number, separators = _number_patterns(decimal_mark)
    if not number.fullmatch(text):
        raise CellError(f"{text!r} is not a number written with {decimal_mark!r} as the decimal mark")
    digits = separators.sub("", text).replace(decimal_mark, ".")
    try:
        return Decimal(digits)
    except InvalidOperation as e:  # pragma: no cover - the pattern admits only digits
        raise CellError(f"{text!r} is not a number") from e


def parse_date(value: Cell, *, order: DateOrder = "yyyy-mm-dd") -> date:
    """A date cell: a datetime, an Excel serial, ISO ``yyyy-mm-dd`` (always), or ``order``'s slashed form."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        if not 1 <= value <= _MAX_SERIAL:
            raise CellError(f"{value} is not an Excel date serial")
        return _EXCEL_EPOCH + timedelta(days=int(value))
    text = parse_text(value)
    try:
        if found := _ISO.fullmatch(text):
            year, month, day = (int(g) for g in found.groups())
            return date(year, month, day)
        if order != "yyyy-mm-dd" and (found := _SLASHED.fullmatch(text)):
            first, second, year = (int(g) for g in found.groups())
            day, month = (first, second) if order == "dd/mm/yyyy" else (second, first)
            return date(year, month, day)
    except ValueError as e:
        raise CellError(f"{text!r} is not a date: {e}") from e
    expected = "yyyy-mm-dd" if order == "yyyy-mm-dd" else f"{order} or yyyy-mm-dd"
    raise CellError(f"{text!r} is not a date written as {expected}")
