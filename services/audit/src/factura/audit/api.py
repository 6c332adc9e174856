"""Compliance API (read-only): what happened to an invoice, who did not receive it and why, exports,
and the chain's verification.

Every route needs an API key whose role may read and whose scope holds ``tenant_id`` (401 without a
key, 403 out of scope); every query is scoped to that tenant, so an id of another tenant is as
absent (404, empty page) as an id that does not exist. Every call, answered or refused, is handed to
``on_access`` before its body leaves, so the audit records who asked what.

Query strings are strict: a parameter given twice, or one the route does not take, is a 400 naming
it (``tenant_id`` twice used to mean "the last one"; a misspelt filter would silently widen a
search). Filters are validated values and only ever become equality values in a query.

Pages: ``limit`` 1..1000, ``next_cursor`` when there is more; pass it back as ``cursor`` with the
same filters. Timeline and dead letters run in chain order (oldest first); search runs newest first
(highest ``seq`` first), which is what an officer looking into a case wants; exports run in chain
order, and every row carries ``seq`` and ``hash`` to match against the chain export.

No ``from __future__ import annotations``: FastAPI resolves annotations in the module's globals, and
the routes' ``Annotated[..., Depends(...)]`` close over the router's collaborators.
"""

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import UTC, date, datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from factura.audit.evidence import EvidenceBundles
from factura.audit.exports import csv_chunks, ndjson_chunks
from factura.audit.queries import (
    AuditQueries,
    CursorError,
    Cursors,
    Kind,
    RecordFilter,
    Status,
    scope_of,
)
from factura.audit.records import reveal
from factura.audit.store import AuditDb
from factura.audit.verify import Verification
from factura.common.apikeys import AUTH_RESPONSES, Authenticate, Principal, Role, require_tenant, with_role
from factura.common.envelope import TENANT_PATTERN
from factura.common.errors import DependencyDown, ErrorKind, classify
from factura.common.http import unavailable
from factura.common.mongo import Document
from factura.common.pii import FieldCipher

MAX_LIMIT: Final = 1000
DEFAULT_LIMIT: Final = 100
MAX_REPORT_DAYS: Final = 366
EXPORT_BATCH: Final = 500
READ_ROLES: Final = (Role.COMPLIANCE_READER, Role.ADMIN)
#: One line of text: ids and reasons never hold control characters.
_TEXT: Final = r"^[^\x00-\x1F\x7F]+$"
_WORD: Final = r"^[a-z][a-z0-9_.:+-]*$"


#: Records one call: who (``None`` when unauthenticated), the request, and the status answered.
AccessHook = Callable[[Principal | None, Request, int], Awaitable[None]]
#: ``verify_chain`` for one tenant.
VerifyChain = Callable[[str], Awaitable[Verification]]
#: ``export_chain`` for one tenant and positions ``from_seq..to_seq`` (``None``: to the head).
ExportChain = Callable[[str, int, int | None], AsyncIterator[bytes]]


# --- response models ---------------------------------------------------------------------------


class Problem(BaseModel):
    detail: str = Field(description="What was wrong, naming the parameter")


class Entry(BaseModel):
    """One record of an invoice's timeline, with the envelope it was recorded from."""

    id: str = Field(description="Record id: the event_id for events")
    seq: int = Field(description="Position in the tenant's chain")
    hash: str
    prev: str
    kind: str
    type: str
    occurred_at: datetime
    recorded_at: datetime
    channel: str | None = None
    purpose: str | None = None
    outcome: str | None = Field(default=None, description="The status this record settles")
    reason: str | None = None
    schema_version: int | None = None
    producer: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    data: dict[str, Any] | None = Field(
        default=None, description="The event's data; for dead letters and accesses, what was recorded"
    )


class Timeline(BaseModel):
    tenant_id: str
    invoice_id: str
    entries: list[Entry]
    next_cursor: str | None = None


class Summary(BaseModel):
    """One record as a search finds it (its envelope is in the invoice's timeline)."""

    id: str
    seq: int
    hash: str
    kind: str
    type: str
    invoice_id: str | None = None
    customer_id: str | None = None
    channel: str | None = None
    purpose: str | None = None
    outcome: str | None = None
    reason: str | None = None
    occurred_at: datetime
    recorded_at: datetime


class RecordPage(BaseModel):
    tenant_id: str
    records: list[Summary] = Field(description="Newest first")
    next_cursor: str | None = None


