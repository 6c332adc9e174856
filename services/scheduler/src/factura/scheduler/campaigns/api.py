"""The campaigns API on the scheduler's HTTP port: ``POST /v1/campaigns``, ``GET /v1/campaigns/{id}``.

Every route needs an API key with role ``admin`` or ``ingest`` (the ERP or collections
integration) whose tenant scope holds the tenant asked about: 401 without a key, 403 out of scope.

* A dry run (``"dry_run": true``) answers 200 with the matching invoices and stores nothing.
* Otherwise the campaign is stored with the invoices it matched, and the answer is 202 with its id,
  the count and ``scheduled_for``: now inside the tenant's send window, else the next window start.
  The runner (:mod:`.runner`) sends it from there.
* The same ``campaign_id`` (or, without one, the same ``Idempotency-Key``) sent again with the same
  tenant, filter and name is the same campaign: 202 with its current state, nothing sent twice.
  With another filter it is a 409.
* More than :data:`~.model.MAX_INVOICES` matches: 422, nothing stored. A bad field: 422 naming it.
* MongoDB unreachable: 503 with ``Retry-After``.

No ``from __future__ import annotations``: FastAPI resolves the routes' annotations at runtime, and
they close over the router's collaborators.
"""

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, TypeVar

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from factura.common.apikeys import AUTH_RESPONSES, Authenticate, Principal, Role, require_tenant, with_role
from factura.common.envelope import TENANT_PATTERN, stable_id, utcnow
from factura.common.http import available
from factura.common.metrics import counter
from factura.common.reminders import local_date, next_window_start
from factura.common.tenants import TenantDirectory
from factura.scheduler.campaigns.matching import ScheduleSource, TooMany, select
from factura.scheduler.campaigns.model import MAX_INVOICES, CampaignFilter, CampaignId, CampaignRequest
from factura.scheduler.campaigns.store import Campaign, Campaigns, State
from factura.scheduler.schedule import NEVER

ROLES: Final = (Role.ADMIN, Role.INGEST)
MAX_IDEMPOTENCY_KEY: Final = 200
REQUESTS = counter("campaign_requests_total", "Campaign requests answered, by outcome.", ("outcome",))
T = TypeVar("T")


class Problem(BaseModel):
    detail: str = Field(description="What was wrong, naming the field or header")


class Invalid(BaseModel):
    detail: list[dict[str, Any]] = Field(description="FastAPI's validation errors: each names its field in `loc`")


class Listed(BaseModel):
    invoice_id: str
    customer_id: str
    due_date: date
    days_overdue: int = Field(description="On `as_of`, the tenant's local date")
    outstanding: Decimal = Field(description="Still owed, in `currency`")
    currency: str


class DryRun(BaseModel):
    dry_run: Literal[True] = True
    tenant_id: str
    as_of: date = Field(description="The tenant's local date the days overdue are counted on")
    matched: int = Field(description="Invoices a real run would remind")
    invoices: list[Listed] = Field(description="The first `limit` of them, by due date then invoice id")
    truncated: bool = Field(description="More matched than are listed")
    excluded: dict[str, int] = Field(
        description="Invoices the filter selected but no reminder may follow: paid, cancelled, rejected "
        "(refused at render), not_rendered, customer_erased"
    )


class CampaignOut(BaseModel):
    campaign_id: str
    tenant_id: str
    name: str | None
    state: State = Field(description="`scheduled` (waiting to start or for the send window), `sending`, `done`")
    filter: CampaignFilter
    matched: int = Field(description="Invoices the filter matched when the campaign was created")
    sent: int = Field(description="Reminders published so far")
    skipped: int = Field(description="Matched invoices paid, cancelled or refused before their reminder")
    created_at: datetime
    scheduled_for: datetime = Field(description="When sending starts (the next send-window start if closed)")
    finished_at: datetime | None = None

    @classmethod
    def of(cls, campaign: Campaign) -> "CampaignOut":
        return cls(
            campaign_id=campaign.campaign_id,
            tenant_id=campaign.tenant_id,
            name=campaign.name,
            state=campaign.state,
            filter=campaign.filter,
            matched=len(campaign.invoices),
            sent=campaign.sent,
            skipped=campaign.skipped,
            created_at=_instant(campaign.created_ms),
            scheduled_for=_instant(campaign.scheduled_ms),
            finished_at=_instant(campaign.finished_ms) if campaign.finished_ms is not None else None,
        )


def _instant(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


_RETRY_HEADER: Final = {"Retry-After": {"description": "Seconds", "schema": {"type": "integer"}}}
_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    **AUTH_RESPONSES,
    503: {"model": Problem, "description": "MongoDB is unreachable: retry after Retry-After", "headers": _RETRY_HEADER},
}
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY,
        pattern=r"^[\x21-\x7e][\x20-\x7e]*$",
        description="Without `campaign_id`: the same key and request make one campaign, however often sent",
    ),
]


