"""``POST /v1/imports``: a bulk file (CSV or XLSX) uploaded over HTTP, loaded in the background.

The form's parts are read as they arrive (recommended order: ``tenant_id``, ``mapping``,
``dry_run``, ``file``; ``tenant_id`` must come before ``file``, as curl ``-F``, requests and
httpx send them). The file goes to S3 part by part (``<tenant>/imports/<id>/source.<ext>``) and is
refused with 413 the moment it passes ``max_upload_bytes``; only then is the import recorded in
MongoDB, ``queued``, so an answered 202 is an import no restart loses. A worker
(:mod:`factura.ingest.imports.worker`) loads it like ``python -m factura.ingest load`` would.

* Keys: role ``ingest`` or ``admin``, with the form's tenant in scope (401, 403). Another tenant's
  import is answered 404, like a missing one, so ids cannot be probed.
* The same file with the same mapping and ``dry_run`` posted again for the tenant within
  ``dedupe_s`` (24 h) answers 200 with the existing import instead of loading it twice (two
  identical uploads at the very same moment may still both be queued: ingest deduplicates the
  invoices). ``Idempotency-Key`` (as on ``POST /v1/invoices``) replays the first answer; the same
  key with another file, mapping or ``dry_run`` is a 422.
* ``GET /v1/imports/{id}/report`` answers 409 until the import has succeeded or failed.
* S3 or MongoDB unreachable: 503 with ``Retry-After``; the partial upload is discarded.

No ``from __future__ import annotations``: FastAPI resolves the routes' annotations at runtime.
"""

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, Final, TypeVar

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from factura.common.apikeys import AUTH_RESPONSES, Authenticate, Principal, with_role
from factura.common.envelope import TENANT_PATTERN
from factura.common.errors import ErrorKind, classify
from factura.common.http import available, unavailable
from factura.ingest.api import INGEST_ROLES, MAX_IDEMPOTENCY_KEY, Problem
from factura.ingest.bulk.mapping import MappingError
from factura.ingest.imports.files import REPORT_TYPE, ImportFiles, report_key, source_key
from factura.ingest.imports.form import FormError
from factura.ingest.imports.settings import ImportSettings
from factura.ingest.imports.store import Format, ImportRecord, ImportStore, Progress, State, Summary
from factura.ingest.imports.upload import Upload
from factura.ingest.versions import Answer, IdempotencyStore

#: Room for the form's boundaries and part headers on top of the file and mapping caps.
FORM_OVERHEAD: Final = 64 * 1024
_PRINTABLE = re.compile(r"^[\x21-\x7e][\x20-\x7e]*$")
FINISHED: Final[frozenset[State]] = frozenset({"succeeded", "failed"})
T = TypeVar("T")


# --- models and OpenAPI ------------------------------------------------------------------------------


class ImportCreated(BaseModel):
    import_id: str
    state: State
    status_url: str = Field(description="GET it for the state and counts")
    report_url: str = Field(description="GET it for the per-row report (CSV) once the import has finished")


class ImportStatus(BaseModel):
    import_id: str
    tenant_id: str
    state: State = Field(description="queued → running → succeeded or failed")
    filename: str
    format: Format
    size: int = Field(description="Bytes")
    sha256: str
    dry_run: bool = Field(description="Every row checked and reported, nothing published")
    attempts: int = Field(description="Runs started (more than one after an outage or a worker's death)")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress | None = Field(None, description="While running, updated every few hundred invoices")
    summary: Summary | None = Field(None, description="Once succeeded")
    error: str | None = Field(None, description="Why the file was refused as a whole (state failed)")
    last_outage: str | None = Field(None, description="The last outage that sent the import back to the queue")
    report_url: str


