"""The inbound ERP contract: what an ERP publishes on ``erp.invoices`` and ``erp.payments``.

These are raw JSON messages, not envelopes: ERP teams should not have to know our event
model. Their JSON Schemas are exported with the events (``erp.invoice.v1.json``) so an ERP team
can validate before publishing. Ingest validates with these models, then normalises.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from factura.common.envelope import TENANT_PATTERN
from factura.common.events import LOCALES

Amount = Annotated[Decimal, Field(max_digits=18, decimal_places=4)]


class _Erp(BaseModel):
    # Tolerant reader: unknown fields from an ERP are ignored, never an error.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class ErpCustomer(_Erp):
    """Contact fields are validated *and normalised* here, so one pass reports every problem.

    Validation context ``{"allow_test_domains": True}`` admits the reserved ``.test`` TLD (RFC 2606),
    which real invoices never use but local stacks and demos do.
    """

    id: str = Field(min_length=1, max_length=100)
    name: str = Field(min_length=1, max_length=300)
    country: str = Field(pattern=r"^[A-Za-z]{2}$", description="ISO 3166-1 alpha-2, used to read local phone numbers")
    email: str | None = Field(default=None, max_length=320, description="Normalised with email-validator")
    phone: str | None = Field(default=None, max_length=40, description="Any format; normalised to E.164")
    locale: str | None = Field(default=None, description="es, pt, en or ro; defaults from country")
    tax_id: str | None = Field(default=None, max_length=50)

    @field_validator("country")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value:
            return None
        allow_test = bool((info.context or {}).get("allow_test_domains", False))
        try:
            return validate_email(value, check_deliverability=False, test_environment=allow_test).normalized
        except EmailNotValidError as e:
            raise ValueError(str(e)) from e

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value:
            return None
        region = info.data.get("country")  # absent if the country itself was invalid
        try:
            number = phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException as e:
            raise ValueError(f"{value!r} is not a phone number ({e._msg})") from e
        if not phonenumbers.is_valid_number(number):
            raise ValueError(f"{value!r} is not a valid phone number for {region}")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str | None) -> str | None:
        if value is None:
            return None
        lang = value.lower().replace("_", "-").split("-")[0]
        if lang not in LOCALES:
            raise ValueError(f"{value!r} is not one of {', '.join(LOCALES)}")
        return lang


class ErpLine(_Erp):
    description: str = Field(min_length=1, max_length=1000)
    quantity: Annotated[Decimal, Field(gt=0, max_digits=14, decimal_places=4)]
    unit_price: Amount
    tax_rate: Annotated[Decimal, Field(ge=0, le=100)] = Decimal("0")


class ErpDocument(_Erp):
    """A document the ERP produced itself, already uploaded to the documents bucket."""

    s3_key: str = Field(min_length=1, max_length=1024)
    xml_s3_key: str | None = Field(default=None, max_length=1024)
    annex_s3_keys: list[str] = Field(default_factory=list, max_length=20)


class ErpInvoiceV1(_Erp):
    tenant_id: str = Field(pattern=TENANT_PATTERN)
    erp_source: str = Field(min_length=1, max_length=100)
    invoice_number: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
    issue_date: date
    due_date: date
    currency: str = Field(pattern=r"^[A-Za-z]{3}$")
    seller_name: str = Field(min_length=1, max_length=300)
    customer: ErpCustomer
    lines: list[ErpLine] = Field(min_length=1, max_length=500)
    total: Amount | None = Field(default=None, description="If given, must match the computed total (±0.01)")
    document: ErpDocument | None = Field(default=None, description="Send this ERP-produced PDF instead of rendering")


class ErpPaymentV1(_Erp):
    tenant_id: str = Field(pattern=TENANT_PATTERN)
    erp_source: str = Field(min_length=1, max_length=100)
    payment_id: str = Field(min_length=1, max_length=100)
    invoice_number: str = Field(min_length=1, max_length=100)
    amount: Annotated[Decimal, Field(gt=0, max_digits=18, decimal_places=2)]
    currency: str = Field(pattern=r"^[A-Za-z]{3}$")
    paid_at: AwareDatetime
    method: str = Field(default="transfer", min_length=1, max_length=50)


ERP_MODELS: dict[str, type[_Erp]] = {"erp.invoice.v1": ErpInvoiceV1, "erp.payment.v1": ErpPaymentV1}