class NotDeliveredInvoice(BaseModel):
    invoice_id: str
    customer_id: str | None
    attempts: int = Field(description="Failed and exhausted outcomes recorded in the period")
    exhausted: bool = Field(description="No channel is left to try")
    last_outcome: str
    channels: list[str] = Field(description="Channels tried, in order")
    reasons: list[str] = Field(description="Why they failed, in order")
    first_failed_at: datetime | None
    last_failed_at: datetime | None
    last_seq: int


class NotDeliveredReport(BaseModel):
    tenant_id: str
    invoices: list[NotDeliveredInvoice] = Field(description="By invoice id")
    next_cursor: str | None = None


class Count(BaseModel):
    day: date
    channel: str | None
    purpose: str | None
    outcome: str | None
    reason: str | None
    count: int


class Counts(BaseModel):
    tenant_id: str
    from_day: date
    to_day: date
    counts: list[Count]


class DeadLetter(BaseModel):
    id: str
    seq: int
    hash: str
    invoice_id: str | None = None
    reason: str | None = None
    source: str | None = Field(default=None, description="topic/partition/offset of the refused message")
    source_topic: str | None = None
    service: str | None = None
    error: str | None = Field(default=None, description="Why; the full traceback for admin keys only")
    attempts: int | None = None
    body: str | None = Field(default=None, description="The message as received (hex if it was not UTF-8)")
    body_encoding: str | None = None
    occurred_at: datetime
    recorded_at: datetime


class DeadLetterPage(BaseModel):
    tenant_id: str
    dead_letters: list[DeadLetter]
    next_cursor: str | None = None


# --- parameters --------------------------------------------------------------------------------

