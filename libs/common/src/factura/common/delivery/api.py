"""Suppression admin API: list a tenant's suppressed addresses and numbers, and lift one.

Operators authenticate with a bearer token (``AdminSettings.tokens``); per-tenant API keys come
with the ingest API and will replace this. The list keeps no address readable (see
:mod:`~factura.common.delivery.suppression`): a lift names the address and the store hashes it;
without the tenant's KEK both calls answer 503, like any outage.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query
from pydantic import BaseModel, Field, SecretStr, field_validator

from factura.common.delivery.suppression import SuppressionStore
from factura.common.envelope import TENANT_PATTERN
from factura.common.pii.keystore import KeyStoreError
from factura.common.webhooks import MIN_SECRET_CHARS, WebhookAuthError, verify_bearer

log = logging.getLogger(__name__)

Tenant = Annotated[str, Query(pattern=TENANT_PATTERN)]


class AdminSettings(BaseModel):
    tokens: list[SecretStr] = Field(default_factory=list, description="Bearer tokens of operators; none: API closed")

    @field_validator("tokens")
    @classmethod
    def _long_enough(cls, tokens: list[SecretStr]) -> list[SecretStr]:
        if any(len(t.get_secret_value()) < MIN_SECRET_CHARS for t in tokens):
            raise ValueError(f"each admin token needs at least {MIN_SECRET_CHARS} characters")
        return tokens


class Lift(BaseModel):
    tenant_id: str = Field(pattern=TENANT_PATTERN)
    address: str = Field(min_length=3, max_length=4096)
    by: str = Field(min_length=1, max_length=200, description="Who lifts it (recorded)")
    note: str = Field(default="", max_length=500)


def suppression_router(store: SuppressionStore, settings: AdminSettings) -> APIRouter:
    router = APIRouter(prefix="/v1/suppressions", tags=["suppressions"])
    tokens = [t.get_secret_value() for t in settings.tokens]

    def authorise(authorization: str | None) -> None:
        try:
            verify_bearer(authorization, tokens)
        except WebhookAuthError as e:
            log.warning("suppression API refused: %s", e)
            raise HTTPException(401, "unauthorised", headers={"WWW-Authenticate": "Bearer"}) from e

    @router.get("")
    async def list_suppressions(
        tenant_id: Tenant,
        include_lifted: bool = False,
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        authorise(authorization)
        try:
            items = await store.list(tenant_id, include_lifted=include_lifted)
        except KeyStoreError as e:
            raise _unavailable(e) from e
        return {"tenant_id": tenant_id, "count": len(items), "items": [s.as_json() for s in items]}

    @router.post("/lift")
    async def lift(body: Lift, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        authorise(authorization)
        try:
            lifted = await store.lift(body.tenant_id, body.address, by=body.by, note=body.note)
        except KeyStoreError as e:
            raise _unavailable(e) from e
        if not lifted:
            raise HTTPException(404, f"{body.address} is not suppressed for tenant {body.tenant_id}")
        return {"tenant_id": body.tenant_id, "address": body.address, "lifted": True}

    return router


def _unavailable(error: KeyStoreError) -> HTTPException:
    log.warning("suppression API: %s", error)
    return HTTPException(503, "the tenant's keys are unavailable; try again later", headers={"Retry-After": "30"})
