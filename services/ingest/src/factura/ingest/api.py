"""Ingest's HTTP door: ERP invoices, payments and cancellations over HTTPS, with per-record answers.

Every route needs an API key with role ``ingest`` (or ``admin``) whose tenant scope holds the
tenant the body names (``tenant_id``; every item's, for a batch): 401 without a key, 403 out of
scope. Bodies are the Kafka contract's JSON (``erp.invoice.v1`` and friends), decoded by the same
rules, and go through the same :class:`~factura.ingest.handlers.Intake`, so a record gets the same
event id and the same field errors by either door; a refused one is published as
``invoice.rejected`` too, so the audit trail shows it.

* A body is read up to a cap and refused with 413 past it, whatever ``Content-Length`` says:
  ``max_batch_bytes`` for ``POST /v1/invoices`` (a batch), ``MAX_MESSAGE_BYTES`` for one record.
* A body that is not a JSON object is a 400; a record the contract refuses is a 422 listing every
  field error (in a batch: that item's result, the others go through).
* One idempotency rule with the Kafka door (:meth:`~factura.ingest.handlers.Intake.invoice`): an
  invoice number accepted before, sent again with the same content (compared normalised), is a
  ``duplicate`` (202, the same event id); with other content it is a 409 ``conflict`` unless the
  body says ``"amendment": true``.
* ``Idempotency-Key`` (≤ 200 printable characters): the same key and body within 24 h gets the
  first answer again, status and body; the same key with another body is a 422 naming the header.
* Kafka or MongoDB unreachable: 503 with ``Retry-After``, nothing stored as the key's answer.

No ``from __future__ import annotations``: FastAPI resolves annotations in the module's globals, and
the routes' ``Annotated[..., Depends(...)]`` close over the router's collaborators.
"""

import asyncio
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from factura.common.apikeys import AUTH_RESPONSES, Authenticate, Principal, Role, require_tenant, with_role
from factura.common.envelope import TENANT_PATTERN
from factura.common.erp import MAX_MESSAGE_BYTES, decode_erp
from factura.common.errors import InvalidMessage
from factura.common.events import FieldError
from factura.common.http import available
from factura.ingest.handlers import BATCH_CONCURRENCY, Accepted, Intake, Outcome, Source, digest, tenant_of
from factura.ingest.versions import Answer, IdempotencyStore, InvoiceVersions

INGEST_ROLES: Final = (Role.INGEST, Role.ADMIN)
MAX_BATCH_ITEMS: Final = 1000
DEFAULT_MAX_BATCH_BYTES: Final = 5 * 1024 * 1024
MAX_IDEMPOTENCY_KEY: Final = 200
_PRINTABLE = re.compile(r"^[\x21-\x7e][\x20-\x7e]*$")
_BATCH_START = re.compile(r'\A\s*\{\s*"invoices"\s*:\s*\[')
_JSON = json.JSONDecoder()


# --- response models ---------------------------------------------------------------------------


class Problem(BaseModel):
    detail: str = Field(description="What was wrong, naming the parameter or header")


class Submitted(BaseModel):
    status: Literal["accepted", "duplicate"] = Field(description="`duplicate`: this content was accepted before")
    event_id: uuid.UUID = Field(description="The canonical event's id (the same for a duplicate)")


class Rejection(BaseModel):
    status: Literal["rejected", "conflict"] = Field(
        default="rejected",
        description='`conflict`: the number was accepted before with other content; resend with "amendment": true',
    )
    event_id: uuid.UUID = Field(description="The `invoice.rejected` event recording the refusal")
    errors: list[FieldError] = Field(description="Every problem, naming the field")


class ItemResult(BaseModel):
    index: int = Field(description="Position in `invoices`, from 0")
    status: Literal["accepted", "duplicate", "rejected", "conflict"]
    event_id: uuid.UUID = Field(description="The canonical event's id, or the rejection's")
    errors: list[FieldError] | None = None


class BatchResult(BaseModel):
    accepted: int
    duplicates: int
    rejected: int
    conflicts: int
    results: list[ItemResult] = Field(description="One per item, in order")


class VersionOut(BaseModel):
    event_id: uuid.UUID
    digest: str = Field(description="sha256 of the normalised content")
    accepted_at: datetime
    source: str = Field(description="The door it came through: a topic or an API route")


class InvoiceStatus(BaseModel):
    tenant_id: str
    invoice_id: str
    versions: list[VersionOut] = Field(description="Accepted versions, first accepted first")


# --- OpenAPI -------------------------------------------------------------------------------------

