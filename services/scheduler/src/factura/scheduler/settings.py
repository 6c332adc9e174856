from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from factura.common.settings import MongoSettings, PiiSettings, ServiceSettings
from factura.scheduler.campaigns.model import MAX_INVOICES
from factura.scheduler.tickets import HelpdeskSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FACTURA_SCHEDULER_", env_nested_delimiter="__", extra="ignore")

    mongo: MongoSettings = MongoSettings()
    tenants_dir: Path | None = Field(
        default=None,
        description="Per-tenant configs: reminder plans, the most effective channel's window",
    )
    tick_seconds: float = Field(default=60.0, gt=0, description="How often the sweeper looks for due reminders.")
    lease_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Term of the sweep lease: a dead sweeper is replaced after this. Default 3 × tick_seconds.",
    )
    unknown_invoice_grace_s: float = Field(
        default=86_400, gt=0, description="A payment whose invoice has not come after this is payment.unmatched."
    )
    helpdesk: HelpdeskSettings | None = Field(
        default=None, description="Helpdesk tickets (signing secret); none: ticket steps are not routed"
    )
    campaign_max_invoices: int = Field(
        default=MAX_INVOICES, ge=1, le=MAX_INVOICES, description="A campaign matching more is refused (422)"
    )
    pii: PiiSettings = Field(
        default_factory=PiiSettings, description="Tenant KEKs encrypting customers' contact data in the schedules"
    )
    replica_id: str | None = Field(
        default=None, min_length=1, max_length=200, description="Owner name in the lease; default host-pid-random."
    )

    @model_validator(mode="after")
    def _lease_outlives_tick(self) -> Settings:
        if self.lease_seconds is not None and self.lease_seconds <= self.tick_seconds:
            raise ValueError(
                f"lease_seconds ({self.lease_seconds}) must be longer than tick_seconds ({self.tick_seconds}):"
                " the holder renews once per tick"
            )
        return self

    @property
    def lease_ttl(self) -> timedelta:
        return timedelta(seconds=self.lease_seconds if self.lease_seconds is not None else 3 * self.tick_seconds)