def router(
    schedules: ScheduleSource,
    campaigns: Campaigns,
    tenants: TenantDirectory,
    *,
    auth: Authenticate,
    wake: Callable[[], None],
    clock: Callable[[], datetime] = utcnow,
    cap: int = MAX_INVOICES,
) -> APIRouter:
    """The ``/v1/campaigns`` routes; ``wake`` tells the runner a campaign was stored."""

    caller = with_role(auth, *ROLES)

    Caller = Annotated[Principal, Depends(caller)]  # noqa: N806 (a type alias, local because it closes over auth)
    api = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])

    @api.post(
        "",
        status_code=202,
        response_model=CampaignOut,
        responses={
            **_RESPONSES,
            200: {"model": DryRun, "description": "A dry run: the invoices a real run would remind"},
            409: {"model": Problem, "description": "The campaign id (or Idempotency-Key) names another campaign"},
            422: {"model": Invalid | Problem, "description": f"A field is invalid, or more than {cap} invoices match"},
        },
        response_description="The campaign: stored now, or the one this campaign id or Idempotency-Key names",
    )
    async def create(
        request: CampaignRequest, principal: Caller, idempotency_key: IdempotencyKey = None
    ) -> JSONResponse:
        """Remind every open invoice the filter matches, once; or list them (`dry_run`)."""
        tenant_id = request.tenant_id
        require_tenant(principal, tenant_id)
        plan = tenants.get(tenant_id).reminders
        now_ms = int(clock().timestamp() * 1000)
        today = local_date(plan, now_ms)
        campaign_id = None if request.dry_run else _campaign_id(request, idempotency_key)
        if campaign_id is not None:
            existing = await _available(campaigns.get(tenant_id, campaign_id))
            if existing is not None:
                return _repeated(existing, request)
        try:
            selection = await _available(select(schedules, tenant_id, request.filter, today, cap=cap))
        except TooMany as e:
            REQUESTS.labels("too_many").inc()
            raise HTTPException(422, detail=str(e)) from e
        matches = selection.matches
        if request.dry_run:
            REQUESTS.labels("dry_run").inc()
            dry = DryRun(
                tenant_id=tenant_id,
                as_of=today,
                matched=len(matches),
                invoices=[Listed.model_validate(m, from_attributes=True) for m in matches[: request.limit]],
                truncated=len(matches) > request.limit,
                excluded=selection.excluded,
            )
            return JSONResponse(dry.model_dump(mode="json"), 200)
        starts = next_window_start(plan, now_ms)
        campaign = Campaign(
            tenant_id=tenant_id,
            campaign_id=campaign_id or uuid.uuid4().hex,
            name=request.name,
            filter=request.filter,
            digest=request.digest(),
            invoices=tuple(m.invoice_id for m in matches),
            created_ms=now_ms,
            created_by=principal.key_id,
            scheduled_ms=starts,
            state="scheduled" if matches else "done",
            due_ms=starts if matches else NEVER,
            finished_ms=None if matches else now_ms,
        )
        stored, created = await _available(campaigns.create(campaign))
        if not created:  # a concurrent request with the same id won the insert
            return _repeated(stored, request)
        REQUESTS.labels("created").inc()
        wake()
        return JSONResponse(CampaignOut.of(stored).model_dump(mode="json"), 202)

    @api.get(
        "/{campaign_id}",
        response_model=CampaignOut,
        responses={**_RESPONSES, 404: {"model": Problem, "description": "No such campaign for this tenant"}},
    )
    async def status(
        campaign_id: Annotated[CampaignId, Path()],
        tenant_id: Annotated[str, Query(pattern=TENANT_PATTERN, description="The tenant the campaign belongs to")],
        principal: Caller,
    ) -> CampaignOut:
        """A campaign's state and counts. Another tenant's campaign is as absent (404) as none."""
        require_tenant(principal, tenant_id)
        found = await _available(campaigns.get(tenant_id, campaign_id))
        if found is None:
            raise HTTPException(404, detail=f"no campaign {campaign_id!r} for tenant {tenant_id!r}")
        return CampaignOut.of(found)

    return api


def _campaign_id(request: CampaignRequest, idempotency_key: str | None) -> str | None:
    """The caller's id; else one derived from the Idempotency-Key (same key, same campaign)."""
    if request.campaign_id is not None:
        return request.campaign_id
    if idempotency_key is not None:
        return "k-" + stable_id(request.tenant_id, "campaign", idempotency_key).hex
    return None


def _repeated(existing: Campaign, request: CampaignRequest) -> JSONResponse:
    """The answer to a request naming a stored campaign: that campaign, or 409 for another filter."""
    if existing.digest != request.digest():
        REQUESTS.labels("conflict").inc()
        named = "campaign_id" if request.campaign_id is not None else "Idempotency-Key"
        detail = f"{named}: campaign {existing.campaign_id!r} exists with another tenant, filter or name"
        raise HTTPException(409, detail=detail)
    REQUESTS.labels("repeated").inc()
    return JSONResponse(CampaignOut.of(existing).model_dump(mode="json"), 202)


async def _available(work: Awaitable[T]) -> T:
    """:func:`~factura.common.http.available`, counting the 503s among the campaign requests."""
    try:
        return await available(work)
    except HTTPException as e:
        if e.status_code == 503:
            REQUESTS.labels("unavailable").inc()
        raise