_PROBLEMS: Final = {
    400: "The body is not a JSON object (or not a batch of at most 1000), or the Idempotency-Key is unusable",
    404: "No accepted version of this invoice for this tenant",
    413: "The body is larger than accepted",
    422: "The Idempotency-Key was used with another body",
    503: "Kafka or MongoDB is unreachable: retry after Retry-After seconds",
}
_CONFLICT: Final = (
    "The invoice number was accepted before with other content and the body is not marked "
    '`"amendment": true` (`invoice.rejected` with reason `conflict` is published)'
)
_RETRY_HEADER: Final = {"Retry-After": {"description": "Seconds", "schema": {"type": "integer"}}}


def _responses(*codes: int, rejection: bool = True) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {c: {"model": Problem, "description": _PROBLEMS[c]} for c in codes}
    out[503] = {"model": Problem, "description": _PROBLEMS[503], "headers": _RETRY_HEADER}
    if rejection:
        out[422] = {
            "model": Rejection | Problem,
            "description": "The record is invalid (every field error; `invoice.rejected` is published), "
            "or the Idempotency-Key was used with another body",
        }
    return {**out, **AUTH_RESPONSES}


def _body(description: str) -> dict[str, Any]:
    schema = {"type": "object", "description": description}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


InvoicePath = Annotated[str, Path(min_length=1, max_length=200, description="The invoice number; may contain `/`")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description=f"1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters; the same key and body within 24 h "
        "get the first answer again",
    ),
]


# --- the router ----------------------------------------------------------------------------------


def router(
    intake: Intake,
    versions: InvoiceVersions,
    idempotency: IdempotencyStore,
    *,
    auth: Authenticate,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
) -> APIRouter:
    """The ``/v1`` ingest routes."""
    door = _Door(intake, idempotency)

    ingester = with_role(auth, *INGEST_ROLES)

    Caller = Annotated[Principal, Depends(ingester)]  # noqa: N806 (a type alias, local because it closes over auth)
    api = APIRouter(prefix="/v1", tags=["ingest"])

    @api.post(
        "/invoices",
        status_code=202,
        response_model=Submitted,
        responses={
            **_responses(400, 413),
            200: {"model": BatchResult, "description": "A batch: one result per item"},
            409: {"model": Rejection, "description": _CONFLICT},
        },
        openapi_extra=_body('One erp.invoice.v1, or a batch `{"invoices": [...]}` of at most 1000'),
    )
    async def invoices(request: Request, principal: Caller, idempotency_key: IdempotencyKey = None) -> JSONResponse:
        """One invoice (202), or a batch (200, a result per item: the valid ones go through)."""
        raw = await read_body(request, max_batch_bytes)
        items = _batch_items(raw)
        if items is None:
            payload = _single(raw)
            return await door.one(
                raw, payload, principal=principal, key=idempotency_key, accept=door.intake.invoice, request=request
            )
        return await door.batch(raw, items, principal, idempotency_key, request)

    @api.post(
        "/payments",
        status_code=202,
        response_model=Submitted,
        responses=_responses(400, 413),
        openapi_extra=_body("One erp.payment.v1"),
    )
    async def payments(request: Request, principal: Caller, idempotency_key: IdempotencyKey = None) -> JSONResponse:
        """One payment → `payment.received`."""
        raw = await read_body(request, MAX_MESSAGE_BYTES)
        return await door.one(
            raw, _single(raw), principal=principal, key=idempotency_key, accept=door.intake.payment, request=request
        )

    @api.post(
        "/invoices/{invoice_id:path}/cancel",
        status_code=202,
        response_model=Submitted,
        responses=_responses(400, 413),
        openapi_extra=_body("The fields of erp.cancellation.v1; invoice_number may be left out"),
    )
    async def cancel(
        request: Request, invoice_id: str, principal: Caller, idempotency_key: IdempotencyKey = None
    ) -> JSONResponse:
        """Cancel or fully credit an invoice → `invoice.cancelled`. The path names the invoice; a body's
        `invoice_number` must be the same."""
        raw = await read_body(request, MAX_MESSAGE_BYTES)
        payload = _single(raw)
        given = payload.setdefault("invoice_number", invoice_id)
        mismatch = given.strip() != invoice_id if isinstance(given, str) else False

        async def accept(body: dict[str, Any], *, correlation: str | None, source: Source) -> Outcome:
            if mismatch:
                error = InvalidMessage(
                    [FieldError(field="invoice_number", message="differs from the invoice in the path")]
                )
                return await intake.reject(error, body, kind="cancellation", correlation=correlation, source=source)
            return await intake.cancellation(body, correlation=correlation, source=source)

        return await door.one(raw, payload, principal=principal, key=idempotency_key, accept=accept, request=request)

    @api.get(
        "/invoices/{invoice_id:path}/status",
        response_model=InvoiceStatus,
        responses=_responses(404, rejection=False),
    )
    async def status(
        invoice_id: InvoicePath,
        tenant_id: Annotated[str, Query(pattern=TENANT_PATTERN, description="The tenant asked about")],
        principal: Caller,
    ) -> InvoiceStatus:
        """What ingest accepted of this invoice: each version's event id, content digest and time.
        Read within the tenant only, so another tenant's invoice of that number is as absent (404)
        as one never sent."""
        require_tenant(principal, tenant_id)
        found = await available(versions.of_invoice(tenant_id, invoice_id))
        if not found:
            raise HTTPException(404, detail="no accepted version of this invoice")
        return InvoiceStatus(
            tenant_id=tenant_id,
            invoice_id=invoice_id,
            versions=[VersionOut.model_validate(v, from_attributes=True) for v in found],
        )

    return api


