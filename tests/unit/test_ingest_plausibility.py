"""Plausibility at the door: what the calendar, JSON and Unicode allow but no real invoice holds.

Each rule is checked at its boundary: the last plausible value passes, the next one is refused
with the field named.
"""

from __future__ import annotations

import copy
import json
import sys
import unicodedata
from datetime import date, timedelta
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from factura.common.erp import MAX_MESSAGE_BYTES, decode_erp, forbidden_character, owned_key, upload_prefix
from factura.common.errors import InvalidMessage
from factura.common.schemas import EXAMPLES_DIR, SCHEMA_DIR
from factura.ingest.normalise import DateWindow, add_years, invoice_from_erp
from factura.ingest.settings import Settings

BASE: dict[str, Any] = json.loads((EXAMPLES_DIR / "erp.invoice.v1.json").read_text(encoding="utf-8"))
SCHEMA = jsonschema.Draft202012Validator(json.loads((SCHEMA_DIR / "erp.invoice.v1.json").read_text(encoding="utf-8")))
TODAY = date(2026, 11, 23)
TENANT = BASE["tenant_id"]


def invoice(**fields: Any) -> dict[str, Any]:
    payload = copy.deepcopy(BASE)
    payload.update(fields)
    return payload


def accept(payload: dict[str, Any], **options: Any) -> None:
    options.setdefault("today", TODAY)
    invoice_from_erp(payload, **options)


def refusals(payload: dict[str, Any], **options: Any) -> dict[str, str]:
    options.setdefault("today", TODAY)
    with pytest.raises(InvalidMessage) as info:
        invoice_from_erp(payload, **options)
    return {r.field: r.message for r in info.value.reasons}


# Size cap ----------------------------------------------------------------------------------------


