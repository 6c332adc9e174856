"""ERP-supplied documents: verify, never re-render.

An ERP that already produces legal PDFs (often with a signed XML beside them) places them in the
documents bucket under its tenant's prefix (``<tenant_id>/…``) and references them from the
invoice. We only check that they are what they claim to be: files of this tenant, within the size
limit, a PDF that opens, a well-formed XML without a DOCTYPE (no entities, no DTD: e-invoice
formats never need one), and annexes that exist. Anything else is a rejection naming the field.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from botocore.exceptions import ClientError
from lxml import etree
from pypdf import PdfReader

from factura.common.events import FieldError, SuppliedDocument
from factura.common.storage import MISSING_CODES, DocumentStore, error_code
from factura.renderer.limits import DocumentRejected

_SAFE_XML = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)


@dataclass(frozen=True)
class SuppliedFiles:
    pdf: bytes
    xml: bytes | None
    annexes: list[tuple[str, bytes]]


async def fetch_supplied(
    store: DocumentStore, tenant_id: str, supplied: SuppliedDocument, max_bytes: int
) -> SuppliedFiles:
    keys = [("supplied_document.key", supplied.key)]
    keys += [("supplied_document.xml_key", supplied.xml_key)] if supplied.xml_key else []
    keys += [(f"supplied_document.annex_keys.{i}", key) for i, key in enumerate(supplied.annex_keys)]
    foreign = [
        FieldError(field=f, message=f"{k!r} is not under {tenant_id}/") for f, k in keys if not _owned(tenant_id, k)
    ]
    if foreign:
        raise DocumentRejected(foreign)
    pdf = await _fetch(store, supplied.key, "supplied_document.key", max_bytes)
    check_pdf(pdf)
    xml = None
    if supplied.xml_key:
        xml = await _fetch(store, supplied.xml_key, "supplied_document.xml_key", max_bytes)
        check_xml(xml)
    annexes = []
    for i, key in enumerate(supplied.annex_keys):
        annexes.append(
            (key.rsplit("/", 1)[-1], await _fetch(store, key, f"supplied_document.annex_keys.{i}", max_bytes))
        )
    return SuppliedFiles(pdf, xml, annexes)


def _owned(tenant_id: str, key: str) -> bool:
    """A tenant may only send its own files: no other tenant's prefix, no path tricks."""
    return key.startswith(f"{tenant_id}/") and ".." not in key.split("/")


async def _fetch(store: DocumentStore, key: str, field: str, max_bytes: int) -> bytes:
    try:
        size = await store.size(key)
        if size > max_bytes:
            raise DocumentRejected([FieldError(field=field, message=f"{size} bytes; the limit is {max_bytes}")])
        body = await store.get(key)
    except ClientError as e:
        if error_code(e) in {*MISSING_CODES, "AccessDenied", "403"}:
            raise DocumentRejected(
                [FieldError(field=field, message=f"{key!r} not found in the documents bucket")]
            ) from e
        raise  # anything else (throttling, outage) is transient: let the consumer loop retry
    if len(body) > max_bytes:  # replaced by a larger object between HEAD and GET
        raise DocumentRejected([FieldError(field=field, message=f"{len(body)} bytes; the limit is {max_bytes}")])
    return body


def check_pdf(body: bytes) -> None:
    if not body.startswith(b"%PDF-"):
        raise DocumentRejected([FieldError(field="supplied_document.key", message="not a PDF (no %PDF- header)")])
    try:
        pages = len(PdfReader(io.BytesIO(body)).pages)
    except Exception as e:
        raise DocumentRejected(
            [FieldError(field="supplied_document.key", message=f"corrupt PDF: {type(e).__name__}: {e}"[:300])]
        ) from e
    if pages < 1:
        raise DocumentRejected([FieldError(field="supplied_document.key", message="PDF has no pages")])


def check_xml(body: bytes) -> None:
    try:
        root = etree.fromstring(body, parser=_SAFE_XML)
        if root.getroottree().docinfo.doctype:
            raise DocumentRejected(
                [FieldError(field="supplied_document.xml_key", message="XML with a DOCTYPE (DTD/entities) is refused")]
            )
    except etree.XMLSyntaxError as e:
        raise DocumentRejected(
            [FieldError(field="supplied_document.xml_key", message=f"not well-formed XML: {e}")]
        ) from e
