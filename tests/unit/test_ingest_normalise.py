"""Ingest's validation and normalisation: every refusal names its field.

Part of it is the contract's rules the domain model would otherwise enforce later, where a refusal
is a crash that can only be retried: decimals and digits of amounts, and text that could not go
into an email header or XML.
"""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import pytest

from factura.common.errors import InvalidMessage
from factura.common.events import InvoiceCreatedV1
from factura.common.schemas import EXAMPLES_DIR
from factura.ingest.normalise import invoice_from_erp, payment_from_erp

BASE: dict[str, Any] = json.loads((EXAMPLES_DIR / "erp.invoice.v1.json").read_text(encoding="utf-8"))


def variant(**changes: Any) -> dict[str, Any]:
    payload = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        target = payload
        *path, last = dotted.split("__")
        for part in path:
            target = target[part]
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    return payload


def reasons(payload: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidMessage) as info:
        invoice_from_erp(payload)
    return {r.field: r.message for r in info.value.reasons}


def accepted(payload: dict[str, Any], *, allow_test_domains: bool = False) -> InvoiceCreatedV1:
    return invoice_from_erp(payload, allow_test_domains=allow_test_domains)[1]


def test_normalises_contacts_currency_and_totals() -> None:
    invoice = accepted(BASE)
    assert invoice.customer.email == "Facturas@pasteleria-lucia.es"  # domain lower-cased, local part kept
    assert invoice.customer.phone == "+34612345678"
    assert invoice.customer.locale == "es"  # from the country
    assert invoice.currency == "EUR"
    assert (invoice.subtotal, invoice.tax_total, invoice.total) == (
        Decimal("257.00"),
        Decimal("29.55"),
        Decimal("286.55"),
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"customer__email": "not-an-email"}, "customer.email"),
        ({"customer__phone": "12"}, "customer.phone"),
        ({"customer__locale": "de"}, "customer.locale"),
        ({"due_date": "2026-10-01"}, "due_date"),
        ({"total": "999.99"}, "total"),
        ({"lines": []}, "lines"),
        ({"currency": "EURO"}, "currency"),
        ({"tenant_id": "Not A Tenant"}, "tenant_id"),
        ({"issue_date": "yesterday"}, "issue_date"),
        ({"customer__name": None}, "customer.name"),
    ],
)
def test_refusals_name_the_field(changes: dict[str, Any], field: str) -> None:
    assert field in reasons(variant(**changes))


def test_all_field_problems_are_reported_at_once() -> None:
    found = reasons(variant(customer__email="x@", customer__phone="000", currency="EURO", due_date="soon"))
    assert {"customer.email", "customer.phone", "currency", "due_date"} <= set(found)


def test_cross_field_rules_are_reported_together() -> None:
    found = reasons(variant(due_date="2026-01-01", total="1.00"))
    assert {"due_date", "total"} <= set(found)


def test_customer_without_email_is_valid() -> None:
    assert accepted(variant(customer__email=None)).customer.email is None


def test_payment_normalised() -> None:
    payload = json.loads((EXAMPLES_DIR / "erp.payment.v1.json").read_text(encoding="utf-8"))
    erp, payment = payment_from_erp(payload | {"currency": "eur"})
    assert payment.currency == "EUR" and erp.invoice_number == "F-2026-000123"
    with pytest.raises(InvalidMessage) as info:
        payment_from_erp(payload | {"amount": "-5"})
    assert info.value.reasons[0].field == "amount"


def test_reserved_test_domains_only_when_allowed() -> None:
    payload = variant(customer__email="billing@acme.test")
    assert "customer.email" in reasons(payload)
    assert accepted(payload, allow_test_domains=True).customer.email == "billing@acme.test"


def line(**changes: Any) -> dict[str, Any]:
    return {"description": "Harina", "quantity": "1", "unit_price": "10", "tax_rate": "21"} | changes


@pytest.mark.parametrize("rate", [19.125, "19.125", Decimal("19.125"), "100.01", -1])
def test_tax_rate_the_domain_cannot_hold_is_a_field_reason(rate: Any) -> None:
    assert list(reasons(variant(lines=[line(tax_rate=rate)], total=None))) == ["lines.0.tax_rate"]


def test_tax_rate_trailing_zeros_are_not_extra_decimals() -> None:
    assert accepted(variant(lines=[line(tax_rate="21.000")], total=None)).lines[0].tax_rate == Decimal("21")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"unit_price": "123456789012345"}, "lines.0.unit_price"),  # 15 digits before the point
        ({"unit_price": "1.00001"}, "lines.0.unit_price"),
        ({"quantity": "0"}, "lines.0.quantity"),
        ({"quantity": "12345678901"}, "lines.0.quantity"),
        ({"quantity": "9999999999", "unit_price": "99999999999999"}, "lines.0"),  # fits each, not their product
        ({"quantity": "1E+5"}, None),  # accepted: 100000
    ],
)
def test_line_amounts_must_fit_the_domain(changes: dict[str, Any], field: str | None) -> None:
    payload = variant(lines=[line(**changes)], total=None)
    if field is None:
        accepted(payload)
    else:
        found = reasons(payload)
        assert list(found) == [field]


