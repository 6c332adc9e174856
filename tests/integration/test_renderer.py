"""The renderer handler against the real S3 (moto) and broker (Tansu), rendering in a real worker pool.

Each test drives :meth:`RenderHandlers.on_invoice_created` with an ``invoice.created`` envelope,
publishes on topics under its own prefix, writes its tenant folders under ``tmp_path`` and uses
its own tenant id, so tests never see each other's documents or events.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import io
import json
import re
import struct
import threading
import uuid
import zipfile
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from lxml import etree
from pypdf import PdfReader

from factura.common.envelope import Envelope, derived_event_id, make_event, utcnow
from factura.common.errors import DependencyDown
from factura.common.events import (
    FieldError,
    InvoiceCreatedV1,
    InvoiceRejectedV2,
    InvoiceRenderedV1,
    SuppliedDocument,
    parse_event,
    summary_of,
)
from factura.common.kafka.consumer import Message
from factura.common.links import LinkSigner
from factura.common.mongo import create_client
from factura.common.schemas import EXAMPLES_DIR
from factura.common.storage import DocumentStore, invoice_prefix, manifest_key, s3_session
from factura.common.tenants import TenantDirectory
from factura.common.topics import INVOICE_CREATED
from factura.devstack.config import StackConfig
from factura.renderer.document import render_pdf
from factura.renderer.download import download_router
from factura.renderer.einvoice import extract_xml, validate_xml
from factura.renderer.handlers import RenderHandlers
from factura.renderer.pages import LinkPages
from factura.renderer.pool import RenderPool
from factura.renderer.settings import RenderLimits, TrackingSettings
from factura.renderer.tracking import HitGuard, Tracker
from tests.conftest import mongo_settings, s3_settings
from tests.kafka_helpers import Bus, isolated

pytestmark = pytest.mark.integration

EXAMPLE: dict[str, Any] = json.loads((EXAMPLES_DIR / "invoice.created.v1.json").read_text(encoding="utf-8"))
NS = {
    "rsm": "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100",
    "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100",
}
SUMMATION = "//ram:SpecifiedTradeSettlementHeaderMonetarySummation"
LOGO_SIZE = (7, 5)  # an odd size, so the logo's image XObject is recognisable in the PDF
SELLER_TOML = """
[seller]
legal_name = "Carpați Energie S.R.L."
vat_id = "RO12345678"
street = "Bulevardul Unirii 10"
city = "București"
postcode = "030167"
country = "RO"
iban = "RO49AAAA1B31007593840000"
"""


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def pool() -> AsyncIterator[RenderPool]:
    render_pool = RenderPool(1)
    try:
        await render_pool.warm_up()
        yield render_pool
    finally:
        render_pool.close()


@dataclass(frozen=True)
class S3:
    store: DocumentStore
    client: Any  # a raw client, to look at what the store API does not expose (metadata, ETag)

    async def head(self, key: str) -> dict[str, Any]:
        response: dict[str, Any] = await self.client.head_object(Bucket=self.store.bucket, Key=key)
        return response

    async def keys(self, prefix: str) -> set[str]:
        """Every object under ``prefix``: what was stored, not only what the event names."""
        found: set[str] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.store.bucket, Prefix=prefix):
            found.update(item["Key"] for item in page.get("Contents", ()))
        return found


@pytest.fixture(scope="module")
async def s3(cfg: StackConfig) -> AsyncIterator[S3]:
    settings = s3_settings(cfg)
    async with AsyncExitStack() as stack:
        store = await DocumentStore.connect(settings, stack)
        await store.ensure_bucket()
        client = await stack.enter_async_context(s3_session(settings).client("s3", endpoint_url=settings.endpoint_url))
        yield S3(store, client)


@pytest.fixture
async def bus(cfg: StackConfig) -> AsyncIterator[Bus]:
    async with isolated(cfg, client_id="test-renderer") as topics:
        yield topics


@dataclass(frozen=True)
class Rig:
    """Everything a test needs: the handler's collaborators and a folder for its tenant configs."""

    bus: Bus
    s3: S3
    pool: RenderPool
    root: Path

    @property
    def tenants(self) -> TenantDirectory:
        return TenantDirectory(self.root)

    def tenant(self, toml: str, templates: dict[str, str] | None = None) -> str:
        """A new tenant folder (tenant.toml, logo.png, templates/); returns its id."""
        tenant_id = new_tenant()
        folder = self.root / tenant_id
        (folder / "templates").mkdir(parents=True)
        (folder / "tenant.toml").write_text(toml, encoding="utf-8")
        (folder / "logo.png").write_bytes(png(*LOGO_SIZE))
        for name, body in (templates or {}).items():
            (folder / "templates" / name).write_text(body, encoding="utf-8")
        return tenant_id

    async def upload(self, tenant_id: str, name: str, body: bytes) -> str:
        """An ERP-supplied file in the documents bucket, where the ERP would put it."""
        key = f"{tenant_id}/erp-inbox/{uuid.uuid4().hex[:8]}/{name}"
        await self.s3.store.put(key, body, content_type="application/octet-stream", sha256=sha(body), metadata={})
        return key

    async def handle(
        self, event: Envelope[InvoiceCreatedV1], limits: RenderLimits | None = None, store: DocumentStore | None = None
    ) -> None:
        handlers = RenderHandlers(
            self.bus.publisher, store or self.s3.store, self.tenants, self.pool, limits or RenderLimits()
        )
        await handlers.on_invoice_created(message(event))


