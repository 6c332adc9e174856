"""Compliance API (read-only): what happened to an invoice, in order, and what could not be handled."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from factura.audit.store import AuditStore, DeadLetterStore
from factura.common.envelope import TENANT_PATTERN


class TimelineEntry(BaseModel):
    event_id: str
    type: str
    schema_version: int
    occurred_at: datetime
    recorded_at: datetime
    producer: str
    correlation_id: str
    causation_id: str | None
    sha256: str
    data: dict[str, Any]


class Timeline(BaseModel):
    tenant_id: str
    invoice_id: str
    events: list[TimelineEntry]


class DeadLetterEntry(BaseModel):
    source_topic: str
    source: str
    service: str
    reason: str
    error: str
    attempts: int | None
    invoice_id: str | None
    recorded_at: datetime


class DeadLetters(BaseModel):
    tenant_id: str
    dead_letters: list[DeadLetterEntry]


def router(store: AuditStore, dead_letters: DeadLetterStore) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["audit"])

    @api.get("/invoices/{invoice_id}/timeline", response_model=Timeline)
    async def timeline(
        invoice_id: str, tenant_id: Annotated[str, Query(pattern=TENANT_PATTERN, description="Owning tenant")]
    ) -> Timeline:
        docs = await store.timeline(tenant_id, invoice_id)
        if not docs:
            raise HTTPException(404, detail=f"no events for invoice {invoice_id!r} of tenant {tenant_id!r}")
        entries = []
        for doc in docs:
            event = json.loads(doc["event"])
            entries.append(
                TimelineEntry(
                    event_id=doc["event_id"],
                    type=doc["type"],
                    schema_version=doc["schema_version"],
                    occurred_at=doc["occurred_at"],
                    recorded_at=doc["recorded_at"],
                    producer=event["producer"],
                    correlation_id=event["correlation_id"],
                    causation_id=event["causation_id"],
                    sha256=doc["sha256"],
                    data=event["data"],
                )
            )
        return Timeline(tenant_id=tenant_id, invoice_id=invoice_id, events=entries)

    @api.get("/dead-letters", response_model=DeadLetters)
    async def dead_letter_list(
        tenant_id: Annotated[str, Query(pattern=TENANT_PATTERN, description="Owning tenant")],
        invoice_id: Annotated[str | None, Query(max_length=200, description="Only this invoice")] = None,
    ) -> DeadLetters:
        """Messages of this tenant that a service could not handle, with why (oldest first, at most 100)."""
        docs = await dead_letters.find(tenant_id, invoice_id)
        return DeadLetters(tenant_id=tenant_id, dead_letters=[DeadLetterEntry.model_validate(d) for d in docs])

    return api
