"""Compliance API (read-only): what happened to an invoice, in order."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from factura.audit.store import AuditStore
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


def router(store: AuditStore) -> APIRouter:
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

    return api
