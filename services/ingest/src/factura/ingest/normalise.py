"""Pure normalisation of ERP messages into event data. No I/O, so every rule is unit-testable."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal, localcontext
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from factura.common.envelope import utcnow
from factura.common.erp import ErpAddress, ErpCancellationV1, ErpCustomer, ErpInvoiceV1, ErpLine, ErpPaymentV1
from factura.common.errors import InvalidMessage, field_errors
from factura.common.events import (
    DEFAULT_VATEX,
    Customer,
    FieldError,
    InvoiceCancelledV1,
    InvoiceCreatedV1,
    Line,
    Locale,
    PaymentReceivedV1,
    PostalAddress,
    SellerDetails,
    SuppliedDocument,
    VatCategory,
    cents,
    line_category,
    vat_category_problem,
)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
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
        preferred_channel=c.preferred_channel,
        push_token=c.push_token,
        address=_address(c.address),
        registration_id=c.registration_id,
    )


def _address(a: ErpAddress | None) -> PostalAddress | None:
    """An address with nothing in it is no address."""
    if a is None or not (a.lines or a.city or a.postcode or a.subdivision):
        return None
    return PostalAddress(lines=a.lines, city=a.city, postcode=a.postcode, subdivision=a.subdivision)


def _seller(erp: ErpInvoiceV1) -> SellerDetails | None:
    s = erp.seller
    if s is None or not (s.vat_id or s.registration_id or s.country or _address(s.address)):
        return None
    return SellerDetails(
        vat_id=s.vat_id, registration_id=s.registration_id, country=s.country, address=_address(s.address)
    )


def _vat(line: ErpLine) -> tuple[VatCategory, str | None]:
    """The line's VAT category (given or implied by its rate) and exemption code (the category's own VATEX
    code when AE, K, G or O come without reason)."""
    category = cast(
        VatCategory, line_category(line.tax_rate, line.vat_category, line.exemption_reason, line.exemption_code)
    )
    code = line.exemption_code
    if code is None and line.exemption_reason is None:
        code = DEFAULT_VATEX.get(category)
    return category, code


def _vat_problems(erp: ErpInvoiceV1) -> list[FieldError]:
    """Category, rate and exemption reason of each line agree (EN 16931's rules per category)."""
    errors = []
    for i, line in enumerate(erp.lines):
        category = line_category(line.tax_rate, line.vat_category, line.exemption_reason, line.exemption_code)
        problem = vat_category_problem(category, line.tax_rate, line.exemption_reason, line.exemption_code)
        if problem is not None:
            errors.append(FieldError(field=f"lines.{i}.{problem[0]}", message=problem[1]))
    return errors


#: The domain's amounts (``Money``): 18 digits, 2 of them decimals.
MONEY_LIMIT = Decimal(10) ** 16
_LIMIT = ", more than an amount can hold (16 digits before the decimal point)"


def _too_large(value: Decimal) -> bool:
    return abs(value) >= MONEY_LIMIT


class DateWindow(BaseModel):
    """Which issue and due dates are plausible, around the day the invoice arrives.

    A date the calendar allows can still be a typo or a corrupt export (year 0001 or 9999): once
    accepted, it schedules reminders decades away or at once. Ingest settings (``dates``) hold it.
    """

    model_config = ConfigDict(frozen=True)

    issue_years_back: int = Field(default=10, ge=0, le=100, description="Oldest issue date, in years before today")
    issue_years_ahead: int = Field(default=1, ge=0, le=100, description="Latest issue date, in years after today")
    due_years_after_issue: int = Field(default=5, ge=0, le=100, description="Latest due date, in years after issue")


DEFAULT_DATES = DateWindow()


def add_years(day: date, years: int) -> date:
    """``day`` moved by whole years (29 February onto the 28th), clamped to the calendar's ends."""
    year = min(max(day.year + years, date.min.year), date.max.year)
    return day.replace(year=year, day=28) if (day.month, day.day) == (2, 29) else day.replace(year=year)


def _date_problems(erp: ErpInvoiceV1, window: DateWindow, today: date) -> list[FieldError]:
    errors = []
    earliest, latest = add_years(today, -window.issue_years_back), add_years(today, window.issue_years_ahead)
    if not earliest <= erp.issue_date <= latest:
        errors.append(
            FieldError(
                field="issue_date",
                message=f"{erp.issue_date} is outside {earliest} to {latest} "
                f"({window.issue_years_back} years before today to {window.issue_years_ahead} after)",
            )
        )
    if erp.due_date < erp.issue_date:
        errors.append(FieldError(field="due_date", message=f"{erp.due_date} is before issue_date {erp.issue_date}"))
    elif erp.due_date > (last_due := add_years(erp.issue_date, window.due_years_after_issue)):
        errors.append(
            FieldError(
                field="due_date",
                message=f"{erp.due_date} is after {last_due}, "
                f"{window.due_years_after_issue} years after issue_date {erp.issue_date}",
            )
        )
    return errors


def _sign_problem(erp: ErpInvoiceV1, total: Decimal) -> FieldError | None:
    """An invoice never totals below zero: what an ERP means by a negative invoice is a credit note,
    which Factura takes as an ``erp.cancellations`` message of ``kind`` ``credit_note`` (it settles
    the invoice it credits instead of mailing the customer a bill for a negative amount)."""
    if total >= 0:
        return None
    field = "total" if erp.total is not None else "lines"
    return FieldError(
        field=field,
        message=f"the total is {total}: an invoice cannot be negative; send a credit note to erp.cancellations "
        "with kind credit_note",
    )


def _validate(model: type[M], payload: dict[str, Any], context: dict[str, Any] | None = None) -> M:
    """The ERP model, or :class:`InvalidMessage` with one reason per field problem."""
    try:
        return model.model_validate(payload, context=context)
    except ValidationError as e:
        raise InvalidMessage(field_errors(e)) from e
    except UnicodeError as e:  # pydantic cannot read a str holding a lone surrogate; decode_erp refuses those
        raise InvalidMessage([FieldError(field="$", message="text that is not valid Unicode")]) from e


def _domain(build: Callable[[], T]) -> T:
    """Build the event data. The domain model is the last word on what an event may hold: should it
    refuse what the ERP contract accepted (a rule the contract does not repeat), the message is at
    fault all the same, so it is rejected with the domain's field names rather than retried."""
    try:
        return build()
    except ValidationError as e:
        raise InvalidMessage(field_errors(e)) from e


def invoice_from_erp(
    payload: dict[str, Any],
    *,
    allow_test_domains: bool = False,
    dates: DateWindow = DEFAULT_DATES,
    today: date | None = None,
) -> tuple[ErpInvoiceV1, InvoiceCreatedV1]:
    """Validate and normalise; raise :class:`InvalidMessage` listing every problem found.

    ``payload`` is what :func:`~factura.common.erp.decode_erp` returns. Returns the validated ERP
    message (tenant and identifiers, white space stripped) with the event data.
    ``allow_test_domains`` admits addresses under the reserved ``.test`` TLD (RFC 2606), which
    real invoices never use but local stacks and demos do. Issue and due dates must lie in ``dates``
    around ``today`` (UTC's, unless given).
    """
    erp = _validate(ErpInvoiceV1, payload, {"allow_test_domains": allow_test_domains})
    errors = _date_problems(erp, dates, today or utcnow().date()) + _vat_problems(erp)
    problems_before = len(errors)
    # Exact arithmetic whatever the ambient context: 10 × 14 integer digits plus 8 decimals is more
    # than the default 28 significant digits, and a rounded product must not pass as an amount.
    with localcontext(prec=60):
        amounts = [cents(line.quantity * line.unit_price) for line in erp.lines]
        for i, amount in enumerate(amounts):
            if _too_large(amount):
                errors.append(FieldError(field=f"lines.{i}", message=f"quantity × unit_price is {amount}{_LIMIT}"))
        subtotal = sum(amounts, Decimal("0"))
        tax_total = sum(
            (cents(amount * line.tax_rate / 100) for amount, line in zip(amounts, erp.lines, strict=True)),
            Decimal("0"),
        )
        total = subtotal + tax_total
    if len(errors) == problems_before:  # totals of amounts that do not fit mean nothing
        sums = (("subtotal", subtotal), ("tax total", tax_total), ("total", total))
        too_large = [(name, value) for name, value in sums if _too_large(value)]
        if too_large:
            name, value = too_large[0]
            errors.append(FieldError(field="lines", message=f"the lines' {name} is {value}{_LIMIT}"))
        elif erp.total is not None and abs(erp.total - total) > TOTAL_TOLERANCE:
            errors.append(FieldError(field="total", message=f"{erp.total} does not match the lines' total {total}"))
        elif (wrong_sign := _sign_problem(erp, total)) is not None:
            errors.append(wrong_sign)
    if errors:
        raise InvalidMessage(errors)
    return erp, _domain(
        lambda: InvoiceCreatedV1(
            invoice_number=erp.invoice_number,
            issue_date=erp.issue_date,
            due_date=erp.due_date,
            currency=erp.currency.upper(),
            seller_name=erp.seller_name,
            customer=_customer(erp.customer),
            lines=[
                Line(
                    description=line.description,
                    quantity=line.quantity,
                    unit_price=line.unit_price,
                    tax_rate=line.tax_rate,
                    amount=amount,
                    vat_category=_vat(line)[0],
                    exemption_reason=line.exemption_reason,
                    exemption_code=_vat(line)[1],
                )
                for line, amount in zip(erp.lines, amounts, strict=True)
            ],
            subtotal=subtotal,
            tax_total=tax_total,
            total=total,
            erp_source=erp.erp_source,
            supplied_document=SuppliedDocument(
                key=erp.document.s3_key, xml_key=erp.document.xml_s3_key, annex_keys=erp.document.annex_s3_keys
            )
            if erp.document
            else None,
            delivery_date=erp.delivery_date,
            seller=_seller(erp),
            atcud=erp.atcud.upper() if erp.atcud else None,
            fiscal_qr=erp.fiscal_qr or None,
            legal_mentions=erp.legal_mentions,
        )
    )


def payment_from_erp(payload: dict[str, Any]) -> tuple[ErpPaymentV1, PaymentReceivedV1]:
    """Validate and normalise a payment; raise :class:`InvalidMessage` listing every problem found."""
    erp = _validate(ErpPaymentV1, payload)
    return erp, _domain(
        lambda: PaymentReceivedV1(
            payment_id=erp.payment_id,
            amount=erp.amount,
            currency=erp.currency.upper(),
            paid_at=erp.paid_at,
            method=erp.method,
        )
    )


def cancellation_from_erp(payload: dict[str, Any]) -> tuple[ErpCancellationV1, InvoiceCancelledV1]:
    """Validate a cancellation or full credit note; raise :class:`InvalidMessage` listing every problem found."""
    erp = _validate(ErpCancellationV1, payload)
    return erp, _domain(
        lambda: InvoiceCancelledV1(
            kind=erp.kind,
            reason=erp.reason,
            credit_note_number=erp.credit_note_number,
            cancelled_at=erp.cancelled_at,
            erp_source=erp.erp_source,
        )
    )