_UPLOAD_SCHEMA: Final = {
    "type": "object",
    "required": ["tenant_id", "file"],
    "properties": {
        "tenant_id": {"type": "string", "pattern": TENANT_PATTERN, "description": "Comes before `file`"},
        "mapping": {
            "type": "string",
            "format": "binary",
            "description": "Column mapping (TOML), as for `python -m factura.ingest load --mapping`",
        },
        "dry_run": {"type": "boolean", "description": "Check and report every row, publish nothing"},
        "file": {"type": "string", "format": "binary", "description": "The CSV or XLSX export"},
    },
}
_RETRY_HEADER: Final = {"Retry-After": {"description": "Seconds", "schema": {"type": "integer"}}}
_UNAVAILABLE: Final = {
    "model": Problem,
    "description": "S3 or MongoDB is unreachable: retry after Retry-After seconds",
    "headers": _RETRY_HEADER,
}
_NOT_FOUND: Final = {"model": Problem, "description": "No such import for the key's tenants"}
_LOCATION: Final = {"Location": {"description": "The status URL", "schema": {"type": "string"}}}

_CREATE_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    202: {"description": "Stored and queued", "headers": _LOCATION},
    200: {
        "model": ImportCreated,
        "description": "The same upload was made within 24 h: the existing import",
        "headers": _LOCATION,
    },
    400: {
        "model": Problem,
        "description": "Not the documented form (a field missing, repeated, unknown "
        "or malformed; tenant_id after file; an empty file), or the Idempotency-Key is unusable",
    },
    413: {"model": Problem, "description": "The file or the mapping is larger than accepted"},
    415: {"model": Problem, "description": "The body is not multipart/form-data, or the file not CSV or XLSX"},
    422: {
        "model": Problem,
        "description": "The mapping is invalid (the problem is named), or the "
        "Idempotency-Key was used with another upload",
    },
    503: _UNAVAILABLE,
    **AUTH_RESPONSES,
}

ImportPath = Annotated[str, Path(min_length=1, max_length=64, description="The id POST /v1/imports answered")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description=f"1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters; the same key and upload within 24 h "
        "get the first answer again",
    ),
]


def status_url(import_id: str) -> str:
    return f"/v1/imports/{import_id}"


def report_url(import_id: str) -> str:
    return f"/v1/imports/{import_id}/report"


# --- the router ------------------------------------------------------------------------------------


def router(
    store: ImportStore,
    files: ImportFiles,
    idempotency: IdempotencyStore,
    *,
    auth: Authenticate,
    settings: ImportSettings,
) -> APIRouter:
    """The ``/v1/imports`` routes."""

    ingester = with_role(auth, *INGEST_ROLES)

    Caller = Annotated[Principal, Depends(ingester)]  # noqa: N806 (a type alias closing over auth)
    api = APIRouter(prefix="/v1", tags=["imports"])

    async def owned(import_id: str, principal: Principal) -> ImportRecord:
        record = await available(store.get(import_id))
        if record is None or not principal.may_read(record.tenant_id):
            raise HTTPException(404, detail="no such import")
        return record

    @api.post(
        "/imports",
        status_code=202,
        response_model=ImportCreated,
        responses=_CREATE_RESPONSES,
        openapi_extra={
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _UPLOAD_SCHEMA}}}
        },
    )
    async def create(request: Request, principal: Caller, idempotency_key: IdempotencyKey = None) -> JSONResponse:
        """Upload a CSV or XLSX export of invoices; it is loaded into `erp.invoices` in the background."""
        if idempotency_key is not None and (
            len(idempotency_key) > MAX_IDEMPOTENCY_KEY or not _PRINTABLE.fullmatch(idempotency_key)
        ):
            raise HTTPException(400, detail=f"Idempotency-Key: 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters")
        declared = request.headers.get("content-length", "")
        if (
            declared.isdigit()
            and int(declared) > settings.max_upload_bytes + settings.max_mapping_bytes + FORM_OVERHEAD
        ):
            raise HTTPException(413, detail=f"the file is larger than {settings.max_upload_bytes} bytes")
        upload = Upload(files, settings, principal)
        with _as_http():
            try:
                await upload.receive(request.headers.get("content-type", ""), request.stream())
                return await _register(upload, store, idempotency, settings, idempotency_key)
            except BaseException:
                await upload.discard()
                raise

    @api.get(
        "/imports/{import_id}",
        response_model=ImportStatus,
        responses={404: _NOT_FOUND, 503: _UNAVAILABLE, **AUTH_RESPONSES},
    )
    async def status(import_id: ImportPath, principal: Caller) -> ImportStatus:
        """An import's state, progress and, once finished, its counts or the reason it failed."""
        record = await owned(import_id, principal)
        return ImportStatus.model_validate(
            record.model_dump(by_alias=False) | {"report_url": report_url(record.import_id)}
        )

    @api.get(
        "/imports/{import_id}/report",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "The per-row report: row, column, value, reason (one line per problem)",
                "content": {"text/csv": {"schema": {"type": "string"}}},
            },
            404: _NOT_FOUND,
            409: {"model": Problem, "description": "The import has not finished yet (queued or running)"},
            503: _UNAVAILABLE,
            **AUTH_RESPONSES,
        },
    )
    async def report(import_id: ImportPath, principal: Caller) -> StreamingResponse:
        """The per-row report of a finished import (header only when every row was fine)."""
        record = await owned(import_id, principal)
        if record.state not in FINISHED:
            raise HTTPException(409, detail=f"the import is {record.state}; its report is ready once it has finished")
        chunks = await available(files.open(record.report_key))
        if chunks is None:
            raise HTTPException(404, detail="this import has no report")
        name = f"import-{record.import_id}-report.csv"
        return StreamingResponse(
            chunks, media_type=REPORT_TYPE, headers={"Content-Disposition": f'attachment; filename="{name}"'}
        )

    return api


