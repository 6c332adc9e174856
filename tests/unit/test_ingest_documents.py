"""ERP document uploads without a server: what the content is, what the name becomes, where the
bytes go, and what is refused before anything is stored."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from factura.common.errors import ErrorKind, InvalidMessage, classify
from factura.common.storage import DocumentStore, ObjectExists
from factura.ingest.documents import (
    MAX_FILENAME_CHARS,
    ContentType,
    DocumentRefused,
    DocumentTooLarge,
    UnsupportedDocument,
    safe_filename,
    sniff,
    store_document,
)

PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"
ZIP = b"PK\x03\x04\x14\x00\x00\x00\x08\x00"


class FakeStore(DocumentStore):
    """Objects in a dict, with S3's conditional write (``ObjectExists`` without ``replace``)."""

    def __init__(self) -> None:
        super().__init__(None, "documents")
        self.objects: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.writes = 0

    async def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str,
        sha256: str,
        metadata: dict[str, str],
        retention_days: int | None = None,
        replace: bool = False,
    ) -> None:
        if key in self.objects and not replace:
            raise ObjectExists(key)
        self.writes += 1
        self.objects[key] = (body, {"sha256": sha256, "content-type": content_type, **metadata})

    async def stored_sha256(self, key: str) -> str | None:
        return self.objects[key][1].get("sha256")


# Sniffing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (PDF, "application/pdf"),
        (ZIP, "application/zip"),
        (b'<?xml version="1.0"?><Invoice/>', "application/xml"),
        (b"<Invoice/>", "application/xml"),
        (b" \r\n\t<Invoice/>", "application/xml"),
        (b"\xef\xbb\xbf<?xml version='1.0'?><a/>", "application/xml"),
        (b"\xef\xbb\xbf\n  <a/>", "application/xml"),
        ("\ufeff<a/>".encode("utf-16-le"), "application/xml"),
        ("\ufeff <a/>".encode("utf-16-be"), "application/xml"),
    ],
)
def test_pdf_zip_and_xml_are_recognised_by_content(data: bytes, expected: str) -> None:
    assert sniff(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   ",
        b"%PDF",  # too short to be the header
        b" %PDF-1.7",  # the header must come first, as the renderer requires
        b"PK\x05\x06",  # an empty zip: nothing to send
        b"MZ\x90\x00",  # a Windows executable
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff\xe0",  # JPEG
        b'{"invoice": 1}',
        b"Invoice,Total\n",
        "\ufeffInvoice".encode("utf-16-le"),
        b"\xef\xbb\xbfnot xml",
    ],
)
def test_anything_else_is_not(data: bytes) -> None:
    assert sniff(data) is None


def test_only_the_first_bytes_decide() -> None:
    assert sniff(b"hello " + PDF) is None
    assert sniff(b" " * 2000 + b"<a/>") is None  # blank past the sniff window: not recognisably XML


# File names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "content_type", "expected"),
    [
        ("F-2026-001.pdf", "application/pdf", "F-2026-001.pdf"),
        ("F-2026-001.PDF", "application/pdf", "F-2026-001.pdf"),
        ("scan", "application/pdf", "scan.pdf"),
        ("invoice.pdf", "application/zip", "invoice.pdf.zip"),  # named a PDF, is a zip
        ("../../other-tenant/erp/x.pdf", "application/pdf", "x.pdf"),
        ("C:\\exports\\F 1.xml", "application/xml", "F_1.xml"),
        ("..", "application/pdf", "document.pdf"),
        ("a..b.pdf", "application/pdf", "a.b.pdf"),
        (".hidden.pdf", "application/pdf", "hidden.pdf"),
        ("Factură țară.pdf", "application/pdf", "Factura_tara.pdf"),
        ("发票.pdf", "application/pdf", "document.pdf"),
        ("a\r\nb\x00c.pdf", "application/pdf", "a_b_c.pdf"),
        ("a\u202egpj.pdf", "application/pdf", "a_gpj.pdf"),  # a bidi override cannot disguise the name
        ("", "application/xml", "document.xml"),
        ("x/", "application/pdf", "document.pdf"),
    ],
)
def test_names_are_made_safe(filename: str, content_type: ContentType, expected: str) -> None:
    assert safe_filename(filename, content_type) == expected


