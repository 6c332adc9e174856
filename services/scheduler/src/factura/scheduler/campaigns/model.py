"""What a campaign asks for: the filter (overdue days, outstanding amount, currency, customer) and
how to run it. Validation names the field: FastAPI answers 422 with its ``loc``."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from factura.common.envelope import TENANT_PATTERN
from factura.common.events import CENT, Currency

#: The most invoices one campaign may select: a larger filter is refused (422), never truncated,
#: so a campaign always sends to everything it says it matched.
MAX_INVOICES: Final = 10_000
#: The longest overdue period a filter may name (ten years).
MAX_OVERDUE_DAYS: Final = 3650
CampaignId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", examples=["march-30-60"])]
Amount = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=2)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OverdueDays(_Model):
    """Days past the due date, both ends included, counted in the tenant's local date."""

    min: int = Field(ge=1, le=MAX_OVERDUE_DAYS, description="At least this many days overdue (1: due yesterday)")
    max: int = Field(ge=1, le=MAX_OVERDUE_DAYS, description="At most this many days overdue")

    @model_validator(mode="after")
    def _ordered(self) -> OverdueDays:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not be greater than max ({self.max})")
        return self


class AmountRange(_Model):
    """Outstanding amount (total minus the payments that count), in the invoice's currency."""

    min: Amount | None = Field(default=None, description="At least this much still owed")
    max: Amount | None = Field(default=None, description="At most this much still owed")

    @field_validator("min", "max")
    @classmethod
    def _cents(cls, value: Decimal | None) -> Decimal | None:
        # 500, 500.0 and 500.00 are one amount, and one campaign (see CampaignRequest.digest).
        return None if value is None else value.quantize(CENT)

    @model_validator(mode="after")
    def _ordered(self) -> AmountRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must not be greater than max ({self.max})")
        return self


class CampaignFilter(_Model):
    """Which open invoices of the tenant get a reminder. Every given part must match."""

    overdue_days: OverdueDays
    amount: AmountRange | None = None
    currency: Currency | None = Field(default=None, description="Only invoices in this currency")
    customer_id: str | None = Field(default=None, min_length=1, max_length=100, description="Only this customer")


class CampaignRequest(CampaignFilter):
    """``POST /v1/campaigns``."""

    tenant_id: str = Field(pattern=TENANT_PATTERN)
    dry_run: bool = Field(default=False, description="List the matching invoices; store and send nothing")
    name: str | None = Field(default=None, min_length=1, max_length=200, description="A label for people")
    campaign_id: CampaignId | None = Field(
        default=None, description="Your id for the campaign: sending the same request again is a no-op"
    )
    limit: int = Field(default=1000, ge=1, le=MAX_INVOICES, description="Dry run: list at most this many invoices")

    @property
    def filter(self) -> CampaignFilter:
        return CampaignFilter.model_validate(self.model_dump(include=set(CampaignFilter.model_fields)))

    def digest(self) -> str:
        """What makes two requests the same campaign: tenant, filter and name (not ``limit``, not
        ``dry_run``), compared canonically (key order and number spelling do not matter)."""
        content = self.model_dump(mode="json", include={"tenant_id", "name", *CampaignFilter.model_fields})
        return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