async def _register(
    upload: Upload, store: ImportStore, idempotency: IdempotencyStore, settings: ImportSettings, key: str | None
) -> JSONResponse:
    """Record the stored upload as a queued import, or answer with the one it repeats."""
    source, tenant = upload.source, upload.tenant_id
    assert source is not None and source.format is not None
    mapping = upload.mapping  # checked as it arrived
    mapping_sha = "" if mapping is None else hashlib.sha256(mapping).hexdigest()
    dedupe = f"{source.sha256}:{mapping_sha}:{'dry' if upload.dry_run else 'load'}"
    idempotency_id = None if key is None else f"imports/{key}"
    if idempotency_id is not None:
        stored = await idempotency.find(tenant, idempotency_id)
        if stored is not None:
            if stored.body_digest != dedupe:
                raise HTTPException(422, detail="Idempotency-Key: already used with another upload")
            await upload.discard()
            body: dict[str, Any] = json.loads(stored.body)
            headers = {"Idempotent-Replayed": "true", "Location": body["status_url"]}
            return JSONResponse(body, stored.status, headers=headers)
    existing = await store.recent(tenant, dedupe, settings.dedupe_s) if settings.dedupe_s else None
    if existing is not None:
        await upload.discard()
        record, code = existing, 200
    else:
        record = await store.create(
            {
                "_id": upload.import_id,
                "tenant_id": tenant,
                "filename": source.filename,
                "format": source.format,
                "size": source.size,
                "sha256": source.sha256,
                "dry_run": upload.dry_run,
                "mapping": None if mapping is None else mapping.decode("utf-8"),
                "dedupe": dedupe,
                "source_key": source_key(tenant, upload.import_id, source.format),
                "report_key": report_key(tenant, upload.import_id),
            }
        )
        code = 202
    answer = ImportCreated(
        import_id=record.import_id,
        state=record.state,
        status_url=status_url(record.import_id),
        report_url=report_url(record.import_id),
    ).model_dump(mode="json")
    if idempotency_id is not None:
        await idempotency.save(tenant, idempotency_id, Answer(dedupe, code, json.dumps(answer)))
    return JSONResponse(answer, code, headers={"Location": answer["status_url"]})


# --- errors ------------------------------------------------------------------------------------------


@contextmanager
def _as_http() -> Iterator[None]:
    """The exceptions of receiving and registering an upload as the documented answers."""
    try:
        yield
    except FormError as e:
        raise HTTPException(400, detail=str(e)) from e
    except MappingError as e:
        raise HTTPException(422, detail=f"mapping: {e}"[:2000]) from e
    except Exception as e:
        if classify(e)[0] is ErrorKind.TRANSIENT:
            raise unavailable() from e
        raise
