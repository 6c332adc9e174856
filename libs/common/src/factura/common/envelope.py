"""The one event envelope.

Every event on every topic is ``Envelope[Data]`` serialised as JSON. ``event_id`` is the
idempotency key: events derived from another event get a *deterministic* id
(:func:`derived_event_id`), so a redelivered input produces the very same output event and
every downstream consumer (audit above all) deduplicates it for free.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, cast

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

D = TypeVar("D")

TENANT_PATTERN = r"^[a-z0-9][a-z0-9-]{1,62}$"
#: Namespace for ids derived from things that are not events (ERP messages, schedules).
FACTURA_NAMESPACE = uuid.UUID("6f0c1f5e-8e1b-5b7c-9a43-5d1f7f0e2a11")


class Envelope(BaseModel, Generic[D]):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: uuid.UUID = Field(description="Unique id of this event; the idempotency key.")
    type: str = Field(description="Event type, e.g. invoice.created.", examples=["invoice.created"])
    schema_version: int = Field(ge=1, description="Version of the data schema for this type.")
    occurred_at: AwareDatetime = Field(description="When it happened, UTC.")
    tenant_id: str = Field(pattern=TENANT_PATTERN, description="Tenant that owns the invoice.")
    invoice_id: str | None = Field(default=None, min_length=1, max_length=200)
    correlation_id: str = Field(min_length=1, max_length=200, description="Id shared by the whole flow.")
    causation_id: uuid.UUID | None = Field(default=None, description="event_id of the event that caused this one.")
    producer: str = Field(min_length=1, max_length=100, description="Service that produced the event.")
    data: D

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @property
    def partition_key(self) -> bytes:
        """Kafka key: per-invoice ordering (tenant-scoped), else per tenant."""
        return f"{self.tenant_id}/{self.invoice_id or ''}".encode()


def derived_event_id(cause: uuid.UUID, *parts: str) -> uuid.UUID:
    """Deterministic id for an event caused by ``cause``: same cause, same parts → same id."""
    return uuid.uuid5(cause, "/".join(parts))


def stable_id(*parts: str) -> uuid.UUID:
    """Deterministic id for an event whose cause is not an event (an ERP message, a schedule)."""
    return uuid.uuid5(FACTURA_NAMESPACE, "/".join(parts))


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_event(
    *,
    event_id: uuid.UUID,
    type: str,
    schema_version: int,
    data: D,
    tenant_id: str,
    invoice_id: str | None,
    correlation_id: str,
    causation_id: uuid.UUID | None,
    producer: str,
) -> Envelope[D]:
    """Build an envelope typed by its data model, stamped now."""
    return cast(
        Envelope[D],
        _typed_envelope(data)(
            event_id=event_id,
            type=type,
            schema_version=schema_version,
            occurred_at=utcnow(),
            tenant_id=tenant_id,
            invoice_id=invoice_id,
            correlation_id=correlation_id,
            causation_id=causation_id,
            producer=producer,
            data=data,
        ),
    )


def _typed_envelope(data: object) -> type[Envelope[Any]]:
    """``Envelope[<the data's model>]``: pydantic then serialises ``data`` by its real model."""
    return Envelope[data.__class__]  # type: ignore[name-defined]


def child_of(
    cause: Envelope[Any],
    *,
    type: str,
    schema_version: int,
    data: D,
    producer: str,
    discriminator: str = "",
) -> Envelope[D]:
    """Build the event ``cause`` leads to, inheriting tenant, invoice and correlation ids."""
    return make_event(
        event_id=derived_event_id(cause.event_id, producer, type, discriminator),
        type=type,
        schema_version=schema_version,
        data=data,
        tenant_id=cause.tenant_id,
        invoice_id=cause.invoice_id,
        correlation_id=cause.correlation_id,
        causation_id=cause.event_id,
        producer=producer,
    )
