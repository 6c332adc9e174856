"""The Typst engine: Factur-X PDF/A-3b + PDF/UA-1, ERP text as data only, no network, tenant files only."""

from __future__ import annotations

import io
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import facturx
import pikepdf
import pytest
from lxml import etree
from pypdf import PdfReader

from factura.common.events import InvoiceCreatedV1, Line, parse_event
from factura.common.schemas import EXAMPLES_DIR
from factura.common.tenants import TenantConfig
from factura.renderer.document import context
from factura.renderer.einvoice import build_cii_xml
from factura.renderer.typst_engine import TypstTemplateError, render_typst, view_model
from tests.unit.test_einvoice import SELLER

FACTURX = TenantConfig(tenant_id="harinas-sur", einvoice="factur-x-en16931", seller=SELLER, engine="typst")
PLAIN = TenantConfig(tenant_id="acme", engine="typst")
NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "pdfaid": "http://www.aiim.org/pdfa/ns/id/",
    "pdfuaid": "http://www.aiim.org/pdfua/ns/id/",
    "pdfaSchema": "http://www.aiim.org/pdfa/ns/schema#",
    "fx": "urn:factur-x:pdfa:CrossIndustryDocument:invoice:1p0#",
}


def invoice(**update: Any) -> InvoiceCreatedV1:
    data = parse_event((EXAMPLES_DIR / "invoice.created.v1.json").read_bytes()).data
    assert isinstance(data, InvoiceCreatedV1)
    return data.model_copy(update=update)


def customer(**update: Any) -> InvoiceCreatedV1:
    base = invoice()
    return base.model_copy(update={"customer": base.customer.model_copy(update=update)})


def text(pdf: bytes) -> str:
    return " ".join(" ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages).split())


def xmp(pdf: bytes) -> etree._Element:
    with pikepdf.open(io.BytesIO(pdf)) as document:
        return etree.fromstring(bytes(document.Root.Metadata.read_bytes()))


def one(tree: etree._Element, path: str) -> str:
    found = tree.xpath(path, namespaces=NS)
    assert isinstance(found, list) and len(found) == 1, f"{path}: {found}"
    return str(found[0])


@pytest.fixture(scope="module")
def facturx_pdf() -> tuple[bytes, bytes, int]:
    xml = build_cii_xml(invoice(), SELLER)
    pdf, pages = render_typst(invoice(), FACTURX, xml)
    return pdf, xml, pages


def test_einvoice_is_read_by_factur_x_as_en16931(facturx_pdf: tuple[bytes, bytes, int]) -> None:
    pdf, xml, pages = facturx_pdf
    name, embedded = facturx.get_facturx_xml_from_pdf(pdf, check_xsd=True)
    assert (name, embedded, pages) == ("factur-x.xml", xml, 1)
    tree = etree.fromstring(embedded)
    assert (facturx.get_flavor(tree), facturx.get_level(tree)) == ("factur-x", "en16931")


def test_einvoice_is_pdfa3b_and_pdfua1_with_the_alternative_attachment(facturx_pdf: tuple[bytes, bytes, int]) -> None:
    pdf = facturx_pdf[0]
    with pikepdf.open(io.BytesIO(pdf), attempt_recovery=False) as document:
        assert document.check_pdf_syntax() == []  # the incremental XMP update is well formed
        root = document.Root
        spec = root.AF[0]
        assert (str(spec.F), str(spec.UF), str(spec.AFRelationship)) == ("factur-x.xml", "factur-x.xml", "/Alternative")
        assert str(root.Names.EmbeddedFiles.Names[0]) == "factur-x.xml"
        assert bool(root.MarkInfo.Marked) and "/StructTreeRoot" in root  # tagged
        assert any(intent.S == "/GTS_PDFA1" for intent in root.OutputIntents)
    tree = xmp(pdf)
    assert one(tree, "//pdfaid:part/text()") == "3" and one(tree, "//pdfaid:conformance/text()") == "B"
    assert one(tree, "//pdfuaid:part/text()") == "1"
    assert one(tree, "//rdf:li[pdfaSchema:prefix = 'fx']/pdfaSchema:namespaceURI/text()") == NS["fx"]
    fx = {name: one(tree, f"//fx:{name}/text()") for name in ("DocumentType", "DocumentFileName", "ConformanceLevel")}
    assert fx == {"DocumentType": "INVOICE", "DocumentFileName": "factur-x.xml", "ConformanceLevel": "EN 16931"}
    assert one(tree, "//*[local-name() = 'title']//rdf:li/text()") == "Factura F-2026-000123"


def test_a_plain_document_is_tagged_pdfua_without_attachment() -> None:
    pdf, pages = render_typst(invoice(), PLAIN, None)
    with pikepdf.open(io.BytesIO(pdf)) as document:
        assert "/AF" not in document.Root and "/Names" not in document.Root
        assert bool(document.Root.MarkInfo.Marked) and "/StructTreeRoot" in document.Root
        assert str(document.Root.Lang) == "es"
    tree = xmp(pdf)
    assert one(tree, "//pdfuaid:part/text()") == "1" and not tree.xpath("//pdfaid:part", namespaces=NS)
    assert pages == 1 and "Factura F-2026-000123" in text(pdf) and "286,55 €" in text(pdf)


def test_typst_syntax_in_erp_text_prints_literally() -> None:
    name = '#panic("x") *bold* _em_ $x^2$ <label> @ref [a] \\ `raw` #read("/etc/passwd")'
    line = invoice().lines[0].model_copy(update={"description": '#image("/etc/passwd") = Heading'})
    pdf, _ = render_typst(customer(name=name).model_copy(update={"lines": [line]}), PLAIN, None)
    assert name in text(pdf) and '#image("/etc/passwd") = Heading' in text(pdf)


@pytest.mark.parametrize(
    ("locale", "country", "expected"),
    [
        ("ro", "RO", ["Factură F-2026-000123", "Plătește", "Preț unitar", "Pastelería Lucía"]),
        ("pt", "BR", ["Fatura F-2026-000123", "Descrição", "CNPJ/CPF"]),
        ("pt", "PT", ["Fatura F-2026-000123", "Preço unitário", "NIF"]),
        ("en", "ES", ["Invoice F-2026-000123", "Unit price", "Bill to"]),
    ],
)
def test_labels_and_non_ascii_text_of_each_locale(locale: str, country: str, expected: list[str]) -> None:
    tenant = PLAIN.model_copy(update={"payment_url_template": "https://pay.example.com/{invoice_number}"})
    pdf, _ = render_typst(customer(locale=locale, country=country), tenant, None)
    found = text(pdf)
    assert all(item in found for item in expected), found


def test_page_count_is_returned_for_the_caller_to_check() -> None:
    line = Line(
        description="Harina", quantity=Decimal(1), unit_price=Decimal(10), tax_rate=Decimal(10), amount=Decimal(10)
    )
    long = invoice(lines=[line] * 90, subtotal=Decimal(900), tax_total=Decimal(90), total=Decimal(990))
    assert render_typst(long, PLAIN, None)[1] == 3


def test_the_view_model_is_the_html_templates_context() -> None:
    parsed = json.loads(view_model(invoice(fiscal_qr="https://example.test/qr?x=1"), PLAIN))
    expected = context(invoice(fiscal_qr="https://example.test/qr?x=1"), PLAIN)
    assert parsed.keys() == expected.keys()
    assert parsed["total"] == "286,55\u00a0€" and parsed["invoice"]["invoice_number"] == "F-2026-000123"
    assert parsed["qr"].startswith("<svg") and parsed["qr"] == str(expected["qr"])


def tenant_with(tmp_path: Path, template: str, **files: str) -> TenantConfig:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "invoice.typ").write_text(template, encoding="utf-8")
    for name, body in files.items():
        (tmp_path / name).write_text(body, encoding="utf-8")
    return TenantConfig(tenant_id="custom", directory=tmp_path, version=str(tmp_path), engine="typst")