def _padded(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    shell = b'{"padding": ""}'
    return shell[:-2] + b"x" * (size - len(shell)) + shell[-2:]


@pytest.mark.parametrize("cap", [MAX_MESSAGE_BYTES, 4096])
def test_a_message_of_exactly_the_cap_is_read_one_byte_more_is_refused_with_its_size(cap: int) -> None:
    options = {} if cap == MAX_MESSAGE_BYTES else {"max_bytes": cap}
    assert decode_erp(_padded(cap), **options)["padding"]
    with pytest.raises(InvalidMessage) as info:
        decode_erp(_padded(cap + 1), **options)
    [reason] = info.value.reasons
    assert reason.field == "$" and f"{cap + 1} bytes" in reason.message and f"at most {cap}" in reason.message


def test_a_five_megabyte_message_is_refused() -> None:
    with pytest.raises(InvalidMessage, match="at most"):
        decode_erp(_padded(5 * 1024 * 1024))


# Negative totals only as a credit note -----------------------------------------------------------


def _line(unit_price: str, tax_rate: str = "0") -> dict[str, Any]:
    return {"description": "Abono", "quantity": "1", "unit_price": unit_price, "tax_rate": tax_rate}


def _one_line(unit_price: str, *, total: str | None = None, **fields: Any) -> dict[str, Any]:
    return invoice(lines=[_line(unit_price)], total=total, **fields)


def test_an_invoice_may_total_zero_but_not_one_cent_less() -> None:
    accept(_one_line("0.00", total="0.00"))
    assert "cannot be negative" in refusals(_one_line("-0.01", total="-0.01"))["total"]


def test_the_reported_negative_invoice_is_refused_naming_the_lines_when_no_total_is_given() -> None:
    found = refusals(invoice(lines=[_line("-1000.00", tax_rate="21")], total=None))
    assert "-1210.00" in found["lines"] and "credit_note" in found["lines"]


def test_a_negative_line_is_fine_while_the_invoice_total_stays_positive() -> None:
    accept(invoice(lines=[_line("10.00"), _line("-10.00")], total="0.00"))
    assert "total" in refusals(invoice(lines=[_line("10.00"), _line("-10.01")], total="-0.01"))


def test_a_negative_invoice_is_pointed_to_the_credit_note_contract() -> None:
    found = refusals(_one_line("-1210.00", total="-1210.00"))
    assert "erp.cancellations" in found["total"] and "credit_note" in found["total"]


# Dates within a window ---------------------------------------------------------------------------


def _dated(issue: date, due: date) -> dict[str, Any]:
    return invoice(issue_date=issue.isoformat(), due_date=due.isoformat())


@pytest.mark.parametrize(
    ("inside", "outside"),
    [(date(2016, 11, 23), date(2016, 11, 22)), (date(2027, 11, 23), date(2027, 11, 24))],
    ids=["ten_years_back", "one_year_ahead"],
)
def test_issue_dates_within_the_window_pass_one_day_past_is_refused(inside: date, outside: date) -> None:
    accept(_dated(inside, inside))
    message = refusals(_dated(outside, outside))["issue_date"]
    assert "2016-11-23 to 2027-11-23" in message


def test_the_due_date_may_be_the_issue_date_to_five_years_after_it() -> None:
    issue = date(2026, 11, 2)
    accept(_dated(issue, issue))
    accept(_dated(issue, date(2031, 11, 2)))
    assert "5 years after issue_date" in refusals(_dated(issue, date(2031, 11, 3)))["due_date"]
    assert "before issue_date" in refusals(_dated(issue, issue - timedelta(days=1)))["due_date"]


@pytest.mark.parametrize(("issue", "due"), [("0001-01-01", "0001-01-01"), ("9999-12-31", "9999-12-31")])
def test_the_calendars_ends_are_refused(issue: str, due: str) -> None:
    assert "issue_date" in refusals(invoice(issue_date=issue, due_date=due))


def test_the_window_is_configurable_and_defaults_to_today() -> None:
    narrow = DateWindow(issue_years_back=0, issue_years_ahead=0, due_years_after_issue=0)
    accept(_dated(TODAY, TODAY), dates=narrow)
    found = refusals(_dated(TODAY - timedelta(days=1), TODAY + timedelta(days=1)), dates=narrow)
    assert {"issue_date", "due_date"} <= set(found)
    today = date.today()
    invoice_from_erp(_dated(today, today))  # no `today` given: the current date's window
    with pytest.raises(ValueError):
        DateWindow(issue_years_back=-1)


def test_years_are_added_from_29_february_onto_the_28th_and_stay_in_the_calendar() -> None:
    assert add_years(date(2028, 2, 29), 1) == date(2029, 2, 28)
    assert add_years(date(2028, 2, 29), 4) == date(2032, 2, 28)
    assert add_years(date(9998, 6, 1), 5) == date(9999, 6, 1)
    assert add_years(date(2, 6, 1), -5) == date(1, 6, 1)


# Invisible formatting characters -----------------------------------------------------------------

FORMAT_CHARACTERS = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf"]


def test_every_format_character_is_forbidden_in_one_line_and_multiline_text() -> None:
    missed = [f"U+{ord(c):04X}" for c in FORMAT_CHARACTERS if forbidden_character(f"a{c}b") != c]
    missed += [f"U+{ord(c):04X}" for c in FORMAT_CHARACTERS if forbidden_character(c, multiline=True) != c]
    assert not missed


@pytest.mark.parametrize("char", ["\u202a", "\u202e", "\u2066", "\u2069", "\u200b", "\u200f", "\ufeff", "\u00ad"])
@pytest.mark.parametrize(
    ("field", "where"),
    [
        ("seller_name", lambda p: p),
        ("customer.name", lambda p: p["customer"]),
        ("customer.tax_id", lambda p: p["customer"]),
        ("lines.1.description", lambda p: p["lines"][1]),
    ],
)
def test_bidi_and_invisible_characters_are_refused_naming_the_field(char: str, field: str, where: Any) -> None:
    payload = invoice()
    target, key = where(payload), field.rsplit(".", 1)[-1]
    target[key] = f"Pasteler{char}ía"
    message = refusals(payload)[field]
    assert f"U+{ord(char):04X} at position 8" in message and "invisible formatting" in message


@pytest.mark.parametrize("char", ["\u202e", "\u200b", "\u00ad"])
def test_the_exported_schema_refuses_them_too(char: str) -> None:
    payload = invoice(seller_name=f"Harinas{char} del Sur")
    assert not SCHEMA.is_valid(payload)
    assert SCHEMA.is_valid(invoice(seller_name="Harinas del Sur"))


@pytest.mark.parametrize("char", ["\u202f", "\u2065", "\u00a0", "\u0301", "é", "ș", "\U0001f600"])
def test_neighbours_and_ordinary_text_pass(char: str) -> None:
    """A narrow no-break space, an unassigned code point between the bidi ranges, a combining
    accent, Romanian letters and emoji are not formatting characters."""
    assert forbidden_character(f"a{char}b") is None
    accept(invoice(seller_name=f"Harinas {char} Sur"))


@given(
    text=st.text(st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp")), max_size=40),
    char=st.sampled_from(FORMAT_CHARACTERS),
    at=st.integers(min_value=0, max_value=40),
)
def test_a_format_character_anywhere_is_found_where_it_is(text: str, char: str, at: int) -> None:
    text = text.replace("\ufffe", "").replace("\uffff", "")
    assert forbidden_character(text) is None
    at = min(at, len(text))
    tainted = text[:at] + char + text[at:]
    assert forbidden_character(tainted) == char and tainted.index(char) == at


# Documents under the tenant's prefix -------------------------------------------------------------


def _with_document(**document: Any) -> dict[str, Any]:
    return invoice(document={"s3_key": f"{TENANT}/erp/F-2026-000123.pdf", **document})


def test_keys_under_the_tenants_prefix_pass() -> None:
    accept(
        _with_document(
            xml_s3_key=f"{TENANT}/erp/F-2026-000123.xml",
            annex_s3_keys=[f"{TENANT}/erp/annex.pdf", f" {TENANT}/erp/x/y.pdf "],
        )
    )
    _, created = invoice_from_erp(_with_document(), today=TODAY)
    assert created.supplied_document is not None and created.supplied_document.key.startswith(f"{TENANT}/erp/")


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"s3_key": "other-tenant/F-1.pdf"}, "document.s3_key"),
        ({"s3_key": f"{TENANT}x/F-1.pdf"}, "document.s3_key"),
        ({"s3_key": f"{TENANT}"}, "document.s3_key"),
        ({"s3_key": f"/{TENANT}/erp/F-1.pdf"}, "document.s3_key"),
        ({"s3_key": f"{TENANT}/F-1.pdf"}, "document.s3_key"),
        ({"s3_key": f"{TENANT}/2026/11/F-1/0123456789abcdef/F-1.pdf"}, "document.s3_key"),  # one of our renders
        ({"s3_key": f"{TENANT}/erpx/F-1.pdf"}, "document.s3_key"),
        ({"s3_key": "other-tenant/erp/F-1.pdf"}, "document.s3_key"),
        ({"xml_s3_key": f"{TENANT}/erp/../other-tenant/erp/F-1.xml"}, "document.xml_s3_key"),
        ({"annex_s3_keys": [f"{TENANT}/erp/a.pdf", "other-tenant/erp/b.pdf"]}, "document.annex_s3_keys.1"),
    ],
)
def test_a_key_outside_the_tenants_upload_prefix_is_refused_naming_it(document: dict[str, Any], field: str) -> None:
    found = refusals(_with_document(**document))
    assert list(found) == [field] and f"upload prefix {TENANT}/erp/" in found[field]


