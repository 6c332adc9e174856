"""ERP document uploads on the real local S3 (moto) and MongoDB-wire servers: keys and tenants,
content-addressed keys, size and type refusals, the invoice that references an upload (accepted by
ingest, fetched by the renderer), and S3 going away and coming back."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import io
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import date
from typing import Any

import httpx
import pytest
from pypdf import PdfWriter

from factura.common.apikeys import COLLECTION, ApiKeyStore, Role, authenticator
from factura.common.errors import InvalidMessage
from factura.common.http import Health, create_app
from factura.common.mongo import create_client, database
from factura.common.schemas import EXAMPLES_DIR
from factura.common.storage import DocumentStore
from factura.devstack.config import StackConfig
from factura.devstack.stack import Stack
from factura.ingest.documents import router
from factura.ingest.normalise import invoice_from_erp
from factura.renderer.supplied import fetch_supplied
from tests.api_keys import grant
from tests.conftest import mongo_settings

pytestmark = pytest.mark.integration
INVOICE: dict[str, Any] = json.loads((EXAMPLES_DIR / "erp.invoice.v1.json").read_text(encoding="utf-8"))
TENANT = INVOICE["tenant_id"]
OTHER = "otra-empresa"
ISSUED = date.fromisoformat(INVOICE["issue_date"])
MAX_BYTES = 64 * 1024  # small, so the tests pass it cheaply
XML = b'<?xml version="1.0" encoding="UTF-8"?>\n<Invoice xmlns="urn:example"><ID>F-1</ID></Invoice>\n'
ZIP = b"PK\x03\x04" + b"\x00" * 60

#: Request headers per caller, filled in with real keys by the ``api`` fixture.
INGEST: dict[str, str] = {}
ADMIN: dict[str, str] = {}
READER: dict[str, str] = {}
FOREIGN: dict[str, str] = {}


@dataclass
class Setup:
    client: httpx.AsyncClient
    store: DocumentStore


@pytest.fixture(scope="module")
async def api(cfg: StackConfig, store: DocumentStore) -> AsyncIterator[Setup]:
    settings = mongo_settings(cfg)
    async with AsyncExitStack() as stack:
        mongo = create_client(settings)
        stack.push_async_callback(mongo.close)
        keys = ApiKeyStore(database(mongo, settings)[f"{COLLECTION}_{uuid.uuid4().hex[:6]}"])
        await keys.ensure_indexes()
        await grant(
            keys,
            (
                (INGEST, Role.INGEST, [TENANT]),
                (ADMIN, Role.ADMIN, ["*"]),
                (READER, Role.COMPLIANCE_READER, [TENANT]),
                (FOREIGN, Role.INGEST, [OTHER]),
            ),
        )
        app = create_app("ingest", Health(), [router(store, auth=authenticator(keys), max_bytes=MAX_BYTES)])
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as client:
            yield Setup(client, store)


def pdf() -> bytes:
    """A real one-page PDF, different every call (so each test has its own key)."""
    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    writer.add_metadata({"/Title": uuid.uuid4().hex})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


async def upload(
    api: Setup, content: Any, *, filename: str = "F-1.pdf", tenant: str = TENANT, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await api.client.post(
        "/v1/documents",
        params={"tenant_id": tenant, "filename": filename},
        content=content,
        headers=INGEST if headers is None else headers,
    )


# --- storing ---------------------------------------------------------------------------------------


async def test_an_upload_lands_under_the_upload_prefix_and_reads_back(api: Setup) -> None:
    body = pdf()
    answer = await upload(api, body, filename="Factură F-1.pdf")
    assert answer.status_code == 201, answer.text
    sha = hashlib.sha256(body).hexdigest()
    assert answer.json() == {
        "s3_key": f"{TENANT}/erp/{sha}/Factura_F-1.pdf",
        "sha256": sha,
        "size": len(body),
        "content_type": "application/pdf",
    }
    assert await api.store.get(answer.json()["s3_key"]) == body
    assert await api.store.stored_sha256(answer.json()["s3_key"]) == sha


async def test_the_same_bytes_again_answer_the_same_key(api: Setup) -> None:
    body = pdf()
    first = await upload(api, body)
    again = await upload(api, body)
    assert first.status_code == again.status_code == 201 and again.json() == first.json()
    assert await api.store.get(again.json()["s3_key"]) == body


async def test_xml_and_zip_are_stored_with_their_types(api: Setup) -> None:
    xml = await upload(api, XML, filename="F-1.xml")
    zipped = await upload(api, ZIP, filename="annexes")
    assert xml.status_code == zipped.status_code == 201
    assert xml.json()["content_type"] == "application/xml" and xml.json()["s3_key"].endswith("/F-1.xml")
    assert zipped.json()["content_type"] == "application/zip" and zipped.json()["s3_key"].endswith("/annexes.zip")


# --- keys and tenants --------------------------------------------------------------------------------


async def test_keys_roles_and_tenants_are_checked_before_anything_is_stored(api: Setup) -> None:
    body = pdf()
    assert (await upload(api, body, headers={})).status_code == 401
    wrong_role = await upload(api, body, headers=READER)
    assert wrong_role.status_code == 403 and "role 'compliance-reader'" in wrong_role.json()["detail"]
    foreign = await upload(api, body, headers=FOREIGN)
    assert foreign.status_code == 403 and TENANT in foreign.json()["detail"]
    other_tenant = await upload(api, body, tenant=OTHER)
    assert other_tenant.status_code == 403 and OTHER in other_tenant.json()["detail"]
    key = f"{TENANT}/erp/{hashlib.sha256(body).hexdigest()}/F-1.pdf"
    assert await api.store.get_if_exists(key) is None
    admin = await upload(api, body, headers=ADMIN)
    assert admin.status_code == 201 and admin.json()["s3_key"] == key


async def test_query_parameters_are_named_when_wrong(api: Setup) -> None:
    answer = await upload(api, pdf(), tenant="Not A Tenant")
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["query", "tenant_id"]
    missing = await api.client.post("/v1/documents", params={"tenant_id": TENANT}, content=pdf(), headers=INGEST)
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["query", "filename"]


# --- refusals ----------------------------------------------------------------------------------------


async def test_past_the_cap_is_413_by_declared_length(api: Setup) -> None:
    at_cap = b"%PDF-" + b"0" * (MAX_BYTES - 5)
    assert (await upload(api, at_cap)).status_code == 201
    over = await upload(api, at_cap + b"0")
    assert over.status_code == 413 and str(MAX_BYTES) in over.json()["detail"]


async def test_past_the_cap_is_413_without_reading_the_rest_of_a_chunked_body(api: Setup) -> None:
    chunk = b"%PDF-" + b"0" * (16 * 1024 - 5)
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(64):  # 1 MiB in all, no Content-Length
            sent += 1
            yield chunk

    answer = await upload(api, body())
    assert answer.status_code == 413, answer.text
    assert sent <= MAX_BYTES // len(chunk) + 2  # read up to the cap, not the whole MiB


async def test_other_content_is_415_naming_the_field(api: Setup) -> None:
    for content in (b"\x89PNG\r\n\x1a\n" + b"\x00" * 32, b"", b'{"pdf": true}'):
        answer = await upload(api, content, filename="F-1.pdf")
        assert answer.status_code == 415, (content, answer.text)
        assert answer.json()["detail"].startswith("file: ") and "PDF" in answer.json()["detail"]


async def test_openapi_documents_every_status(api: Setup) -> None:
    operation = (await api.client.get("/openapi.json")).json()["paths"]["/v1/documents"]["post"]
    assert {"201", "401", "403", "413", "415", "422", "503"} <= set(operation["responses"])
    assert "application/octet-stream" in operation["requestBody"]["content"]


# --- the invoice that references an upload ----------------------------------------------------------


def invoice(document: dict[str, Any]) -> dict[str, Any]:
    payload = copy.deepcopy(INVOICE)
    payload["document"] = document
    return payload


async def test_an_invoice_referencing_uploads_is_accepted_and_the_renderer_fetches_them(api: Setup) -> None:
    body = pdf()
    keys = [
        (await upload(api, content, filename=name)).json()["s3_key"]
        for content, name in ((body, "F-1.pdf"), (XML, "F-1.xml"), (ZIP, "annex.zip"))
    ]
    _, created = invoice_from_erp(
        invoice({"s3_key": keys[0], "xml_s3_key": keys[1], "annex_s3_keys": [keys[2]]}), today=ISSUED
    )
    assert created.supplied_document is not None and created.supplied_document.key == keys[0]
    files = await fetch_supplied(api.store, TENANT, created.supplied_document, MAX_BYTES)
    assert (files.pdf, files.xml, files.annexes) == (body, XML, [("annex.zip", ZIP)])


async def test_an_invoice_referencing_a_key_outside_the_upload_prefix_is_refused_naming_the_field(
    api: Setup,
) -> None:
    """A rendered PDF of the same tenant (another customer's invoice) exists, but is not the ERP's upload."""
    rendered = f"{TENANT}/2026/11/F-9/0123456789abcdef/F-9.pdf"
    await api.store.put(rendered, pdf(), content_type="application/pdf", sha256="0" * 64, metadata={}, replace=True)
    with pytest.raises(InvalidMessage) as refused:
        invoice_from_erp(invoice({"s3_key": rendered}), today=ISSUED)
    reasons = {r.field: r.message for r in refused.value.reasons}
    assert list(reasons) == ["document.s3_key"] and f"{TENANT}/erp/" in reasons["document.s3_key"]


# --- S3 away and back (last: moto loses its objects when stopped) -------------------------------------


async def test_s3_down_answers_503_and_the_retried_upload_goes_through(api: Setup, infra: Stack) -> None:
    body = pdf()
    await asyncio.to_thread(infra.stop_server, "s3")
    try:
        down = await upload(api, body)
    finally:
        await asyncio.to_thread(infra.start_server, "s3")
    assert down.status_code == 503 and int(down.headers["retry-after"]) > 0, down.text
    again = await upload(api, body)
    assert again.status_code == 201, again.text
    assert await api.store.get(again.json()["s3_key"]) == body
