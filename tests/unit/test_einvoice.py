"""The Factur-X EN16931 e-invoice: valid XML, the invoice's own figures, and a PDF that carries it.

Everything runs offline: XSD validation uses the schemas shipped with drafthorse and factur-x.
The EN 16931 business rules (schematron, run with Saxon) are in
tests/integration/test_einvoice_conformance.py; here the figures are asserted on the XML directly.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import facturx
import pytest
from drafthorse.utils import validate_xml as drafthorse_validated
from lxml import etree
from pypdf import PdfReader
from pypdf.generic import ArrayObject, DictionaryObject, PdfObject, StreamObject
from weasyprint import HTML

from factura.common.events import InvoiceCreatedV1, Line
from factura.common.schemas import EXAMPLES_DIR
from factura.common.tenants import Seller
from factura.renderer import einvoice
from factura.renderer.einvoice import (
    AF_RELATIONSHIP,
    FACTURX_FILENAME,
    EInvoiceError,
    build_cii_xml,
    extract_xml,
    facturx_info,
    facturx_xmp,
    validate_xml,
    write_facturx,
)

NS = {
    "rsm": "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100",
    "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100",
    "udt": "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100",
}
XMP_PDFAID = "http://www.aiim.org/pdfa/ns/id/"
XMP_FX = "urn:factur-x:pdfa:CrossIndustryDocument:invoice:1p0#"
XMP_DC = "http://purl.org/dc/elements/1.1/"
XMP_PDF = "http://ns.adobe.com/pdf/1.3/"
SUMMATION = "//ram:SpecifiedTradeSettlementHeaderMonetarySummation"
SELLER = Seller(
    legal_name="Harinas del Sur S.A.",
    vat_id="ESA41234567",
    street="Calle de la Harina 12",
    city="Sevilla",
    postcode="41001",
    country="ES",
    email="facturacion@harinas-sur.example",
    iban="ES9121000418450200051332",
)


def invoice(**update: Any) -> InvoiceCreatedV1:
    """The example invoice; ``customer.country`` is added in case the example predates it."""
    data = json.loads((EXAMPLES_DIR / "invoice.created.v1.json").read_text(encoding="utf-8"))["data"]
    data["customer"].setdefault("country", "ES")
    return InvoiceCreatedV1.model_validate(data | update)


def with_lines(*lines: Line, tax_total: Decimal | None = None) -> InvoiceCreatedV1:
    """An invoice of these lines with totals computed as our ingest does (tax per line, half-up)."""
    subtotal = sum((line.amount for line in lines), Decimal(0))
    tax = tax_total
    if tax is None:
        tax = sum(
            ((line.amount * line.tax_rate / 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP) for line in lines),
            Decimal(0),
        )
    return invoice(lines=[line.model_dump() for line in lines], subtotal=subtotal, tax_total=tax, total=subtotal + tax)


def line(quantity: str, unit_price: str, rate: str, amount: str, description: str = "Item") -> Line:
    return Line(
        description=description,
        quantity=Decimal(quantity),
        unit_price=Decimal(unit_price),
        tax_rate=Decimal(rate),
        amount=Decimal(amount),
    )


def parse(xml: bytes) -> etree._Element:
    return etree.fromstring(xml)


def text(root: etree._Element, path: str) -> str:
    found = root.xpath(path, namespaces=NS)
    assert isinstance(found, list) and len(found) == 1, f"{path}: {found}"
    node = found[0]
    assert isinstance(node, etree._Element) and node.text is not None
    return str(node.text)


def texts(root: etree._Element, path: str) -> list[str]:
    found = root.xpath(path, namespaces=NS)
    assert isinstance(found, list)
    return [str(node.text) for node in found if isinstance(node, etree._Element)]


PAGE = "<html lang='es'><title>Factura</title><body><h1>Factura F-2026-000123</h1><p>Total 286,55 €</p></body></html>"


@pytest.fixture(scope="module")
def pdf_a3() -> bytes:
    pdf: bytes = HTML(string=PAGE).write_pdf(pdf_variant="pdf/a-3b")
    return pdf


def test_example_invoice_builds_valid_xml() -> None:
    xml = build_cii_xml(invoice(), SELLER)
    validate_xml(xml)
    root = parse(xml)
    assert text(root, "//rsm:ExchangedDocument/ram:ID") == "F-2026-000123"
    assert text(root, "//rsm:ExchangedDocument/ram:TypeCode") == "380"
    assert text(root, "//rsm:ExchangedDocument/ram:IssueDateTime/udt:DateTimeString") == "20261102"
    assert text(root, "//ram:GuidelineSpecifiedDocumentContextParameter/ram:ID") == "urn:cen.eu:en16931:2017"
    assert text(root, "//ram:SellerTradeParty/ram:SpecifiedTaxRegistration/ram:ID[@schemeID='VA']") == "ESA41234567"
    assert text(root, "//ram:SellerTradeParty/ram:PostalTradeAddress/ram:CountryID") == "ES"
    assert text(root, "//ram:BuyerTradeParty/ram:Name") == "Pastelería Lucía S.L."
    assert text(root, "//ram:BuyerTradeParty/ram:PostalTradeAddress/ram:CountryID") == "ES"
    # "B12345678" has no country prefix, so it is a legal id (BT-47), not a VAT id (BT-48).
    assert text(root, "//ram:BuyerTradeParty/ram:SpecifiedLegalOrganization/ram:ID") == "B12345678"
    assert text(root, "//ram:SpecifiedTradeSettlementPaymentMeans/ram:TypeCode") == "58"
    assert text(root, "//ram:PayeePartyCreditorFinancialAccount/ram:IBANID") == SELLER.iban
    assert text(root, "//ram:SpecifiedTradePaymentTerms/ram:DueDateDateTime/udt:DateTimeString") == "20261202"
    assert root.xpath("//ram:BilledQuantity/@unitCode", namespaces=NS) == ["C62", "C62"]


def test_totals_are_the_invoice_figures() -> None:
    inv = invoice()
    root = parse(build_cii_xml(inv, SELLER))
    assert Decimal(text(root, f"{SUMMATION}/ram:LineTotalAmount")) == inv.subtotal
    assert Decimal(text(root, f"{SUMMATION}/ram:TaxBasisTotalAmount")) == inv.subtotal
    assert Decimal(text(root, f"{SUMMATION}/ram:TaxTotalAmount[@currencyID='EUR']")) == inv.tax_total
    assert Decimal(text(root, f"{SUMMATION}/ram:GrandTotalAmount")) == inv.total
    assert Decimal(text(root, f"{SUMMATION}/ram:DuePayableAmount")) == inv.total
    breakdown = "//ram:ApplicableHeaderTradeSettlement/ram:ApplicableTradeTax"
    assert sum(map(Decimal, texts(root, f"{breakdown}/ram:CalculatedAmount"))) == inv.tax_total
    assert sum(map(Decimal, texts(root, f"{breakdown}/ram:BasisAmount"))) == inv.subtotal


def test_pdf_carries_the_xml() -> None:
    """One WeasyPrint pass makes a Factur-X EN16931 PDF/A-3b that factur-x itself reads and levels."""
    xml = build_cii_xml(invoice(), SELLER)
    pdf = write_facturx(HTML(string=PAGE).render(pdf_variant="pdf/a-3b"), xml)

    extracted = extract_xml(pdf)
    assert extracted == xml
    validate_xml(extracted)
    name, checked = facturx.get_facturx_xml_from_pdf(pdf, check_xsd=True)
    assert (name, checked) == (FACTURX_FILENAME, xml)
    assert facturx.get_flavor(parse(xml)) == "factur-x"
    assert facturx.get_level(parse(xml)) == "en16931"

    reader = PdfReader(io.BytesIO(pdf))
    catalog = reader.root_object
    assert len(pdf_array(catalog["/AF"])) == 1
    spec = pdf_dict(pdf_array(catalog["/AF"])[0])
    assert str(spec["/UF"]) == str(spec["/F"]) == FACTURX_FILENAME
    assert str(spec["/AFRelationship"]) == "/" + AF_RELATIONSHIP.capitalize() == "/Alternative"
    embedded_file = pdf_stream(pdf_dict(spec["/EF"])["/F"])
    assert embedded_file.get_data() == xml
    assert str(embedded_file["/Subtype"]) == "/text/xml"  # Factur-X 1.0 §6.2.2; pypdf decodes text#2Fxml
    embedded = pdf_dict(pdf_dict(catalog["/Names"])["/EmbeddedFiles"])
    assert FACTURX_FILENAME in pdf_array(embedded["/Names"])

    xmp = parse(pdf_stream(catalog["/Metadata"]).get_data())
    assert _xmp_value(xmp, XMP_PDFAID, "part") == "3"
    assert _xmp_value(xmp, XMP_PDFAID, "conformance") == "B"
    assert _xmp_value(xmp, XMP_FX, "ConformanceLevel") == "EN 16931"
    assert _xmp_value(xmp, XMP_FX, "DocumentFileName") == FACTURX_FILENAME
    assert _xmp_value(xmp, XMP_FX, "DocumentType") == "INVOICE"
    assert _xmp_value(xmp, XMP_FX, "Version") == "1.0"
    assert "fx" in xmp.xpath(
        "//pdfaSchema:prefix/text()", namespaces={"pdfaSchema": "http://www.aiim.org/pdfa/ns/schema#"}
    )
    # PDF/A: the info dictionary and the XMP say the same, and both say what factur-x would.
    info, expected = reader.metadata, facturx_info(xml)
    assert info is not None
    assert (
        info.title
        == _xmp_value(xmp, XMP_DC, "title")
        == expected.title
        == "Harinas del Sur S.A.: Invoice F-2026-000123"
    )
    assert info.author == _xmp_value(xmp, XMP_DC, "creator") == expected.author
    assert info.subject == _xmp_value(xmp, XMP_DC, "description") == expected.subject
    assert info.producer == _xmp_value(xmp, XMP_PDF, "Producer")


def test_pdf_is_byte_for_byte_what_pydyf_writes_without_kept_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keeping each object's bytes (pydyf hashes them for the PDF/A /ID) changes no byte of the PDF."""
    now = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)

    class Fixed(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Fixed:
            return cls.fromtimestamp(now.timestamp(), tz)

    monkeypatch.setattr(einvoice, "datetime", Fixed)
    xml = build_cii_xml(invoice(), SELLER)
    kept = write_facturx(HTML(string=PAGE).render(pdf_variant="pdf/a-3b"), xml)
    monkeypatch.setattr(einvoice, "_serialised_once", lambda kind: kind)
    assert kept == write_facturx(HTML(string=PAGE).render(pdf_variant="pdf/a-3b"), xml)


def test_xml_is_serialised_as_drafthorse_validates_it() -> None:
    """The XSD compiled once checks and writes what drafthorse's own ``validate_xml`` does."""
    xml = build_cii_xml(invoice(), SELLER)
    assert xml == drafthorse_validated(etree.tostring(etree.fromstring(xml)), "FACTUR-X_EN16931")


def test_facturx_xmp_is_a_whole_packet_for_a_post_pass() -> None:
    """What an engine without custom XMP (Typst) puts in the PDF: factur-x's packet, from the XML alone."""
    packet = facturx_xmp(build_cii_xml(invoice(), SELLER), producer="Typst")
    assert packet.startswith(b"<?xpacket begin=") and packet.rstrip().endswith(b'<?xpacket end="w"?>')
    xmp = parse(packet.split(b"?>", 1)[1].rsplit(b"<?xpacket", 1)[0])
    assert (_xmp_value(xmp, XMP_PDFAID, "part"), _xmp_value(xmp, XMP_PDFAID, "conformance")) == ("3", "B")
    assert _xmp_value(xmp, XMP_FX, "ConformanceLevel") == "EN 16931"
    assert _xmp_value(xmp, XMP_PDF, "Producer") == "Typst"
    assert _xmp_value(xmp, XMP_DC, "title") == "Harinas del Sur S.A.: Invoice F-2026-000123"


def test_zero_rate_line_is_zero_rated() -> None:
    inv = with_lines(line("3", "10.00", "21", "30.00"), line("2", "4.50", "0", "9.00", "Libro"))
    xml = build_cii_xml(inv, SELLER)
    validate_xml(xml)
    root = parse(xml)
    assert texts(root, "//ram:IncludedSupplyChainTradeLineItem//ram:CategoryCode") == ["S", "Z"]
    zero = "//ram:ApplicableHeaderTradeSettlement/ram:ApplicableTradeTax[ram:CategoryCode='Z']"
    assert Decimal(text(root, f"{zero}/ram:CalculatedAmount")) == 0
    assert Decimal(text(root, f"{zero}/ram:BasisAmount")) == Decimal("9.00")
    assert root.xpath(f"{zero}/ram:ExemptionReason", namespaces=NS) == []  # BR-Z-10
    assert Decimal(text(root, f"{SUMMATION}/ram:GrandTotalAmount")) == inv.total == Decimal("45.30")


def test_two_rates_are_grouped_per_rate() -> None:
    inv = with_lines(
        line("1", "10.01", "21", "10.01"),
        line("1", "10.01", "21", "10.01"),
        line("7", "1.15", "10", "8.05"),
    )
    xml = build_cii_xml(inv, SELLER)
    validate_xml(xml)
    root = parse(xml)
    breakdown = "//ram:ApplicableHeaderTradeSettlement/ram:ApplicableTradeTax"
    assert texts(root, f"{breakdown}/ram:RateApplicablePercent") == ["10", "21"]
    assert texts(root, f"{breakdown}/ram:BasisAmount") == ["8.05", "20.02"]
    # Per line, as ingest computes: 2.10 + 2.10 (not 20.02 × 21 % = 4.20 rounded once), + 0.81.
    assert texts(root, f"{breakdown}/ram:CalculatedAmount") == ["0.81", "4.20"]
    assert Decimal(text(root, f"{SUMMATION}/ram:TaxTotalAmount")) == inv.tax_total == Decimal("5.01")


def test_per_line_and_per_rate_rounding_both_follow_the_invoice() -> None:
    lines = (line("1", "0.05", "10", "0.05"), line("1", "0.05", "10", "0.05"))
    per_line = parse(build_cii_xml(with_lines(*lines), SELLER))  # 0.01 + 0.01
    per_rate = parse(build_cii_xml(with_lines(*lines, tax_total=Decimal("0.01")), SELLER))  # 0.10 × 10 %
    assert text(per_line, f"{SUMMATION}/ram:TaxTotalAmount") == "0.02"
    assert text(per_rate, f"{SUMMATION}/ram:TaxTotalAmount") == "0.01"
    assert text(per_rate, "//ram:ApplicableHeaderTradeSettlement/ram:ApplicableTradeTax/ram:CalculatedAmount") == "0.01"


def test_discount_line_has_positive_price_and_negative_quantity() -> None:
    inv = with_lines(line("2", "50.00", "21", "100.00"), line("1", "-10.00", "21", "-10.00", "Descuento"))
    xml = build_cii_xml(inv, SELLER)
    validate_xml(xml)
    root = parse(xml)
    assert texts(root, "//ram:NetPriceProductTradePrice/ram:ChargeAmount") == ["50.00", "10.00"]  # BR-27
    assert texts(root, "//ram:BilledQuantity") == ["2", "-1"]
    assert texts(root, "//ram:SpecifiedTradeSettlementLineMonetarySummation/ram:LineTotalAmount") == [
        "100.00",
        "-10.00",
    ]


def test_prefixed_buyer_tax_id_is_a_vat_id_and_no_iban_means_no_payment_means() -> None:
    base = invoice()
    inv = base.model_copy(update={"customer": base.customer.model_copy(update={"tax_id": "ESB12345678"})})
    xml = build_cii_xml(inv, SELLER.model_copy(update={"iban": None}))
    validate_xml(xml)
    root = parse(xml)
    assert text(root, "//ram:BuyerTradeParty/ram:SpecifiedTaxRegistration/ram:ID[@schemeID='VA']") == "ESB12345678"
    assert root.xpath("//ram:SpecifiedTradeSettlementPaymentMeans", namespaces=NS) == []


def test_inconsistent_totals_are_refused() -> None:
    with pytest.raises(EInvoiceError, match="subtotal"):
        build_cii_xml(invoice(subtotal=Decimal("250.00"), total=Decimal("279.55")), SELLER)
    with pytest.raises(EInvoiceError, match="tax_total"):
        build_cii_xml(invoice(tax_total=Decimal("29.50"), total=Decimal("286.50")), SELLER)
    with pytest.raises(EInvoiceError, match="total"):
        build_cii_xml(invoice(total=Decimal("286.56")), SELLER)
    with pytest.raises(EInvoiceError, match="country prefix"):
        build_cii_xml(invoice(), SELLER.model_copy(update={"vat_id": "A41234567"}))


def test_document_failing_the_xsd_is_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(einvoice, "_INVOICE", "")  # drafthorse then omits the required TypeCode
    with pytest.raises(EInvoiceError, match=r"F-2026-000123: CII XML fails the EN16931 XSD.*TypeCode"):
        build_cii_xml(invoice(), SELLER)


def test_xml_without_a_required_element_is_invalid() -> None:
    root = parse(build_cii_xml(invoice(), SELLER))
    for node in root.xpath("//rsm:ExchangedDocument/ram:TypeCode", namespaces=NS):
        assert isinstance(node, etree._Element)
        parent = node.getparent()
        assert parent is not None
        parent.remove(node)
    with pytest.raises(EInvoiceError, match="TypeCode"):
        validate_xml(etree.tostring(root))
    with pytest.raises(EInvoiceError, match="not a valid"):
        validate_xml(b"<not-xml")


def test_embedding_invalid_xml_or_extracting_from_a_plain_pdf_fails(pdf_a3: bytes) -> None:
    broken = build_cii_xml(invoice(), SELLER).replace(b"<ram:TypeCode>380</ram:TypeCode>", b"")
    with pytest.raises(EInvoiceError, match="embed"):
        write_facturx(HTML(string=PAGE).render(pdf_variant="pdf/a-3b"), broken)
    with pytest.raises(EInvoiceError, match=FACTURX_FILENAME):
        extract_xml(pdf_a3)
    with pytest.raises(EInvoiceError, match="read the PDF"):
        extract_xml(b"%PDF-1.7 not really")


def pdf_dict(obj: PdfObject) -> DictionaryObject:
    resolved = obj.get_object()
    assert isinstance(resolved, DictionaryObject)
    return resolved


def pdf_array(obj: PdfObject) -> ArrayObject:
    resolved = obj.get_object()
    assert isinstance(resolved, ArrayObject)
    return resolved


def pdf_stream(obj: PdfObject) -> StreamObject:
    resolved = obj.get_object()
    assert isinstance(resolved, StreamObject)
    return resolved


def _xmp_value(xmp: etree._Element, namespace: str, name: str) -> str | None:
    """An XMP property, written either as an element or as an rdf:Description attribute."""
    for node in xmp.iter(f"{{{namespace}}}{name}"):
        return "".join(node.itertext()).strip()  # the rdf:li of an rdf:Alt/Seq (dc:title) too
    for node in xmp.iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description"):
        value = node.get(f"{{{namespace}}}{name}")
        if value is not None:
            return str(value)
    return None