def test_a_foreign_key_is_reported_with_the_messages_other_problems() -> None:
    found = refusals(_with_document(s3_key="other-tenant/F-1.pdf") | {"currency": "EURO"})
    assert {"currency", "document.s3_key"} <= set(found)


def test_without_a_valid_tenant_only_the_tenant_is_refused() -> None:
    found = refusals(_with_document(s3_key="other-tenant/F-1.pdf") | {"tenant_id": "Not A Tenant"})
    assert "tenant_id" in found and "document.s3_key" not in found


def test_owned_key_is_the_tenants_upload_prefix_without_climbing_out() -> None:
    assert upload_prefix("t1") == "t1/erp/"
    assert owned_key("t1", "t1/erp/a/b.pdf")
    assert not owned_key("t1", "t1/a/b.pdf")
    assert not owned_key("t1", "t10/erp/a.pdf")
    assert not owned_key("t1", "t1/erp/../../t2/erp/a.pdf")


def test_ingest_settings_carry_the_cap_and_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACTURA_INGEST_MAX_MESSAGE_BYTES", "4096")
    monkeypatch.setenv("FACTURA_INGEST_DATES__ISSUE_YEARS_BACK", "20")
    settings = Settings()
    assert settings.max_message_bytes == 4096
    assert settings.dates == DateWindow(issue_years_back=20)
    accept(_dated(date(2006, 11, 23), date(2006, 11, 23)), dates=settings.dates)
    monkeypatch.setenv("FACTURA_INGEST_MAX_MESSAGE_BYTES", str(1024 * 1024 + 1))
    with pytest.raises(ValueError):
        Settings()