@pytest.fixture
def rig(bus: Bus, s3: S3, pool: RenderPool, tmp_path: Path) -> Rig:
    root = tmp_path / "tenants"
    root.mkdir()
    return Rig(bus, s3, pool, root)


@dataclass
class Sink:
    """A local HTTP server that records every request: proof that nothing was fetched."""

    port: int
    hits: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def sink() -> Iterator[Sink]:
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Sink(server.server_address[1], hits)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- helpers -------------------------------------------------------------------------------------


def new_tenant() -> str:
    return f"it-{uuid.uuid4().hex[:10]}"


def invoice(**update: Any) -> InvoiceCreatedV1:
    """The example invoice (consistent Factur-X figures) with a fresh number."""
    data = EXAMPLE["data"] | {"invoice_number": f"IT-{uuid.uuid4().hex[:8].upper()}"}
    return InvoiceCreatedV1.model_validate(data | update)


def lines(count: int, description: str = "Item", price: str = "10.00") -> dict[str, Any]:
    """``count`` lines at 0 % VAT, with totals that add up."""
    amount = Decimal(price)
    return {
        "lines": [{"description": description, "quantity": "1", "unit_price": price, "tax_rate": "0", "amount": price}]
        * count,
        "subtotal": str(amount * count),
        "tax_total": "0.00",
        "total": str(amount * count),
    }


def created(tenant_id: str, data: InvoiceCreatedV1) -> Envelope[InvoiceCreatedV1]:
    return make_event(
        event_id=uuid.uuid4(),
        type="invoice.created",
        schema_version=1,
        data=data,
        tenant_id=tenant_id,
        invoice_id=data.invoice_number,
        correlation_id=str(uuid.uuid4()),
        causation_id=None,
        producer="ingest",
    )


def message(event: Envelope[InvoiceCreatedV1], offset: int = 7) -> Message[Envelope[InvoiceCreatedV1]]:
    raw = event.model_dump_json().encode()
    return Message(INVOICE_CREATED, 0, offset, event.partition_key, {}, raw, event)


def prefix_of(event: Envelope[InvoiceCreatedV1]) -> str:
    """Where every version and manifest of this event's invoice lives."""
    return invoice_prefix(event.tenant_id, event.data.issue_date, event.data.invoice_number)


def manifest_of(event: Envelope[InvoiceCreatedV1]) -> str:
    return manifest_key(event.tenant_id, event.data.issue_date, event.data.invoice_number, event.event_id)


def sibling(key: str, suffix: str) -> str:
    """Another file of the same version (``…/<version>/<invoice>.pdf`` → ``….xml``)."""
    return f"{key.rsplit('.', 1)[0]}.{suffix}"


def version_key_pattern(event: Envelope[InvoiceCreatedV1], suffix: str) -> str:
    number = re.escape(event.data.invoice_number)
    return rf"{re.escape(prefix_of(event))}[0-9a-f]{{16}}/{number}\.{suffix}"


