"""The inbound ERP contract: what an ERP publishes on ``erp.invoices`` and ``erp.payments``.

These are raw JSON messages, not envelopes: ERP teams should not have to know our event
model. Their JSON Schemas are exported with the events (``erp.invoice.v1.json``) so an ERP team
can validate before publishing. Ingest validates with these models, then normalises.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from factura.common.envelope import TENANT_PATTERN

Amount = Annotated[Decimal, Field(max_digits=18, decimal_places=4)]


class _Erp(BaseModel):
    # Tolerant reader: unknown fields from an ERP are ignored, never an error.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class ErpCustomer(_Erp):
    id: str = Field(min_length=1, max_length=100)
    name: str = Field(min_length=1, max_length=300)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=40, description="Any format; normalised to E.164")
    country: str = Field(pattern=r"^[A-Za-z]{2}$", description="ISO 3166-1 alpha-2, used to read local phone numbers")
    locale: str | None = Field(default=None, description="es, pt, en or ro; defaults from country")
    tax_id: str | None = Field(default=None, max_length=50)


class ErpLine(_Erp):
    description: str = Field(min_length=1, max_length=1000)
    quantity: Annotated[Decimal, Field(gt=0, max_digits=14, decimal_places=4)]
    unit_price: Amount
    tax_rate: Annotated[Decimal, Field(ge=0, le=100)] = Decimal("0")


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