def test_a_tenant_template_wins_and_sees_only_its_allow_listed_assets(tmp_path: Path) -> None:
    probe = """#let d = json(bytes(sys.inputs.data))
Custom #d.invoice.invoice_number, logo #read("/logo.svg").len() bytes"""
    tenant = tenant_with(tmp_path, probe, **{"logo.svg": "<svg/>", "tenant.toml": "x=1", "key.p12": "secret"})
    assert "Custom F-2026-000123, logo 6 bytes" in text(render_typst(invoice(), tenant, None)[0])
    for path in ("/tenant.toml", "/key.p12", "../tenant.toml", "/etc/passwd"):
        (tmp_path / "templates" / "invoice.typ").write_text(f'#read("{path}")', encoding="utf-8")
        changed = tenant.model_copy(update={"version": f"{tmp_path}{path}"})
        with pytest.raises(TypstTemplateError, match=r"file not found|escape the project root"):
            render_typst(invoice(), changed, None)


def test_importing_a_package_fails_without_reaching_the_network(tmp_path: Path) -> None:
    tenant = tenant_with(tmp_path, '#import "@preview/tablex:0.0.8": tablex\nx')
    os.environ["NO_PROXY"] = "*"  # would let Typst bypass the proxy: the engine removes it for the compile
    try:
        before = dict(os.environ)
        with pytest.raises(TypstTemplateError, match="Connection refused"):  # the closed loopback proxy
            render_typst(invoice(), tenant, None)
        assert dict(os.environ) == before  # restored after the compile
    finally:
        del os.environ["NO_PROXY"]
    local = tenant.model_copy(update={"version": "local"})
    (tmp_path / "templates" / "invoice.typ").write_text('#import "@local/x:0.1.0"', encoding="utf-8")
    with pytest.raises(TypstTemplateError, match="package not found"):
        render_typst(invoice(), local, None)