async def rendered_of(rig: Rig, event: Envelope[InvoiceCreatedV1]) -> InvoiceRenderedV1:
    """The one ``invoice.rendered`` this test published (and no rejection), checked as a child of ``event``."""
    assert await rig.bus.events("invoice.rejected") == []
    [rendered] = await rig.bus.events("invoice.rendered")
    assert rendered.event_id == derived_event_id(event.event_id, "renderer", "invoice.rendered", "")
    assert rendered.causation_id == event.event_id
    assert (rendered.tenant_id, rendered.invoice_id) == (event.tenant_id, event.invoice_id)
    assert rendered.correlation_id == event.correlation_id
    assert rendered.producer == "renderer"
    data = rendered.data
    assert isinstance(data, InvoiceRenderedV1)
    assert data.invoice == summary_of(event.data)
    assert data.expires_on in {
        (utcnow() - timedelta(seconds=s)).date() + timedelta(days=data.retention_days) for s in (0, 60)
    }
    return data


async def rejected_of(rig: Rig, event: Envelope[InvoiceCreatedV1]) -> InvoiceRejectedV2:
    assert await rig.bus.events("invoice.rendered") == []
    [rejected] = await rig.bus.events("invoice.rejected")
    assert rejected.event_id == derived_event_id(event.event_id, "renderer", "invoice.rejected", "")
    assert rejected.causation_id == event.event_id
    data = rejected.data
    assert isinstance(data, InvoiceRejectedV2)
    assert data.stage == "render"
    assert (data.source_topic, data.source_offset) == ("invoice.created", "invoice.created/0/7")
    assert data.erp_reference == event.data.invoice_number
    return data


async def assert_nothing_stored(rig: Rig, event: Envelope[InvoiceCreatedV1]) -> None:
    assert await rig.s3.keys(prefix_of(event)) == set()


