"""Pure normalisation of ERP messages into event data. No I/O, so every rule is unit-testable."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any, get_args

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import ValidationError

from factura.common.erp import ErpCustomer, ErpInvoiceV1, ErpPaymentV1
from factura.common.events import (
    Customer,
    FieldError,
    InvoiceCreatedV1,
    Line,
    Locale,
    PaymentReceivedV1,
)
from factura.common.kafka.consumer import InvalidMessage, field_errors

CENT = Decimal("0.01")
TOTAL_TOLERANCE = Decimal("0.01")
LOCALES: tuple[str, ...] = get_args(Locale)
#: Country → default invoice language, for customers whose ERP record has none.
COUNTRY_LOCALE = {
    "ES": "es", "MX": "es", "CO": "es", "AR": "es", "CL": "es", "PE": "es", "UY": "es", "EC": "es",
    "PT": "pt", "BR": "pt", "AO": "pt", "MZ": "pt",
    "RO": "ro", "MD": "ro",
}  # fmt: skip


def _money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def _customer(c: ErpCustomer, errors: list[FieldError], allow_test_domains: bool) -> Customer | None:
    email = None
    if c.email:
        try:
            email = validate_email(c.email, check_deliverability=False, test_environment=allow_test_domains).normalized
        except EmailNotValidError as e:
            errors.append(FieldError(field="customer.email", message=str(e)))
    phone = None
    if c.phone:
        try:
            number = phonenumbers.parse(c.phone, c.country.upper())
            if not phonenumbers.is_valid_number(number):
                raise phonenumbers.NumberParseException(0, "not a valid number for its region")
            phone = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        except phonenumbers.NumberParseException as e:
            errors.append(FieldError(field="customer.phone", message=f"{c.phone!r}: {e._msg}"))
    locale = (c.locale or COUNTRY_LOCALE.get(c.country.upper(), "en")).lower().split("-")[0].split("_")[0]
    if locale not in LOCALES:
        errors.append(FieldError(field="customer.locale", message=f"{c.locale!r} is not one of {', '.join(LOCALES)}"))
    if errors:
        return None
    return Customer(customer_id=c.id, name=c.name, email=email, phone=phone, locale=locale, tax_id=c.tax_id)


def invoice_from_erp(payload: dict[str, Any], *, allow_test_domains: bool = False) -> InvoiceCreatedV1:
    """Validate and normalise; raise :class:`InvalidMessage` listing every problem found.

    ``allow_test_domains`` admits addresses under the reserved ``.test`` TLD (RFC 2606), which
    real invoices never use but local stacks and demos do.
    """
    try:
        erp = ErpInvoiceV1.model_validate(payload)
    except ValidationError as e:
        raise InvalidMessage(field_errors(e)) from e
    errors: list[FieldError] = []
    customer = _customer(erp.customer, errors, allow_test_domains)
    if erp.due_date < erp.issue_date:
        errors.append(FieldError(field="due_date", message=f"{erp.due_date} is before issue_date {erp.issue_date}"))
    lines = [
        Line(
            description=line.description,
            quantity=line.quantity,
            unit_price=line.unit_price,
            tax_rate=line.tax_rate,
            amount=_money(line.quantity * line.unit_price),
        )
        for line in erp.lines
    ]
    subtotal = sum((line.amount for line in lines), Decimal("0"))
    tax_total = sum((_money(line.amount * line.tax_rate / 100) for line in lines), Decimal("0"))
    total = subtotal + tax_total
    if erp.total is not None and abs(erp.total - total) > TOTAL_TOLERANCE:
        errors.append(FieldError(field="total", message=f"{erp.total} does not match the lines' total {total}"))
    if errors or customer is None:
        raise InvalidMessage(errors)
    return InvoiceCreatedV1(
        invoice_number=erp.invoice_number,
        issue_date=erp.issue_date,
        due_date=erp.due_date,
        currency=erp.currency.upper(),
        seller_name=erp.seller_name,
        customer=customer,
        lines=lines,
        subtotal=subtotal,
        tax_total=tax_total,
        total=total,
        erp_source=erp.erp_source,
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