def test_line_amount_over_18_digits_says_why() -> None:
    message = reasons(variant(lines=[line(quantity="9999999999", unit_price="99999999999999")]))["lines.0"]
    assert "16 digits before the decimal point" in message


def test_lines_that_fit_one_by_one_but_not_together() -> None:
    big = line(quantity="1000000", unit_price="9000000000", tax_rate="0")  # 9e15 each: fits
    found = reasons(variant(lines=[big, big], total=None))
    assert list(found) == ["lines"] and "subtotal" in found["lines"]


def test_product_beyond_28_digits_is_exact() -> None:
    """The default decimal context keeps 28 digits; this product needs 24 integer and 8 decimal ones."""
    payload = variant(lines=[line(quantity="0.0003", unit_price="33333333333333.3333", tax_rate="0")], total=None)
    assert accepted(payload).lines[0].amount == Decimal("10000000000.00")


@pytest.mark.parametrize(
    "dotted",
    ["customer__name", "customer__id", "seller_name", "erp_source", "customer__tax_id"],
)
@pytest.mark.parametrize(
    "bad", ["Lucía\r\nBcc: x@example.com", "a\nb", "nul\x00", "esc\x1b[31m", "n\x85el", "l\u2028s", "\ufffe"]
)
def test_control_characters_in_header_and_xml_text_are_refused(dotted: str, bad: str) -> None:
    assert dotted.replace("__", ".") in reasons(variant(**{dotted: bad}))


@pytest.mark.parametrize("number", ["F-2026\r\n1", "F 1", "F\t1"])
def test_invoice_number_allows_no_control_characters(number: str) -> None:
    assert "invoice_number" in reasons(variant(invoice_number=number))


def test_surrounding_white_space_is_stripped_not_refused() -> None:
    erp, invoice = invoice_from_erp(variant(tenant_id=" harinas-sur\n", customer__name="  Lucía S.L.\r\n"))
    assert erp.tenant_id == "harinas-sur" and invoice.customer.name == "Lucía S.L."


def test_blank_name_is_refused() -> None:
    assert "customer.name" in reasons(variant(customer__name="   "))


def test_description_may_span_lines_but_holds_no_other_control_characters() -> None:
    text = "Harina T55\n\tsaco de 25 kg\r\n"
    assert accepted(variant(lines=[line(description=text)], total=None)).lines[0].description == text.strip()
    assert "lines.0.description" in reasons(variant(lines=[line(description="a\x0cb")], total=None))


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"s3_key": "harinas-sur/erp/a.pdf", "xml_s3_key": ""}, "document.xml_s3_key"),
        ({"s3_key": "harinas-sur/erp/a.pdf", "annex_s3_keys": [""]}, "document.annex_s3_keys.0"),
        ({"s3_key": "harinas-sur/erp/a.pdf", "annex_s3_keys": ["x" * 1025]}, "document.annex_s3_keys.0"),
        ({"s3_key": "harinas-sur/erp/a\n.pdf"}, "document.s3_key"),
    ],
)
def test_document_keys(document: dict[str, Any], field: str) -> None:
    assert field in reasons(variant(document=document))


def test_payment_text_and_invoice_number() -> None:
    payload = json.loads((EXAMPLES_DIR / "erp.payment.v1.json").read_text(encoding="utf-8"))
    with pytest.raises(InvalidMessage) as info:
        payment_from_erp(payload | {"method": "sepa\r\n", "payment_id": "P\x001", "invoice_number": "F 1"})
    assert {r.field for r in info.value.reasons} == {"payment_id", "invoice_number"}
    with pytest.raises(InvalidMessage) as info:
        payment_from_erp(payload | {"amount": "12345678901234567"})
    assert [r.field for r in info.value.reasons] == ["amount"]


def test_lone_surrogate_given_directly_is_refused_not_raised() -> None:
    """decode_erp refuses these first; a payload built another way still gets a reason."""
    with pytest.raises(InvalidMessage):
        invoice_from_erp(variant(customer__name="Luc\ud800a"))


@pytest.mark.parametrize("phone", ["+34 600 12", "+34 1", "+999 1234567"])
def test_a_refused_phone_number_is_named_but_not_quoted(phone: str) -> None:
    """Rejections live on in the audit trail, where contact data is only kept encrypted."""
    found = reasons(variant(customer__phone=phone))
    assert "phone number" in found["customer.phone"]
    assert phone not in json.dumps(found) and phone.replace(" ", "") not in json.dumps(found)
