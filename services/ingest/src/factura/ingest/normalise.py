"""Pure normalisation of ERP messages into event data. No I/O, so every rule is unit-testable."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, cast

from pydantic import ValidationError

from factura.common.erp import ErpCustomer, ErpInvoiceV1, ErpPaymentV1
from factura.common.errors import InvalidMessage, field_errors
from factura.common.events import (
    Customer,
    FieldError,
    InvoiceCreatedV1,
    Line,
    Locale,
    PaymentReceivedV1,
    SuppliedDocument,
    cents,
)

TOTAL_TOLERANCE = Decimal("0.01")
#: Country → default invoice language, for customers whose ERP record has none.
COUNTRY_LOCALE = {
    "ES": "es", "MX": "es", "CO": "es", "AR": "es", "CL": "es", "PE": "es", "UY": "es", "EC": "es",
    "PT": "pt", "BR": "pt", "AO": "pt", "MZ": "pt",
    "RO": "ro", "MD": "ro",
}  # fmt: skip


def _customer(c: ErpCustomer) -> Customer:
    """Contacts arrive normalised by the contract; what is left is the default language."""
    locale = c.locale or COUNTRY_LOCALE.get(c.country, "en")
    return Customer(
        customer_id=c.id,
        name=c.name,
        country=c.country,
        email=c.email,
        phone=c.phone,
        locale=cast(Locale, locale),
        tax_id=c.tax_id,
    )


def invoice_from_erp(payload: dict[str, Any], *, allow_test_domains: bool = False) -> InvoiceCreatedV1:
    """Validate and normalise; raise :class:`InvalidMessage` listing every problem found.

    ``allow_test_domains`` admits addresses under the reserved ``.test`` TLD (RFC 2606), which
    real invoices never use but local stacks and demos do.
    """
    try:
        erp = ErpInvoiceV1.model_validate(payload, context={"allow_test_domains": allow_test_domains})
    except ValidationError as e:
        raise InvalidMessage(field_errors(e)) from e
    errors: list[FieldError] = []
    if erp.due_date < erp.issue_date:
        errors.append(FieldError(field="due_date", message=f"{erp.due_date} is before issue_date {erp.issue_date}"))
    lines = [
        Line(
            description=line.description,
            quantity=line.quantity,
            unit_price=line.unit_price,
            tax_rate=line.tax_rate,
            amount=cents(line.quantity * line.unit_price),
        )
        for line in erp.lines
    ]
    subtotal = sum((line.amount for line in lines), Decimal("0"))
    tax_total = sum((cents(line.amount * line.tax_rate / 100) for line in lines), Decimal("0"))
    total = subtotal + tax_total
    if erp.total is not None and abs(erp.total - total) > TOTAL_TOLERANCE:
        errors.append(FieldError(field="total", message=f"{erp.total} does not match the lines' total {total}"))
    if errors:
        raise InvalidMessage(errors)
    return InvoiceCreatedV1(
        invoice_number=erp.invoice_number,
        issue_date=erp.issue_date,
        due_date=erp.due_date,
        currency=erp.currency.upper(),
        seller_name=erp.seller_name,
        customer=_customer(erp.customer),
        lines=lines,
        subtotal=subtotal,
        tax_total=tax_total,
        total=total,
        erp_source=erp.erp_source,
        supplied_document=SuppliedDocument(
            key=erp.document.s3_key, xml_key=erp.document.xml_s3_key, annex_keys=erp.document.annex_s3_keys
        )
        if erp.document
        else None,
    )


def payment_from_erp(payload: dict[str, Any]) -> tuple[ErpPaymentV1, PaymentReceivedV1]:
    try:
        erp = ErpPaymentV1.model_validate(payload)
    except ValidationError as e:
        raise InvalidMessage(field_errors(e)) from e
    return erp, PaymentReceivedV1(
        payment_id=erp.payment_id,
        amount=erp.amount,
        currency=erp.currency.upper(),
        paid_at=erp.paid_at,
        method=erp.method,
    )
