"""``POST /v1/documents``: an ERP uploads a document it produced itself and gets the key an invoice's
``document.s3_key`` (or ``xml_s3_key``, ``annex_s3_keys``) then names.

Files land under the tenant's upload prefix (:func:`~factura.common.erp.upload_prefix`,
``<tenant>/erp/``), the only keys an invoice may reference, at ``<tenant>/erp/<sha256>/<name>``.
The key is content-addressed, so uploading the same bytes again (a retry after a lost answer)
is harmless and answers the same key; a key, once answered, only ever holds those bytes. The S3
object is the only record of an upload: its metadata holds the sha256 and the name the ERP gave.

Only what the renderer can send is stored, recognised by content rather than by name: a PDF
(``%PDF-``), a zip (``PK\\x03\\x04``) or XML (``<`` first, after a byte order mark and white
space); anything else is a 415. Whether the PDF opens and the XML is safe is checked by the
renderer when an invoice uses them (``factura.renderer.supplied``), with the field named.

The file is the raw request body, with ``tenant_id`` and ``filename`` in the query
(``curl --data-binary @F-1.pdf '.../v1/documents?tenant_id=acme&filename=F-1.pdf'``), not
``multipart/form-data``: the cap then applies to the file's own bytes and is enforced while
reading (413 as soon as the body passes it, whatever ``Content-Length`` says), with no multipart
parser spooling the part to a temporary file before the route could refuse it.

Same keys as the rest of ingest: role ``ingest`` or ``admin``, the tenant in the key's scope
(401/403). S3 unreachable: 503 with ``Retry-After``. :func:`store_document` is the same step
without HTTP, for the SFTP drop.
"""

import hashlib
import re
import unicodedata
from typing import Annotated, Any, Final, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from factura.common.apikeys import AUTH_RESPONSES, Authenticate, Principal, require_tenant, with_role
from factura.common.envelope import TENANT_PATTERN
from factura.common.erp import upload_prefix
from factura.common.errors import InvalidMessage
from factura.common.events import FieldError
from factura.common.http import available
from factura.common.metrics import counter
from factura.common.storage import DocumentStore, ObjectExists, safe_name
from factura.ingest.api import INGEST_ROLES, Problem, read_body

#: Largest document accepted by default: far above a real invoice PDF with its annexes, well below
#: what would strain a pod holding a few uploads in memory at once.
DEFAULT_MAX_BYTES: Final = 20 * 1024 * 1024
#: Longest file name kept in a key (the extension included); longer ones are cut before the extension.
MAX_FILENAME_CHARS: Final = 100
#: Longest original name kept (percent-encoded) in the object's metadata; S3 allows 2 KB in all.
MAX_METADATA_NAME_CHARS: Final = 1024
#: Bytes looked at for the XML sniff: room for a byte order mark and leading white space.
_SNIFF_BYTES: Final = 1024
_BOMS: Final = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))

ContentType = Literal["application/pdf", "application/zip", "application/xml"]
_SUFFIX: Final[dict[ContentType, str]] = {
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "application/xml": ".xml",
}
_ACCEPTED: Final = "a PDF (%PDF-), a zip (PK\\x03\\x04) or XML (<)"

UPLOADS = counter("ingest_documents_total", "Documents uploaded by ERPs, by outcome.", ("outcome",))


class StoredDocument(BaseModel):
    """Where an uploaded document is: what an invoice's ``document`` keys name."""

    model_config = ConfigDict(frozen=True)

    s3_key: str = Field(description="The key to put in document.s3_key (or xml_s3_key, annex_s3_keys)")
    sha256: str = Field(description="Hex sha256 of the bytes stored")
    size: int = Field(description="Bytes stored")
    content_type: ContentType = Field(description="What the content is, recognised from its first bytes")


class DocumentRefused(InvalidMessage):
    """An upload refused for what it is (its tenant, type or size); nothing was stored."""


class UnsupportedDocument(DocumentRefused):
    """The content is not a PDF, a zip or XML."""


class DocumentTooLarge(DocumentRefused):
    """The content is larger than the cap."""


def sniff(data: bytes) -> ContentType | None:
    """What ``data`` is, from its first bytes: a PDF, a zip, XML, or ``None`` for anything else."""
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    if data.startswith(b"PK\x03\x04"):
        return "application/zip"
    for bom, codec in _BOMS:
        if data.startswith(bom):
            text = data[len(bom) : _SNIFF_BYTES].decode(codec, "ignore")
            break
    else:  # no byte order mark: an ASCII-compatible encoding, and only the first non-blank byte counts
        text = data[:_SNIFF_BYTES].decode("latin-1")
    return "application/xml" if text.lstrip(" \t\r\n").startswith("<") else None