def png(width: int, height: int) -> bytes:
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    rows = b"".join(b"\x00" + b"\xb4\x53\x09" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def pdf_text(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def squeezed(text: str) -> str:
    """Without whitespace: table cells wrap long text, and the extractor breaks lines there; nor the
    zero-width spaces Typst's template puts inside a word too long for its cell (break points)."""
    return "".join(text.replace("\u200b", "").split())


def image_sizes(pdf: bytes) -> list[tuple[int, int]]:
    """(width, height) of every image XObject, including those inside form XObjects."""
    sizes: list[tuple[int, int]] = []

    def walk(resources: Any) -> None:
        xobjects = resources.get_object().get("/XObject") if resources is not None else None
        for ref in (xobjects.get_object() if xobjects is not None else {}).values():
            obj = ref.get_object()
            if obj.get("/Subtype") == "/Image":
                sizes.append((int(obj["/Width"]), int(obj["/Height"])))
            elif obj.get("/Subtype") == "/Form":
                walk(obj.get("/Resources"))

    for page in PdfReader(io.BytesIO(pdf)).pages:
        walk(page.get("/Resources"))
    return sizes


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


# -- rendered documents --------------------------------------------------------------------------


async def test_default_tenant_gets_a_pdf_with_hash_tag_and_retention_rule(rig: Rig) -> None:
    event = created(new_tenant(), invoice())
    await rig.handle(event)

    data = await rendered_of(rig, event)
    key = data.document.key
    assert key.startswith(f"{event.tenant_id}/2026/11/{event.data.invoice_number}/")
    assert re.fullmatch(version_key_pattern(event, "pdf"), key), key
    body = await rig.s3.store.get(key)
    assert body.startswith(b"%PDF-")
    assert event.data.invoice_number in pdf_text(body)
    assert data.document.model_dump() == {
        "bucket": rig.s3.store.bucket,
        "key": key,
        "sha256": sha(body),
        "size_bytes": len(body),
        "content_type": "application/pdf",
        "filename": f"{event.data.invoice_number}.pdf",
        "timestamp_key": None,  # the tenant does not sign
    }
    assert data.pdf_sha256 == data.document.sha256
    head = await rig.s3.head(key)
    assert head["ContentType"] == "application/pdf"
    assert head["Metadata"] == {
        "sha256": data.document.sha256,
        "tenant-id": event.tenant_id,
        "invoice-id": event.data.invoice_number,
        "source-event-id": str(event.event_id),
    }
    assert (data.source, data.packaging, data.einvoice) == ("rendered", "pdf", "none")
    assert (data.retention_days, data.tenant_config_version) == (3650, "default")
    assert await rig.s3.store.tags(key) == {"retention-days": "3650"}
    # the PDF and the manifest, nothing else (no XML without e-invoicing)
    assert await rig.s3.keys(prefix_of(event)) == {key, manifest_of(event)}

    # the manifest that makes redeliveries idempotent is the published event itself
    manifest = await rig.s3.store.get(manifest_of(event))
    assert parse_event(manifest).data == data
    assert await rig.s3.store.tags(manifest_of(event)) == {"retention-days": "3650"}

    await rig.s3.store.ensure_retention_rules({3650, 1825})
    rules = {rule["ID"]: rule for rule in await rig.s3.store.lifecycle_rules()}
    rule = rules["expire-after-3650-days"]
    assert rule["Status"] == "Enabled"
    assert rule["Expiration"] == {"Days": 3650}
    assert rule["Filter"] == {"Tag": {"Key": "retention-days", "Value": "3650"}}


@pytest.mark.parametrize("engine", ["weasyprint", "typst"])
async def test_factur_x_tenant_gets_a_zip_of_pdf_a3_and_its_xml(rig: Rig, engine: str) -> None:
    toml = f'engine = "{engine}"\neinvoice = "factur-x-en16931"\npackaging = "zip"\nretention_days = 1825\n'
    toml += '[branding]\nlogo = "logo.png"\nprimary_color = "#15803d"\nlegal_footer = "CUI RO12345678"\n'
    tenant = rig.tenant(toml + SELLER_TOML)
    event = created(tenant, invoice())
    number = event.data.invoice_number
    await rig.handle(event)

    data = await rendered_of(rig, event)
    assert (data.source, data.packaging, data.einvoice) == ("rendered", "zip", "factur-x-en16931")
    assert data.retention_days == 1825
    assert data.tenant_config_version == rig.tenants.get(tenant).version != "default"
    assert re.fullmatch(version_key_pattern(event, "zip"), data.document.key), data.document.key
    assert data.document.content_type == "application/zip"
    assert data.document.filename == f"{number}.zip"
    package = await rig.s3.store.get(data.document.key)
    assert data.document.sha256 == sha(package) == (await rig.s3.head(data.document.key))["Metadata"]["sha256"]
    assert await rig.s3.store.tags(data.document.key) == {"retention-days": "1825"}

    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        assert archive.namelist() == [f"{number}.pdf", f"{number}.xml"]
        assert {info.date_time for info in archive.infolist()} == {(2026, 11, 2, 0, 0, 0)}
        pdf, xml = archive.read(f"{number}.pdf"), archive.read(f"{number}.xml")
    assert data.pdf_sha256 == sha(pdf)
    assert await rig.s3.store.get(sibling(data.document.key, "pdf")) == pdf
    assert await rig.s3.store.get(sibling(data.document.key, "xml")) == xml
    assert await rig.s3.keys(prefix_of(event)) == {
        data.document.key,
        sibling(data.document.key, "pdf"),
        sibling(data.document.key, "xml"),
        manifest_of(event),
    }
    assert extract_xml(pdf) == xml
    validate_xml(xml)
    assert LOGO_SIZE in image_sizes(pdf)

    root = etree.fromstring(xml)
    assert root.xpath("string(//rsm:ExchangedDocument/ram:ID)", namespaces=NS) == number
    names = ("LineTotalAmount", "TaxBasisTotalAmount", "TaxTotalAmount", "GrandTotalAmount", "DuePayableAmount")
    totals = {name: Decimal(root.xpath(f"string({SUMMATION}/ram:{name})", namespaces=NS)) for name in names}
    inv = event.data
    assert totals == {
        "LineTotalAmount": inv.subtotal,
        "TaxBasisTotalAmount": inv.subtotal,
        "TaxTotalAmount": inv.tax_total,
        "GrandTotalAmount": inv.total,
        "DuePayableAmount": inv.total,
    }


async def test_tenant_template_override_and_logo_and_no_fetch_from_the_template(rig: Rig, sink: Sink) -> None:
    """The tenant's own template is used; its logo is embedded; the fetcher still refuses the rest."""
    template = f"""<!DOCTYPE html><html><head><meta charset="utf-8">
<link rel="stylesheet" href="{sink.url("/template.css")}"></head><body>
{{% if logo %}}<img src="tenant-asset:{{{{ logo }}}}" style="width: 20mm">{{% endif %}}
<img src="{sink.url("/template.png")}"><img src="file:///etc/passwd"><img src="tenant-asset:tenant.toml">
<img src="factura-asset:../../../../etc/hostname">
<h1>TENANT-OVERRIDE-MARKER {{{{ invoice.invoice_number }}}}</h1>
<p>{{{{ total }}}}</p></body></html>
"""
    tenant = rig.tenant('[branding]\nlogo = "logo.png"\n', {"invoice.html.j2": template})
    event = created(tenant, invoice())
    await rig.handle(event)

    data = await rendered_of(rig, event)
    pdf = await rig.s3.store.get(data.document.key)
    text = squeezed(pdf_text(pdf))
    assert f"TENANT-OVERRIDE-MARKER{event.data.invoice_number}" in text
    assert "286,55" in text
    assert "PasteleríaLucía" not in text  # the default template was not used
    assert image_sizes(pdf) == [LOGO_SIZE]  # the logo, and nothing else got in
    assert sink.hits == []


HOSTILE = [
    "<script>alert('x')</script>",
    "{{ 7*7 }}",
    "{% for x in range(10**9) %}",
    '<img src="file:///etc/passwd">',
    '<link href="http://169.254.169.254/latest/meta-data">',
]


@pytest.mark.parametrize("engine", ["weasyprint", "typst"])
async def test_hostile_text_is_printed_literally_and_fetches_nothing(rig: Rig, sink: Sink, engine: str) -> None:
    descriptions = [
        *HOSTILE,
        f'<img src="{sink.url("/x.png")}">',
        f'<link rel="stylesheet" href="{sink.url("/y.css")}">',
    ]
    number = "H-" + "".join(c for c in uuid.uuid4().hex if c not in "49")[:10].upper()  # no stray "49"
    base = invoice(invoice_number=number, **lines(len(descriptions), price="10.00"))
    customer = base.customer.model_copy(update={"name": "{{ 7*7 }} <script>x</script>", "locale": "en"})
    data_lines = [line.model_copy(update={"description": d}) for line, d in zip(base.lines, descriptions, strict=True)]
    tenant = rig.tenant(f'engine = "{engine}"\n')
    event = created(tenant, base.model_copy(update={"customer": customer, "lines": data_lines}))
    await rig.handle(event)

    data = await rendered_of(rig, event)
    text = squeezed(pdf_text(await rig.s3.store.get(data.document.key)))
    rest = text
    for literal in [*descriptions, customer.name]:
        assert squeezed(literal) in text, literal
        rest = rest.replace(squeezed(literal), "")
    assert "49" not in rest  # "{{ 7*7 }}" printed, never evaluated (the sink's port may hold a "49")
    assert sink.hits == []


# -- limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "update", "reason"),
    [
        (RenderLimits(max_lines=5), lines(6), FieldError(field="lines", message="6 lines; the limit is 5")),
        (RenderLimits(max_pages=1), lines(80), FieldError(field="lines", message="pages; the limit is 1")),
        (
            RenderLimits(max_text_bytes=1024),
            lines(1, description="€" * 1000),
            FieldError(field="lines.0.description", message="the limit is 1024"),
        ),
    ],
    ids=["max_lines", "max_pages", "max_text_bytes"],
)
@pytest.mark.parametrize("engine", ["weasyprint", "typst"])
async def test_over_the_limits_is_rejected_and_nothing_is_stored(
    rig: Rig, limits: RenderLimits, update: dict[str, Any], reason: FieldError, engine: str
) -> None:
    event = created(rig.tenant(f'engine = "{engine}"\n'), invoice(**update))
    await rig.handle(event, limits)

    rejected = await rejected_of(rig, event)
    [error] = rejected.reasons
    assert error.field == reason.field
    assert reason.message in error.message
    await assert_nothing_stored(rig, event)


# -- ERP-supplied documents ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def supplied_pdf() -> bytes:
    return render_pdf(invoice(seller_name="ERP-SUPPLIED-DOCUMENT"))


async def test_supplied_documents_are_verified_and_packaged_never_rendered(rig: Rig, supplied_pdf: bytes) -> None:
    tenant = rig.tenant('packaging = "zip"\nretention_days = 1825\n')
    xml = b'<?xml version="1.0" encoding="UTF-8"?><Invoice><ID>F-1</ID></Invoice>'
    annex = b"date,kg\n2026-11-02,300\n"
    supplied = SuppliedDocument(
        key=await rig.upload(tenant, "factura.pdf", supplied_pdf),
        xml_key=await rig.upload(tenant, "factura.xml", xml),
        annex_keys=[await rig.upload(tenant, "albaran.csv", annex)],
    )
    event = created(tenant, invoice(supplied_document=supplied.model_dump()))
    number = event.data.invoice_number
    await rig.handle(event)

    data = await rendered_of(rig, event)
    assert (data.source, data.packaging, data.einvoice) == ("erp_supplied", "zip", "erp_supplied")
    pdf_key = sibling(data.document.key, "pdf")
    stored = await rig.s3.store.get(pdf_key)
    assert stored == supplied_pdf  # as supplied, byte for byte: not re-rendered
    assert data.pdf_sha256 == sha(supplied_pdf) == (await rig.s3.head(pdf_key))["Metadata"]["sha256"]
    assert "ERP-SUPPLIED-DOCUMENT" in pdf_text(stored)
    package = await rig.s3.store.get(data.document.key)
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        assert archive.namelist() == [f"{number}.pdf", f"{number}.xml", "albaran.csv"]
        assert archive.read(f"{number}.pdf") == supplied_pdf
        assert archive.read(f"{number}.xml") == xml
        assert archive.read("albaran.csv") == annex
    assert await rig.s3.store.tags(data.document.key) == {"retention-days": "1825"}


MISSING = b""  # stands for "no such key in the bucket"
CORRUPT: dict[str, tuple[str, bytes | None, FieldError]] = {
    "not_a_pdf": ("pdf", b"hello", FieldError(field="supplied_document.key", message="not a PDF")),
    "truncated_pdf": ("pdf", None, FieldError(field="supplied_document.key", message="corrupt PDF")),
    "missing_pdf": ("pdf", MISSING, FieldError(field="supplied_document.key", message="not found")),
    "xml_not_well_formed": (
        "xml",
        b"<Invoice><ID>F-1</Invoice>",
        FieldError(field="supplied_document.xml_key", message="not well-formed"),
    ),
    "missing_annex": ("annex", MISSING, FieldError(field="supplied_document.annex_keys.0", message="not found")),
}


@pytest.mark.parametrize("case", list(CORRUPT))
async def test_corrupt_supplied_documents_are_rejected_naming_the_field(
    rig: Rig, supplied_pdf: bytes, case: str
) -> None:
    which, body, reason = CORRUPT[case]
    tenant = new_tenant()
    files = {"pdf": supplied_pdf, "xml": b"<Invoice/>", "annex": b"annex"}
    files[which] = supplied_pdf[:300] if body is None else body  # truncated: the header, then nothing
    keys: dict[str, str] = {}
    for name, value in files.items():
        keys[name] = f"{tenant}/erp-inbox/nowhere-{name}" if value == MISSING else await rig.upload(tenant, name, value)
    supplied = SuppliedDocument(key=keys["pdf"], xml_key=keys["xml"], annex_keys=[keys["annex"]])
    event = created(tenant, invoice(supplied_document=supplied.model_dump()))
    await rig.handle(event)

    rejected = await rejected_of(rig, event)
    [error] = rejected.reasons
    assert error.field == reason.field
    assert reason.message in error.message
    await assert_nothing_stored(rig, event)


async def test_supplied_pdf_with_a_broken_object_stream_is_rejected(rig: Rig, supplied_pdf: bytes) -> None:
    # same length, so every offset stays valid: only the object stream's filter name is wrong
    broken, found = re.subn(rb"(/Type /ObjStm[^>]*/Filter /)FlateDecode", rb"\1FlateDecodX", supplied_pdf, count=1)
    assert found == 1
    tenant = new_tenant()
    supplied = SuppliedDocument(key=await rig.upload(tenant, "f.pdf", broken))
    event = created(tenant, invoice(supplied_document=supplied.model_dump()))
    await rig.handle(event)

    [error] = (await rejected_of(rig, event)).reasons
    assert (error.field, error.message.startswith("corrupt PDF")) == ("supplied_document.key", True)
    await assert_nothing_stored(rig, event)


async def test_supplied_xml_with_external_entities_is_refused_unresolved(
    rig: Rig, supplied_pdf: bytes, sink: Sink
) -> None:
    """A DOCTYPE (entities, DTD) is refused, and parsing it fetched nothing."""
    xml = (
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">'
        f'<!ENTITY h SYSTEM "{sink.url("/entity")}"><!ENTITY % p SYSTEM "{sink.url("/dtd")}"> %p;]>'
        "<x>&e;&h;</x>"
    ).encode()
    tenant = new_tenant()
    supplied = SuppliedDocument(
        key=await rig.upload(tenant, "f.pdf", supplied_pdf), xml_key=await rig.upload(tenant, "f.xml", xml)
    )
    event = created(tenant, invoice(supplied_document=supplied.model_dump()))
    await rig.handle(event)

    [error] = (await rejected_of(rig, event)).reasons
    assert (error.field, "DOCTYPE" in error.message) == ("supplied_document.xml_key", True)
    await assert_nothing_stored(rig, event)
    assert sink.hits == []  # neither the general nor the parameter entity was fetched


# -- redelivery ----------------------------------------------------------------------------------


async def test_redelivery_republishes_the_recorded_event_without_rendering_again(rig: Rig) -> None:
    event = created(new_tenant(), invoice())
    await rig.handle(event)
    key = (await rendered_of(rig, event)).document.key
    first = await rig.s3.head(key)
    manifest = await rig.s3.store.get(manifest_of(event))
    stored = await rig.s3.keys(prefix_of(event))

    await rig.handle(event)

    raws = await rig.bus.raw("invoice.rendered")
    assert len(raws) == 2
    assert raws[0] == raws[1]  # the very same event, occurred_at and expires_on included
    one, two = (parse_event(raw) for raw in raws)
    assert one.event_id == two.event_id
    assert one.data == two.data
    second = await rig.s3.head(key)
    assert second["Metadata"]["sha256"] == first["Metadata"]["sha256"] == one.data.pdf_sha256
    assert (second["ETag"], second["LastModified"]) == (first["ETag"], first["LastModified"])
    assert await rig.s3.store.get(manifest_of(event)) == manifest
    assert await rig.s3.keys(prefix_of(event)) == stored  # no second version
    assert await rig.bus.events("invoice.rejected") == []


async def test_supplied_keys_of_another_tenant_are_refused(rig: Rig, supplied_pdf: bytes) -> None:
    victim = new_tenant()
    their_key = await rig.upload(victim, "f.pdf", supplied_pdf)
    attacker = new_tenant()
    supplied = SuppliedDocument(key=their_key, annex_keys=[f"{attacker}/../{victim}/x.pdf"])
    event = created(attacker, invoice(supplied_document=supplied.model_dump()))
    await rig.handle(event)
    reasons = (await rejected_of(rig, event)).reasons
    assert [r.field for r in reasons] == ["supplied_document.key", "supplied_document.annex_keys.0"]
    await assert_nothing_stored(rig, event)


async def test_two_consumers_of_one_event_announce_one_document(rig: Rig) -> None:
    """A zombie and the new partition owner handle the same event at once: one manifest wins."""
    event = created(new_tenant(), invoice())
    await asyncio.gather(rig.handle(event), rig.handle(event))

    raws = await rig.bus.raw("invoice.rendered")
    assert len(raws) == 2
    one, two = (parse_event(raw) for raw in raws)
    assert one.event_id == two.event_id
    assert one.data == two.data  # both name the document the recorded manifest names
    assert parse_event(await rig.s3.store.get(manifest_of(event))).data == one.data
    assert sha(await rig.s3.store.get(one.data.document.key)) == one.data.document.sha256


# -- immutable documents -------------------------------------------------------------------------

SIGNER = LinkSigner(
    b"renderer-integration-secret-0123456789",
    "https://links.factura.test",
    ttl_s=3600,
    pseudonym_secret=b"renderer-integration-pseudonym-0123456789",
)


async def download(rig: Rig, cfg: StackConfig, link: str) -> httpx.Response:
    """GET a signed link through the renderer's own download endpoint (HTTP in-process, S3 and MongoDB real)."""
    mongo = create_client(mongo_settings(cfg))
    try:
        hits = mongo[mongo_settings(cfg).database][f"link_hits_{uuid.uuid4().hex[:8]}"]
        tracking = TrackingSettings()
        tracker = Tracker(HitGuard(hits, tracking), SIGNER.pseudonym, tracking, minimal_user_agent=False)
        app = FastAPI()
        app.include_router(
            download_router(
                SIGNER,
                rig.s3.store,
                rig.bus.publisher,
                tracker=tracker,
                pages=LinkPages(),
                tenants=TenantDirectory(None),
            )
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://links.factura.test") as client:
            return await client.get(
                link.removeprefix("https://links.factura.test"), headers={"Accept": "application/json"}
            )
    finally:
        await mongo.close()


async def test_a_corrected_invoice_is_a_new_version_and_the_first_link_keeps_its_bytes(
    rig: Rig, cfg: StackConfig
) -> None:
    tenant = new_tenant()
    original = created(tenant, invoice())
    await rig.handle(original)
    [first] = [e.data for e in await rig.bus.events("invoice.rendered")]
    assert isinstance(first, InvoiceRenderedV1)
    first_bytes = await rig.s3.store.get(first.document.key)
    link = SIGNER.sign_document(
        first.document, tenant_id=tenant, invoice_id=original.data.invoice_number, channel="sms"
    )

    # the ERP re-sends the same invoice number with other content: a new invoice.created
    corrected = created(tenant, InvoiceCreatedV1.model_validate(original.data.model_dump(mode="json") | lines(3)))
    assert corrected.data.invoice_number == original.data.invoice_number
    assert corrected.event_id != original.event_id
    await rig.handle(corrected)

    first_again, second = [e.data for e in await rig.bus.events("invoice.rendered")]
    assert first_again == first
    assert isinstance(second, InvoiceRenderedV1)
    assert second.document.key != first.document.key
    assert second.document.sha256 != first.document.sha256
    assert second.document.filename == first.document.filename  # the customer sees the same name
    second_bytes = await rig.s3.store.get(second.document.key)
    assert (sha(first_bytes), sha(second_bytes)) == (first.document.sha256, second.document.sha256)
    assert await rig.s3.store.get(first.document.key) == first_bytes  # not overwritten
    assert await rig.s3.store.tags(first.document.key) == await rig.s3.store.tags(second.document.key)
    assert await rig.s3.keys(prefix_of(original)) == {
        first.document.key,
        second.document.key,
        manifest_of(original),
        manifest_of(corrected),
    }

    served = await download(rig, cfg, link)
    assert served.status_code == 200
    assert served.content == first_bytes
    served_second = await download(
        rig,
        cfg,
        SIGNER.sign_document(
            second.document, tenant_id=tenant, invoice_id=corrected.data.invoice_number, channel="sms"
        ),
    )
    assert served_second.status_code == 200
    assert served_second.content == second_bytes


class PdfUploadFails(DocumentStore):
    """The real store, except that PDF uploads fail while ``failing``.

    The failing upload first waits for every other upload in flight to finish, so a manifest
    written alongside the documents (the old behaviour) would be in S3 by the time it fails.
    """

    def __init__(self, client: Any, bucket: str) -> None:
        super().__init__(client, bucket)
        self.failing = True
        self._in_flight: set[asyncio.Future[None]] = set()

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
        if self.failing and key.endswith(".pdf"):
            await asyncio.sleep(0)  # a yield, not a wait: sibling uploads started in this batch register first
            await asyncio.gather(*self._in_flight, return_exceptions=True)
            raise DependencyDown("s3", "PDF upload refused (test)")
        upload = asyncio.ensure_future(
            super().put(
                key,
                body,
                content_type=content_type,
                sha256=sha256,
                metadata=metadata,
                retention_days=retention_days,
                replace=replace,
            )
        )
        self._in_flight.add(upload)
        try:
            await upload
        finally:
            self._in_flight.discard(upload)


async def test_manifest_is_written_only_after_every_document_is_stored(rig: Rig) -> None:
    tenant = rig.tenant('packaging = "zip"\n')
    event = created(tenant, invoice())
    flaky = PdfUploadFails(rig.s3.client, rig.s3.store.bucket)

    with pytest.raises(DependencyDown) as failed:
        await rig.handle(event, store=flaky)
    assert failed.value.dependency == "s3"
    assert await rig.s3.store.get_if_exists(manifest_of(event)) is None
    assert await rig.bus.raw("invoice.rendered") == []

    flaky.failing = False  # S3 is back: the consumer loop's retry
    await rig.handle(event, store=flaky)
    data = await rendered_of(rig, event)
    for key in (data.document.key, sibling(data.document.key, "pdf")):
        body = await rig.s3.store.get(key)
        assert sha(body) == (await rig.s3.head(key))["Metadata"]["sha256"]
    assert sha(await rig.s3.store.get(data.document.key)) == data.document.sha256
    assert sha(await rig.s3.store.get(sibling(data.document.key, "pdf"))) == data.pdf_sha256
    assert parse_event(await rig.s3.store.get(manifest_of(event))).data == data
