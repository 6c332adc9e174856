"""Erasure of a customer's personal data: ``POST /v1/customers/{customer_id}/erase`` (admin only).

Crypto-shredding: the customer's data key (:mod:`factura.common.pii`) is destroyed, so every
contact field encrypted under it, in audit records and wherever else it was copied, is noise from
then on. Nothing in the chain changes: hashes cover the tokens, so the trail still verifies, and
the fiscal fields beside them (invoice number, amounts, dates) stay readable for their legal
retention (GDPR art. 17(3)(b), LGPD art. 16 I).

The erasure is itself a record in the tenant's chain (``customer.erased``: which customer, which
API key and role, when, which data key). Its id names the data key, so the record is written
**before** the key is destroyed and a retried request writes it only once: a crash between the two
leaves a recorded erasure whose retry finishes it, never a destroyed key nobody recorded.

An id the tenant has no key for is answered 404 with the reason, unless the customer's erasure is
already on record (then 200, ``key_destroyed: false``: erasing twice is harmless). Like every call
to the audit API, each request (refused or not) is an access record; while MongoDB is down the
request is answered 503 with ``Retry-After`` and its retry completes the erasure, recorded once.

No ``from __future__ import annotations``: FastAPI resolves the routes' annotations at runtime.
"""

import logging
from datetime import datetime, timedelta
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, Field

from factura.audit.api import AccessHook, Problem, audited_route, plain_query
from factura.audit.chain import ChainWriter
from factura.audit.queries import AuditQueries
from factura.audit.records import erasure
from factura.common.apikeys import AUTH_RESPONSES, Authenticate, Principal, Role, require_tenant, with_role
from factura.common.envelope import TENANT_PATTERN
from factura.common.pii import FieldCipher

_TEXT: Final = r"^[^\x00-\x1F\x7F]+$"
log = logging.getLogger(__name__)


class ErasureReceipt(BaseModel):
    tenant_id: str
    customer_id: str
    key_destroyed: bool = Field(description="False when the customer had been erased before")
    record_id: str = Field(description="The `customer.erased` record in the tenant's chain")
    erased_at: datetime


class Unknown(LookupError):
    """The tenant has no data key for this customer and no erasure on record."""


class Erasure:
    """Destroys customers' data keys and records it in their tenant's chain."""

    def __init__(self, cipher: FieldCipher, queries: AuditQueries, writer: ChainWriter) -> None:
        self._cipher = cipher
        self._queries = queries
        self._writer = writer

    async def erase(self, tenant_id: str, customer_id: str, principal: Principal) -> ErasureReceipt:
        """Record, then destroy (module docstring). Raises :class:`Unknown`."""
        key_id = await self._cipher.key_id(tenant_id, customer_id)
        if key_id is None:
            earlier = await self._queries.last_erasure(tenant_id, customer_id)
            if earlier is None:
                raise Unknown(
                    f"tenant {tenant_id!r} holds no personal data key for customer {customer_id!r}: "
                    "unknown customer (or only records older than encryption, which retention removes)"
                )
            return ErasureReceipt(
                tenant_id=tenant_id,
                customer_id=customer_id,
                key_destroyed=False,
                record_id=str(earlier["_id"]),
                erased_at=earlier["occurred_at"],
            )
        record = erasure(
            record_id=f"erasure:{customer_id}:{key_id}",
            tenant_id=tenant_id,
            customer_id=customer_id,
            key_id=principal.key_id,
            role=principal.role.value,
            data_key_id=key_id,
        )
        await self._writer.append([record])
        destroyed = await self._cipher.erase(tenant_id, customer_id, key_id=key_id)
        return ErasureReceipt(
            tenant_id=tenant_id,
            customer_id=customer_id,
            key_destroyed=destroyed,
            record_id=record.id,
            erased_at=record.fields["occurred_at"],
        )


class IdleContacts:
    """The contact retention period (``[audit] contact_days``): customers whose data key was last
    used to encrypt a record longer ago than that are erased like on request, recorded as
    ``customer.erased`` with reason ``contact_retention`` and role ``retention``. Each key is
    destroyed only if still idle (compare-and-delete), so a customer seen again meanwhile keeps it;
    if that happens between the record and the delete, the record stands beside a live key and a
    warning is logged (the next idle period erases it)."""

    def __init__(self, cipher: FieldCipher, writer: ChainWriter, batch: int = 500) -> None:
        self._cipher = cipher
        self._writer = writer
        self._batch = batch

    async def erase_idle(self, tenant_id: str, days: int, now: datetime, *, dry_run: bool = False) -> int:
        """Erase (or, in a dry run, count) the tenant's customers idle for ``days``; how many."""
        cutoff = now - timedelta(days=days)
        if dry_run:
            return await self._cipher.count_idle(tenant_id, cutoff)
        erased = 0
        while idle := await self._cipher.idle_keys(tenant_id, cutoff, self._batch):
            records = [
                erasure(
                    record_id=f"erasure:{customer}:{key_id}",
                    tenant_id=tenant_id,
                    customer_id=customer,
                    key_id="retention",
                    role="retention",
                    data_key_id=key_id,
                    reason="contact_retention",
                )
                for customer, key_id in idle
            ]
            await self._writer.append(records)
            done = 0
            for customer, key_id in idle:
                if await self._cipher.erase(tenant_id, customer, key_id=key_id, idle_before=cutoff):
                    done += 1
                else:
                    log.warning("customer seen again while erased for retention", extra={"tenant_id": tenant_id})
            erased += done
            if not done:  # nothing idle could be erased: never spin on the same page
                break
        return erased


def erase_router(erasure_service: Erasure, *, auth: Authenticate, on_access: AccessHook) -> APIRouter:
    """The ``/v1/customers/{customer_id}/erase`` route (in the audit API's OpenAPI schema)."""
    admin = with_role(auth, Role.ADMIN)
    api = APIRouter(
        prefix="/v1", tags=["audit"], route_class=audited_route(on_access), dependencies=[Depends(plain_query)]
    )
    problem: dict[str, Any] = {"model": Problem}
    responses: dict[int | str, dict[str, Any]] = {
        400: problem | {"description": "A parameter given twice or unknown"},
        404: problem | {"description": "The tenant holds no data key for this customer and no erasure of it"},
        503: problem | {"description": "MongoDB is unavailable: retry after Retry-After (a retry finishes it once)"},
        **AUTH_RESPONSES,
    }

    @api.post("/customers/{customer_id:path}/erase", response_model=ErasureReceipt, responses=responses)
    async def erase(
        customer_id: Annotated[str, Path(min_length=1, max_length=100, pattern=_TEXT)],
        tenant_id: Annotated[str, Query(pattern=TENANT_PATTERN, description="The customer's tenant")],
        principal: Annotated[Principal, Depends(admin)],
    ) -> ErasureReceipt:
        """Destroy the customer's personal data key (crypto-shredding): their name, email, phone,
        push token and address become `[erased]` everywhere, while the audit chain still verifies
        and invoice numbers, amounts and dates stay readable. Admin keys only; recorded in the
        tenant's chain as `customer.erased`."""
        require_tenant(principal, tenant_id)
        try:
            return await erasure_service.erase(tenant_id, customer_id, principal)
        except Unknown as e:
            raise HTTPException(404, detail=str(e)) from e

    return api