def safe_filename(filename: str, content_type: ContentType) -> str:
    """``filename`` as the last segment of a key and the name a customer's mail client shows.

    The last path segment only (``/`` or ``\\``), accents dropped (``Factură`` → ``Factura``),
    anything but ``A-Z a-z 0-9 . _ -`` replaced (controls, spaces, other scripts), no ``..``, no
    leading dot, ``document`` when nothing is left, at most :data:`MAX_FILENAME_CHARS`, and ending
    with the extension of what the content is (``scan`` → ``scan.pdf``, a zip called ``x.pdf`` →
    ``x.pdf.zip``), so the file opens in the right program.
    """
    base = re.split(r"[/\\]", filename)[-1]
    plain = "".join(c for c in unicodedata.normalize("NFKD", base) if not unicodedata.combining(c))
    name = re.sub(r"\.{2,}", ".", re.sub(r"_{2,}", "_", safe_name(plain)))
    suffix = _SUFFIX[content_type]
    stem = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    return (stem[: MAX_FILENAME_CHARS - len(suffix)].strip("._") or "document") + suffix


def _refused(kind: type[DocumentRefused], field: str, message: str) -> DocumentRefused:
    return kind([FieldError(field=field, message=message)])


async def store_document(
    store: DocumentStore, tenant_id: str, filename: str, data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> StoredDocument:
    """Store ``data`` under the tenant's upload prefix and say where; the same bytes and name always
    get the same key. :class:`UnsupportedDocument` (field ``file``) unless it is a PDF, zip or XML,
    :class:`DocumentTooLarge` past ``max_bytes``, :class:`DocumentRefused` (field ``tenant_id``) for
    a malformed tenant; S3 outages raise :class:`~factura.common.errors.DependencyDown`."""
    if not re.fullmatch(TENANT_PATTERN, tenant_id):
        raise _refused(DocumentRefused, "tenant_id", f"{tenant_id[:100]!r} is not a tenant id")
    if len(data) > max_bytes:
        UPLOADS.labels("too_large").inc()
        raise _refused(DocumentTooLarge, "file", f"{len(data)} bytes; at most {max_bytes} are accepted")
    content_type = sniff(data)
    if content_type is None:
        UPLOADS.labels("unsupported").inc()
        what = "empty" if not data else f"starts with {data[:8]!r}"
        raise _refused(UnsupportedDocument, "file", f"{what}: expected {_ACCEPTED}")
    sha256 = hashlib.sha256(data).hexdigest()
    key = f"{upload_prefix(tenant_id)}{sha256}/{safe_filename(filename, content_type)}"
    put: dict[str, Any] = {
        "content_type": content_type,
        "sha256": sha256,
        "metadata": {"original-filename": quote(filename, safe="")[:MAX_METADATA_NAME_CHARS]},
    }
    try:
        await store.put(key, data, **put)
        UPLOADS.labels("stored").inc()
    except ObjectExists:
        # Uploaded before (the usual case), or written there by other means: make the key hold its content.
        if await store.stored_sha256(key) != sha256:
            await store.put(key, data, **put, replace=True)
        UPLOADS.labels("again").inc()
    return StoredDocument(s3_key=key, sha256=sha256, size=len(data), content_type=content_type)


_REFUSALS: Final[dict[type[DocumentRefused], int]] = {DocumentTooLarge: 413, UnsupportedDocument: 415}
_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    413: {"model": Problem, "description": "The file is larger than accepted"},
    415: {"model": Problem, "description": f"The file is not {_ACCEPTED}"},
    **AUTH_RESPONSES,
}
_BODY: Final = {
    "requestBody": {
        "required": True,
        "description": "The file's bytes, as they are (any Content-Type; the content decides)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def router(store: DocumentStore, *, auth: Authenticate, max_bytes: int = DEFAULT_MAX_BYTES) -> APIRouter:
    """The ``POST /v1/documents`` route."""

    uploader = with_role(auth, *INGEST_ROLES)

    api = APIRouter(prefix="/v1", tags=["ingest"])

    @api.post("/documents", status_code=201, response_model=StoredDocument, responses=_RESPONSES, openapi_extra=_BODY)
    async def upload(
        request: Request,
        principal: Annotated[Principal, Depends(uploader)],
        tenant_id: Annotated[str, Query(pattern=TENANT_PATTERN, description="The tenant the document belongs to")],
        filename: Annotated[
            str, Query(min_length=1, max_length=1000, description="The file's name; made safe for a key")
        ],
    ) -> StoredDocument:
        """Store a PDF, zip or XML under the tenant's upload prefix; answers the key an invoice's
        `document` names. The same bytes and name always get the same key."""
        require_tenant(principal, tenant_id)
        try:
            data = await read_body(request, max_bytes)
        except HTTPException:
            UPLOADS.labels("too_large").inc()
            raise
        try:
            return await available(store_document(store, tenant_id, filename, data, max_bytes=max_bytes))
        except DocumentRefused as e:
            raise HTTPException(_REFUSALS.get(type(e), 422), detail=str(e)) from e

    return api
