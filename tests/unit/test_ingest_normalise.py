"""Ingest's validation and normalisation: every refusal names its field."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import pytest

from factura.common.errors import InvalidMessage
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


def test_normalises_contacts_currency_and_totals() -> None:
    invoice = invoice_from_erp(BASE)
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
    assert invoice_from_erp(variant(customer__email=None)).customer.email is None


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
    assert invoice_from_erp(payload, allow_test_domains=True).customer.email == "billing@acme.test"