TenantParam = Annotated[str, Query(pattern=TENANT_PATTERN, description="The tenant asked about")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, 1..{MAX_LIMIT}")]
CursorParam = Annotated[
    str | None, Query(min_length=1, max_length=1024, description="`next_cursor` of the previous page, same filters")
]
Ident = Annotated[str | None, Query(min_length=1, max_length=200, pattern=_TEXT)]
Word = Annotated[str | None, Query(min_length=1, max_length=100, pattern=_WORD)]
From = Annotated[
    datetime | None, Query(alias="from", description="occurred_at ≥ this (ISO 8601; without an offset: UTC)")
]
To = Annotated[datetime | None, Query(alias="to", description="occurred_at < this (ISO 8601; without an offset: UTC)")]

InvoicePath = Annotated[
    str, Path(min_length=1, max_length=200, pattern=_TEXT, description="May contain `/` (sent as `/` or `%2F`)")
]
FromDay = Annotated[date, Query(description="First day (UTC), YYYY-MM-DD")]
ToDay = Annotated[date, Query(description=f"Last day (UTC), YYYY-MM-DD; at most {MAX_REPORT_DAYS} days on")]
FromSeq = Annotated[int, Query(ge=1, le=2**53, description="First position")]
ToSeq = Annotated[int | None, Query(ge=1, le=2**53, description="Last position (default: the head)")]

_DESCRIPTIONS: Final = {
    400: "A parameter given twice or unknown, or an invalid cursor",
    404: "No such invoice for this tenant",
}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    mine: dict[int | str, dict[str, Any]] = {
        code: {"model": Problem, "description": _DESCRIPTIONS[code]} for code in (400, *codes)
    }
    return {**mine, **AUTH_RESPONSES}


def _stream_responses(response_class: type[StreamingResponse]) -> dict[int | str, dict[str, Any]]:
    """A streamed route's 200 in its own media type, its errors in JSON (a ``model`` would document
    them in the route's media type)."""
    problem = {"application/json": {"schema": Problem.model_json_schema()}}
    errors: dict[int | str, dict[str, Any]] = {}
    for code, response in _responses().items():
        errors[code] = {k: v for k, v in response.items() if k != "model"} | {"content": problem}
    streamed = {str(response_class.media_type): {"schema": {"type": "string"}}}
    return {200: {"description": "Streamed", "content": streamed}, **errors}


def _invalid(param: str, message: str) -> RequestValidationError:
    """A 422 shaped like FastAPI's own, so the documented schema holds for it too."""
    return RequestValidationError([{"loc": ("query", param), "msg": message, "type": "value_error"}])


def _utc(value: datetime | None, param: str) -> datetime | None:
    if value is None:
        return None
    try:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except (OverflowError, ValueError) as e:
        raise _invalid(param, "date-time out of range") from e


def _period(start: datetime | None, end: datetime | None) -> tuple[datetime | None, datetime | None]:
    start, end = _utc(start, "from"), _utc(end, "to")
    if start is not None and end is not None and end <= start:
        raise _invalid("to", "must be later than from")
    return start, end


# --- the router ---------------------------------------------------------------------------------


def router(
    db: AuditDb,
    *,
    auth: Authenticate,
    cursor_key: bytes,
    on_access: AccessHook,
    verify: VerifyChain,
    export_chain: ExportChain,
    cipher: FieldCipher | None = None,
    evidence: EvidenceBundles | None = None,
) -> APIRouter:
    """The ``/v1`` compliance routes over ``db``; ``cipher`` decrypts customers' contact data for
    the reader (``[erased]`` after erasure; without it, tokens are shown as stored); ``evidence``
    builds the invoices' evidence bundles (without it, that route answers 503)."""
    reads = _Reads(AuditQueries(db.records), Cursors(cursor_key), cipher)

    reader = with_role(auth, *READ_ROLES)

    async def tenant(tenant_id: TenantParam, principal: Annotated[Principal, Depends(reader)]) -> str:
        require_tenant(principal, tenant_id)
        return tenant_id

    Tenant = Annotated[str, Depends(tenant)]  # noqa: N806 (a type alias, local because it closes over auth)

    def record_filter(
        *,
        tenant_id: Tenant,
        customer_id: Ident = None,
        invoice_id: Ident = None,
        status: Annotated[Status | None, Query(description="delivered, failed, ...: the record's outcome")] = None,
        channel: Word = None,
        reason: Ident = None,
        type: Annotated[str | None, Query(min_length=1, max_length=100, pattern=_WORD)] = None,
        purpose: Word = None,
        kind: Annotated[Kind | None, Query(description="Default: events and dead letters, not accesses")] = None,
        occurred_from: From = None,
        occurred_to: To = None,
    ) -> RecordFilter:
        start, end = _period(occurred_from, occurred_to)
        return RecordFilter(
            tenant_id=tenant_id,
            customer_id=customer_id,
            invoice_id=invoice_id,
            status=status,
            channel=channel,
            reason=reason,
            type=type,
            purpose=purpose,
            kind=kind,
            occurred_from=start,
            occurred_to=end,
        )

    Filter = Annotated[RecordFilter, Depends(record_filter)]  # noqa: N806 (as Tenant)

    api = APIRouter(
        prefix="/v1",
        tags=["audit"],
        route_class=audited_route(on_access),
        dependencies=[Depends(reader), Depends(plain_query)],
    )

    @api.get("/invoices/{invoice_id:path}/timeline", response_model=Timeline, responses=_responses(404))
    async def timeline(
        tenant_id: Tenant, invoice_id: InvoicePath, cursor: CursorParam = None, limit: Limit = DEFAULT_LIMIT
    ) -> Timeline:
        """Every record of one invoice in chain order (issued, rendered, sent, delivered, opened,
        downloaded, paid, ...). 404 when the tenant has no record of this invoice."""
        return await reads.timeline(tenant_id, invoice_id, cursor, limit)

    @api.get("/records", response_model=RecordPage, responses=_responses())
    async def search(where: Filter, cursor: CursorParam = None, limit: Limit = DEFAULT_LIMIT) -> RecordPage:
        """Records matching every given filter, newest first. An unknown tenant has no records."""
        return await reads.search(where, cursor, limit)

    @api.get("/exports/records.csv", response_class=_CsvStream, responses=_stream_responses(_CsvStream))
    async def export_csv(where: Filter) -> StreamingResponse:
        """The search's records in chain order as CSV, streamed; formula-like cells start with `'`."""
        return _CsvStream(csv_chunks(reads.queries.stream(where, EXPORT_BATCH)), headers=_attachment(where, "csv"))

    @api.get("/exports/records.ndjson", response_class=_NdjsonStream, responses=_stream_responses(_NdjsonStream))
    async def export_ndjson(where: Filter) -> StreamingResponse:
        """The search's records in chain order, one JSON object per line, streamed."""
        chunks = ndjson_chunks(reads.queries.stream(where, EXPORT_BATCH))
        return _NdjsonStream(chunks, headers=_attachment(where, "ndjson"))

    @api.get("/reports/not-delivered", response_model=NotDeliveredReport, responses=_responses())
    async def not_delivered(
        tenant_id: Tenant,
        occurred_from: From = None,
        occurred_to: To = None,
        cursor: CursorParam = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> NotDeliveredReport:
        """Invoices whose delivery (purpose `invoice`) failed or was exhausted in the period and that
        no channel has delivered since, with the channels tried and the reasons, by invoice id."""
        return await reads.not_delivered(tenant_id, _period(occurred_from, occurred_to), cursor, limit)

    @api.get("/reports/counts", response_model=Counts, responses=_responses())
    async def counts(tenant_id: Tenant, from_day: FromDay, to_day: ToDay) -> Counts:
        """Records per day of occurrence, by channel, purpose, outcome and reason (accesses excluded)."""
        return await reads.counts(tenant_id, from_day, to_day)

    @api.get("/dead-letters", response_model=DeadLetterPage, responses=_responses())
    async def dead_letters(
        tenant_id: Tenant,
        principal: Annotated[Principal, Depends(reader)],
        invoice_id: Ident = None,
        cursor: CursorParam = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> DeadLetterPage:
        """Messages of this tenant that a service could not handle, and why, oldest first. The error
        is the exception's last line; admin keys get the whole traceback (it names internals)."""
        full = principal.has_role(Role.ADMIN)
        return await reads.dead_letters(tenant_id, invoice_id, cursor, limit, full_errors=full)

    @api.get("/verify", response_model=Verification, responses=_responses())
    async def verify_route(tenant_id: Tenant) -> Verification:
        """Walk the tenant's chain and its signed checkpoints; `first_break` names the first broken link."""
        return await verify(tenant_id)

    @api.get("/chain/export", response_class=_NdjsonStream, responses=_stream_responses(_NdjsonStream))
    async def chain_export(tenant_id: Tenant, from_seq: FromSeq = 1, to_seq: ToSeq = None) -> StreamingResponse:
        """NDJSON: a header with the public key, every position, then the signed checkpoints
        (docs/audit.md shows how to verify it offline)."""
        if to_seq is not None and to_seq < from_seq:
            raise _invalid("to_seq", "must not be before from_seq")
        headers = {"Content-Disposition": f'attachment; filename="audit-chain-{tenant_id}.ndjson"'}
        return _NdjsonStream(export_chain(tenant_id, from_seq, to_seq), headers=headers)

    @api.get("/invoices/{invoice_id:path}/evidence", response_class=_ZipStream, responses=_zip_responses())
    async def evidence_bundle(tenant_id: Tenant, invoice_id: InvoicePath) -> StreamingResponse:
        """A zip an auditor verifies offline: the document sent, its RFC 3161 timestamp, the delivery
        events with the provider's evidence, the hash-chain proof with signed checkpoints, a README
        and `verify_bundle.py` (docs/audit.md). 404 when the tenant has no record of this invoice."""
        if evidence is None:
            raise HTTPException(503, detail="evidence bundles are not configured on this service")
        try:
            bundle = await evidence.build(tenant_id, invoice_id)
        except DependencyDown as e:  # S3 down or slow: the caller retries, nothing is half-sent
            raise unavailable(f"{e.dependency} is unavailable; retry later") from e
        if bundle is None:
            raise HTTPException(404, detail="no records of this invoice")
        headers = {"Content-Disposition": f'attachment; filename="{bundle.filename}"'}
        return _ZipStream(bundle.chunks(), headers=headers)

    return api


class _Reads:
    """The routes' work once parameters are valid and the caller may read the tenant."""

    def __init__(self, queries: AuditQueries, cursors: Cursors, cipher: FieldCipher | None = None) -> None:
        self.queries = queries
        self._cursors = cursors
        self._cipher = cipher

    async def _revealed(self, docs: list[Document]) -> list[Document]:
        """Records whose hashed JSON has its contact data decrypted for the reader (the stored
        record and its hash are untouched: ``hash`` still matches what the chain export holds)."""
        if self._cipher is None:
            return docs
        out = []
        for doc in docs:
            raw = _raw(doc)
            if not isinstance(raw, dict):
                out.append(doc)
                continue
            revealed = await reveal(doc, raw, self._cipher)
            record = json.loads(doc["record"]) | {"raw": json.dumps(revealed, ensure_ascii=False)}
            out.append({**doc, "record": json.dumps(record, ensure_ascii=False)})
        return out

    def _position(self, token: str | None, tenant_id: str, scope: str) -> int | str | None:
        if token is None:
            return None
        try:
            return self._cursors.decode(token, tenant_id, scope)
        except CursorError as e:
            raise HTTPException(400, detail=str(e)) from e

    def _seq(self, token: str | None, tenant_id: str, scope: str) -> int | None:
        value = self._position(token, tenant_id, scope)
        if value is not None and not isinstance(value, int):
            raise HTTPException(400, detail="invalid cursor")
        return value

    def _next(self, docs: list[Document], limit: int, tenant_id: str, scope: str) -> str | None:
        """The cursor after the page, when the query found more than the page (it asks for one more)."""
        return self._cursors.encode(tenant_id, scope, int(docs[limit - 1]["seq"])) if len(docs) > limit else None

    async def timeline(self, tenant_id: str, invoice_id: str, cursor: str | None, limit: int) -> Timeline:
        scope = scope_of("timeline", invoice_id=invoice_id)
        after = self._seq(cursor, tenant_id, scope)
        docs = await self.queries.timeline(tenant_id, invoice_id, after or 0, limit + 1)
        if not docs and after is None:
            raise HTTPException(404, detail="no records of this invoice")
        return Timeline(
            tenant_id=tenant_id,
            invoice_id=invoice_id,
            entries=[_entry(d) for d in await self._revealed(docs[:limit])],
            next_cursor=self._next(docs, limit, tenant_id, scope),
        )

    async def search(self, where: RecordFilter, cursor: str | None, limit: int) -> RecordPage:
        scope = where.scope("records")
        docs = await self.queries.search(where, self._seq(cursor, where.tenant_id, scope), limit + 1)
        return RecordPage(
            tenant_id=where.tenant_id,
            records=[Summary.model_validate(_summary(d)) for d in docs[:limit]],
            next_cursor=self._next(docs, limit, where.tenant_id, scope),
        )

    async def not_delivered(
        self, tenant_id: str, period: tuple[datetime | None, datetime | None], cursor: str | None, limit: int
    ) -> NotDeliveredReport:
        start, end = period
        scope = scope_of("not-delivered", start=start, end=end)
        after = self._position(cursor, tenant_id, scope)
        if after is not None and not isinstance(after, str):
            raise HTTPException(400, detail="invalid cursor")
        found, last = await self.queries.not_delivered(tenant_id, start, end, after, limit)
        return NotDeliveredReport(
            tenant_id=tenant_id,
            invoices=[NotDeliveredInvoice.model_validate(item, from_attributes=True) for item in found],
            next_cursor=self._cursors.encode(tenant_id, scope, last) if last is not None else None,
        )

    async def counts(self, tenant_id: str, from_day: date, to_day: date) -> Counts:
        if to_day < from_day:
            raise _invalid("to_day", "must not be before from_day")
        if (to_day - from_day).days >= MAX_REPORT_DAYS:
            raise _invalid("to_day", f"at most {MAX_REPORT_DAYS} days per report")
        rows = await self.queries.daily_counts(tenant_id, from_day, to_day)
        return Counts(
            tenant_id=tenant_id,
            from_day=from_day,
            to_day=to_day,
            counts=[Count.model_validate(row, from_attributes=True) for row in rows],
        )

    async def dead_letters(
        self, tenant_id: str, invoice_id: str | None, cursor: str | None, limit: int, *, full_errors: bool
    ) -> DeadLetterPage:
        scope = scope_of("dead-letters", invoice_id=invoice_id)
        after = self._seq(cursor, tenant_id, scope)
        docs = await self.queries.dead_letters(tenant_id, invoice_id, after or 0, limit + 1)
        return DeadLetterPage(
            tenant_id=tenant_id,
            dead_letters=[_dead_letter(d, full_errors) for d in await self._revealed(docs[:limit])],
            next_cursor=self._next(docs, limit, tenant_id, scope),
        )


class _CsvStream(StreamingResponse):
    media_type = "text/csv"


class _NdjsonStream(StreamingResponse):
    media_type = "application/x-ndjson"


class _ZipStream(StreamingResponse):
    media_type = "application/zip"


def _zip_responses() -> dict[int | str, dict[str, Any]]:
    problem = {"application/json": {"schema": Problem.model_json_schema()}}
    return {
        **_stream_responses(_ZipStream),
        404: {"description": _DESCRIPTIONS[404], "content": problem},
        503: {"description": "The document store is unavailable, or bundles are not configured", "content": problem},
    }


def _attachment(where: RecordFilter, extension: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="audit-records-{where.tenant_id}.{extension}"'}


# --- strict query strings and access records -----------------------------------------------------


def _query_names(request: Request) -> frozenset[str]:
    """Query parameters the matched route (and its dependencies) declare."""
    route = request.scope.get("route")
    names: set[str] = set()
    stack = [route.dependant] if isinstance(route, APIRoute) else []
    while stack:
        dependant = stack.pop()
        names.update(field.alias for field in dependant.query_params)
        stack.extend(dependant.dependencies)
    return frozenset(names)


async def plain_query(request: Request) -> None:
    """400 for a query parameter given twice or not taken by the route, naming it."""
    allowed = _query_names(request)
    seen: dict[str, int] = {}
    for name, _ in request.query_params.multi_items():
        seen[name] = seen.get(name, 0) + 1
    for name, times in seen.items():
        if name not in allowed:
            raise HTTPException(
                400, detail=f"unknown query parameter {name[:100]!r}; known: {', '.join(sorted(allowed))}"
            )
        if times > 1:
            raise HTTPException(400, detail=f"query parameter {name!r} given {times} times; give it once")


def audited_route(on_access: AccessHook) -> type[APIRoute]:
    """A route class that hands every call to ``on_access`` with the status it is answered with,
    before the answer leaves: a read the audit could not record is not served.

    While MongoDB (or another dependency) is down, the call and its record fail alike: answered 503
    with ``Retry-After``, never 500, so the caller knows to retry and nothing was done half-way
    (the routes' writes are idempotent, an erasure included)."""

    class AuditedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handle = super().get_route_handler()

            async def audited(request: Request) -> Response:
                error: Exception | None = None
                try:
                    response = await handle(request)
                    status = response.status_code
                except HTTPException as e:
                    error, status = e, e.status_code
                except RequestValidationError as e:
                    error, status = e, 422
                except Exception as e:  # noqa: BLE001 - re-raised below, once the call is recorded
                    error, status = e, 500
                    if _transient(e):
                        error, status = unavailable(), 503
                        error.__cause__ = e
                try:
                    await on_access(_principal(request), request, status)
                except Exception as e:
                    if _transient(e):
                        raise unavailable() from e
                    raise
                if error is not None:
                    raise error
                return response

            return audited

    return AuditedRoute


def _transient(error: Exception) -> bool:
    return classify(error)[0] is ErrorKind.TRANSIENT


def _principal(request: Request) -> Principal | None:
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal


# --- documents to models ---------------------------------------------------------------------------


def _raw(doc: Document) -> Any:
    """The ``raw`` inside the hashed record, parsed as JSON when it is (``None`` when unreadable)."""
    try:
        raw = json.loads(doc["record"])["raw"]
        return json.loads(raw)
    except (KeyError, TypeError, ValueError, RecursionError):
        return None


def _summary(doc: Document) -> dict[str, Any]:
    return {**doc, "id": str(doc["_id"])}


def _entry(doc: Document) -> Entry:
    raw = _raw(doc)
    fields = _summary(doc)
    if doc.get("kind") == Kind.EVENT.value and isinstance(raw, dict):
        data = raw.get("data")
        envelope = {
            "producer": raw.get("producer"),
            "correlation_id": raw.get("correlation_id"),
            "causation_id": raw.get("causation_id"),
            "data": data if isinstance(data, dict) else None,
        }
    else:
        envelope = {"data": raw if isinstance(raw, dict) else None}
    return Entry.model_validate({**fields, **envelope})


def _dead_letter(doc: Document, full_error: bool) -> DeadLetter:
    raw = _raw(doc)
    details = raw if isinstance(raw, dict) else {}
    keep = ("source_topic", "service", "error", "attempts", "body", "body_encoding")
    letter = {**_summary(doc), **{k: details.get(k) for k in keep}}
    error = letter.get("error")
    if not full_error and isinstance(error, str):  # a traceback's last line: the exception and its message
        letter["error"] = next((line for line in reversed(error.splitlines()) if line.strip()), "")
    return DeadLetter.model_validate(letter)