# --- reading bodies ------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` (a declared length is checked first,
    but a body is never trusted to be as long as it says)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, detail=f"the body is larger than {limit} bytes")


def _single(raw: bytes) -> dict[str, Any]:
    """One record, decoded exactly as from Kafka (size, UTF-8, strict JSON, depth, text)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise _too_large(MAX_MESSAGE_BYTES)
    try:
        return decode_erp(raw)
    except InvalidMessage as e:
        raise HTTPException(400, detail=f"body: {e}"[:2000]) from e


def _batch_items(raw: bytes) -> list[bytes] | None:
    """The raw bytes of each item of ``{"invoices": [...]}``, so each is decoded as one Kafka message
    would be; ``None`` when the body is not a batch (then it is one invoice)."""
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return None  # _single says what is wrong
    start = _BATCH_START.match(text)
    if start is None:
        return None
    try:
        json.loads(text)  # the whole body must be JSON, the key alone in its object
    except (ValueError, RecursionError) as e:
        raise HTTPException(400, detail=f"body: not valid JSON: {str(e)[:200]}") from e
    items: list[bytes] = []
    at = start.end()
    while True:
        at = _skip_space(text, at)
        if text[at] == "]":
            break
        if len(items) == MAX_BATCH_ITEMS:
            raise HTTPException(400, detail=f"invoices: at most {MAX_BATCH_ITEMS} per batch")
        _, end = _JSON.raw_decode(text, at)
        items.append(text[at:end].encode())
        at = _skip_space(text, end)
        if text[at] == ",":
            at += 1
    if text[at + 1 :].strip(" \t\r\n") != "}":
        raise HTTPException(400, detail='body: a batch is {"invoices": [...]} and nothing else')
    if not items:
        raise HTTPException(400, detail="invoices: empty batch")
    return items


def _skip_space(text: str, at: int) -> int:
    while text[at] in " \t\r\n":
        at += 1
    return at


# --- answering -----------------------------------------------------------------------------------


class _Door:
    """Authorisation on the body's tenants, idempotent answers, and the intake's outcomes as HTTP."""

    def __init__(self, intake: Intake, idempotency: IdempotencyStore) -> None:
        self.intake = intake
        self._idempotency = idempotency

    async def one(
        self,
        raw: bytes,
        payload: dict[str, Any],
        *,
        principal: Principal,
        key: str | None,
        accept: Callable[..., Awaitable[Outcome]],
        request: Request,
    ) -> JSONResponse:
        tenant = tenant_of(payload)
        if tenant is not None:
            require_tenant(principal, tenant)

        async def answer() -> tuple[int, BaseModel]:
            source = Source(_door_name(request), f"http/{uuid.uuid4()}", digest(raw))
            outcome = await accept(payload, correlation=None, source=source)
            if isinstance(outcome, Accepted):
                return 202, Submitted(
                    status="duplicate" if outcome.duplicate else "accepted", event_id=outcome.event_id
                )
            if outcome.conflict:
                return 409, Rejection(status="conflict", event_id=outcome.event_id, errors=outcome.reasons)
            return 422, Rejection(event_id=outcome.event_id, errors=outcome.reasons)

        return await self._idempotent(tenant, key, raw, answer)

    async def batch(
        self, raw: bytes, items: list[bytes], principal: Principal, key: str | None, request: Request
    ) -> JSONResponse:
        decoded: list[dict[str, Any] | InvalidMessage] = []
        for item in items:
            try:
                decoded.append(decode_erp(item))
            except InvalidMessage as e:
                decoded.append(e)
        tenants = {t for d in decoded if isinstance(d, dict) and (t := tenant_of(d)) is not None}
        for tenant in sorted(tenants):
            require_tenant(principal, tenant)
        if key is not None and len(tenants) > 1:
            raise HTTPException(400, detail="Idempotency-Key: a batch sent with one holds one tenant's invoices")
        batch_id = uuid.uuid4()

        async def answer() -> tuple[int, BaseModel]:
            results = await self._items(items, decoded, _door_name(request), batch_id)
            counts = {s: sum(r.status == s for r in results) for s in ("accepted", "duplicate", "rejected", "conflict")}
            return 200, BatchResult(
                accepted=counts["accepted"],
                duplicates=counts["duplicate"],
                rejected=counts["rejected"],
                conflicts=counts["conflict"],
                results=results,
            )

        return await self._idempotent(next(iter(tenants)) if len(tenants) == 1 else None, key, raw, answer)

    async def _items(
        self, items: list[bytes], decoded: list[dict[str, Any] | InvalidMessage], topic: str, batch_id: uuid.UUID
    ) -> list[ItemResult]:
        """Each item through the intake: items naming the same invoice one after the other (so the
        second of two equal ones is the duplicate), the rest concurrently."""
        groups: dict[object, list[int]] = {}
        for i, d in enumerate(decoded):
            number = d.get("invoice_number") if isinstance(d, dict) else None
            name = (tenant_of(d), number.strip()) if isinstance(d, dict) and isinstance(number, str) else i
            groups.setdefault(name, []).append(i)
        results: list[ItemResult | None] = [None] * len(items)
        gate = asyncio.Semaphore(BATCH_CONCURRENCY)

        async def run(indexes: list[int]) -> None:
            for i in indexes:
                source = Source(topic, f"http/{batch_id}/{i}", digest(items[i]))
                async with gate:
                    d = decoded[i]
                    if isinstance(d, InvalidMessage):
                        outcome: Outcome = await self.intake.reject(
                            d, {}, kind="invoice", correlation=None, source=source
                        )
                    else:
                        outcome = await self.intake.invoice(d, correlation=None, source=source)
                results[i] = _item(i, outcome)

        done = await asyncio.gather(*(run(g) for g in groups.values()), return_exceptions=True)
        failures = [e for e in done if isinstance(e, BaseException)]
        if failures:
            raise failures[0]
        return [r for r in results if r is not None]

    async def _idempotent(
        self, tenant: str | None, key: str | None, raw: bytes, answer: Callable[[], Awaitable[tuple[int, BaseModel]]]
    ) -> JSONResponse:
        """``answer()``, or with ``key`` the first answer to the same body; the new answer is kept
        when the body names a tenant (one naming none was refused and changed nothing)."""
        if key is not None and (len(key) > MAX_IDEMPOTENCY_KEY or not _PRINTABLE.fullmatch(key)):
            raise HTTPException(400, detail=f"Idempotency-Key: 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters")
        body_digest = digest(raw)
        if key is not None and tenant is not None:
            stored = await available(self._idempotency.find(tenant, key))
            if stored is not None:
                if stored.body_digest != body_digest:
                    raise HTTPException(422, detail="Idempotency-Key: already used with another body")
                return JSONResponse(json.loads(stored.body), stored.status, headers={"Idempotent-Replayed": "true"})
        status, model = await available(answer())
        body = model.model_dump(mode="json", exclude_none=True)
        if key is not None and tenant is not None:
            text = json.dumps(body)
            await available(self._idempotency.save(tenant, key, Answer(body_digest, status, text)))
        return JSONResponse(body, status)


def _door_name(request: Request) -> str:
    """The route a record came through, as rejections and versions name it: its template, not the
    path (``/v1/invoices/{invoice_id:path}/cancel``), so metrics labels stay few."""
    return f"http:{getattr(request.scope.get('route'), 'path', '/v1')}"


def _item(index: int, outcome: Outcome) -> ItemResult:
    if isinstance(outcome, Accepted):
        status: Literal["accepted", "duplicate"] = "duplicate" if outcome.duplicate else "accepted"
        return ItemResult(index=index, status=status, event_id=outcome.event_id)
    refused: Literal["rejected", "conflict"] = "conflict" if outcome.conflict else "rejected"
    return ItemResult(index=index, status=refused, event_id=outcome.event_id, errors=outcome.reasons)