def test_long_names_are_cut_before_the_extension() -> None:
    name = safe_filename("a" * 500 + ".pdf", "application/pdf")
    assert len(name) == MAX_FILENAME_CHARS and name.endswith("a.pdf")
    assert safe_filename("a" * 95 + "._____.pdf", "application/pdf") == "a" * 95 + ".pdf"


@given(
    filename=st.text(max_size=300),
    content_type=st.sampled_from(["application/pdf", "application/zip", "application/xml"]),
)
def test_any_name_becomes_one_plain_key_segment(filename: str, content_type: ContentType) -> None:
    name = safe_filename(filename, content_type)
    assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", name), name
    assert ".." not in name and len(name) <= MAX_FILENAME_CHARS
    assert name.endswith("." + content_type.removeprefix("application/"))


# Storing -----------------------------------------------------------------------------------------


async def test_a_document_is_stored_content_addressed_under_the_upload_prefix() -> None:
    store = FakeStore()
    stored = await store_document(store, "acme", "F-1.pdf", PDF)
    sha = hashlib.sha256(PDF).hexdigest()
    assert stored.s3_key == f"acme/erp/{sha}/F-1.pdf"
    assert (stored.sha256, stored.size, stored.content_type) == (sha, len(PDF), "application/pdf")
    body, metadata = store.objects[stored.s3_key]
    assert body == PDF and metadata == {
        "sha256": sha,
        "content-type": "application/pdf",
        "original-filename": "F-1.pdf",
    }


async def test_the_original_name_is_kept_percent_encoded() -> None:
    store = FakeStore()
    stored = await store_document(store, "acme", "Factură 1/2.pdf", PDF)
    assert store.objects[stored.s3_key][1]["original-filename"] == "Factur%C4%83%201%2F2.pdf"


async def test_the_same_bytes_again_answer_the_same_key_without_a_second_write() -> None:
    store = FakeStore()
    first = await store_document(store, "acme", "F-1.pdf", PDF)
    again = await store_document(store, "acme", "F-1.pdf", PDF)
    assert again == first and store.writes == 1
    other = await store_document(store, "acme", "F-1.pdf", PDF + b"\n")
    assert other.s3_key != first.s3_key and store.writes == 2


async def test_a_key_holding_other_bytes_is_made_to_hold_its_content() -> None:
    """Someone wrote to the content-addressed key directly: the key is put right, not left lying."""
    store = FakeStore()
    key = (await store_document(store, "acme", "F-1.pdf", PDF)).s3_key
    store.objects[key] = (b"%PDF-tampered", {"sha256": "0" * 64})
    await store_document(store, "acme", "F-1.pdf", PDF)
    assert store.objects[key][0] == PDF


async def test_other_content_is_refused_naming_the_field() -> None:
    store = FakeStore()
    with pytest.raises(UnsupportedDocument) as refused:
        await store_document(store, "acme", "F-1.pdf", b"\x89PNG\r\n\x1a\n")
    assert [r.field for r in refused.value.reasons] == ["file"] and "PDF" in str(refused.value)
    assert classify(refused.value)[0] is ErrorKind.INVALID and not store.objects


async def test_too_large_is_refused_before_anything_is_stored() -> None:
    store = FakeStore()
    await store_document(store, "acme", "F-1.pdf", PDF, max_bytes=len(PDF))
    with pytest.raises(DocumentTooLarge) as refused:
        await store_document(store, "acme", "F-2.pdf", PDF + b"x", max_bytes=len(PDF))
    assert refused.value.reasons[0].field == "file" and f"at most {len(PDF)}" in str(refused.value)
    assert isinstance(refused.value, InvalidMessage) and store.writes == 1


@pytest.mark.parametrize("tenant", ["", "Acme", "acme/erp", "../acme", "a"])
async def test_a_malformed_tenant_is_refused(tenant: str) -> None:
    store = FakeStore()
    with pytest.raises(DocumentRefused) as refused:
        await store_document(store, tenant, "F-1.pdf", PDF)
    assert refused.value.reasons[0].field == "tenant_id" and not store.objects
