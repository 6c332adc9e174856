"""EN 16931 e-invoice (Factur-X 1.0 / ZUGFeRD 2.x, profile EN16931) for rendered invoices.

The customer gets one PDF/A-3b that a person reads and a machine books: the CII XML built here
from the same :class:`InvoiceCreatedV1` as the visible page, embedded as ``factur-x.xml``.

Why these libraries: drafthorse models the CII tree field by field (no string templates that
drift from the schema) and validates against the Factur-X XSD when serialising; factur-x does the
PDF/A-3 part that is easy to get subtly wrong (file spec with ``/AFRelationship``, catalog
``/AF``, XMP with the Factur-X extension schema). Both are synchronous and CPU-bound, like
WeasyPrint: call them from the renderer's worker thread, not the event loop.

Figures: the XML carries the invoice's own subtotal/tax_total/total. drafthorse does no
arithmetic (it writes the Decimals it is given), so the only place where rounding can disagree is
the VAT breakdown per rate, computed here; see :func:`_tax_breakdown`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

import facturx
from drafthorse.models.accounting import ApplicableTradeTax
from drafthorse.models.document import Document
from drafthorse.models.party import BuyerTradeParty, SellerTradeParty, TaxRegistration
from drafthorse.models.payment import PaymentMeans, PaymentTerms
from drafthorse.models.trade import TradeSettlement
from drafthorse.models.tradelines import LineItem
from lxml import etree

from factura.common.events import InvoiceCreatedV1, Line, cents
from factura.common.tenants import Seller

__all__ = [
    "AF_RELATIONSHIP",
    "FACTURX_FILENAME",
    "EInvoiceError",
    "build_cii_xml",
    "embed_xml",
    "extract_xml",
    "validate_xml",
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

_SCHEMA: Final = "FACTUR-X_EN16931"  # drafthorse's name for the Factur-X 1.0.07 EN16931 XSD
_FLAVOR: Final = "factur-x"
_LEVEL: Final = "en16931"
_INVOICE: Final = "380"  # UNTDID 1001 commercial invoice
_UNIT: Final = "C62"  # UN/ECE rec 20 "one": our lines carry no unit of measure
_SEPA_CREDIT_TRANSFER: Final = "58"  # UNTDID 4461
_VAT: Final = "VAT"
_STANDARD: Final = "S"
_ZERO_RATED: Final = "Z"
_VAT_PREFIX = re.compile(r"^(?:[A-Z]{2})[A-Z0-9+*.]{2,}$")


class EInvoiceError(ValueError):
    """The e-invoice could not be built, embedded, extracted or validated.

    A ValueError because the cause is the data (or a document), never the network: retrying the
    same event gives the same result, so the renderer should reject it, not retry.
    """


@dataclass(frozen=True)
class _TaxGroup:
    """One VAT breakdown row (BG-23): every line at one rate."""

    rate: Decimal
    basis: Decimal
    tax: Decimal

    @property
    def category(self) -> str:
        return _category(self.rate)


def _plain(value: Decimal) -> Decimal:
    """The same number without exponent: ``str()`` of ``Decimal('1E+2')`` is not an xs:decimal."""
    return Decimal(format(value, "f"))


def _category(rate: Decimal) -> str:
    """UNTDID 5305 VAT category for a rate.

    A positive rate is "S" (standard). A zero rate is "Z" (zero rated) rather than "E" (exempt):
    EN 16931 requires an exemption reason (BT-120/BT-121, rule BR-E-10) for every "E" breakdown,
    and our events carry none, whereas "Z" only needs the seller's VAT id (BR-Z-02), which the
    tenant config always has. Exempt supplies (e.g. Spanish art. 20 LIVA) need a reason field on
    the line before they can be told apart from zero-rated ones.
    """
    return _STANDARD if rate > 0 else _ZERO_RATED


def _tax_breakdown(invoice: InvoiceCreatedV1) -> list[_TaxGroup]:
    """VAT per rate, adding up exactly to the invoice's ``subtotal`` and ``tax_total``.

    Our ingest rounds the tax of each line and sums the cents; EN 16931 (BR-CO-17) defines a
    group's tax as basis times rate, rounded once, and accepts up to one unit of difference, because
    both methods are legal and common. We try the invoice's own method first and the group method
    second, and keep whichever reproduces ``tax_total``: the invoice already shown to the customer
    is the source of truth, and a breakdown that doesn't sum to it would break BR-CO-14. If
    neither does, or the lines don't add up to ``subtotal``/``total``, the invoice is inconsistent
    and no e-invoice is better than a wrong one.
    """
    lines_by_rate: dict[Decimal, list[Line]] = defaultdict(list)
    for line in invoice.lines:
        lines_by_rate[line.tax_rate].append(line)
    bases = {rate: sum((line.amount for line in lines), Decimal(0)) for rate, lines in lines_by_rate.items()}
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
        rate: sum((cents(line.amount * rate / 100) for line in lines), Decimal(0))
        for rate, lines in lines_by_rate.items()
    }
    per_group = {rate: cents(basis * rate / 100) for rate, basis in bases.items()}
    for taxes in (per_line, per_group):
        if sum(taxes.values(), Decimal(0)) == invoice.tax_total:
            return [_TaxGroup(rate=rate, basis=bases[rate], tax=taxes[rate]) for rate in sorted(bases)]
    raise EInvoiceError(
        f"invoice {invoice.invoice_number}: tax_total {invoice.tax_total} matches neither the per-line "
        f"({sum(per_line.values(), Decimal(0))}) nor the per-rate ({sum(per_group.values(), Decimal(0))}) VAT"
    )


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
    item.settlement.trade_tax.category_code = _category(line.tax_rate)
    item.settlement.trade_tax.rate_applicable_percent = _plain(line.tax_rate)
    item.settlement.monetary_summation.total_amount = cents(line.amount)
    return item


def _build_document(invoice: InvoiceCreatedV1, seller: Seller) -> Document:
    doc = Document()
    doc.context.guideline_parameter.id = GUIDELINE_EN16931
    doc.header.id = invoice.invoice_number
    doc.header.type_code = _INVOICE
    doc.header.issue_date_time = invoice.issue_date
    _add_seller(doc.trade.agreement.seller, invoice, seller)
    _add_buyer(doc.trade.agreement.buyer, invoice)
    for number, line in enumerate(invoice.lines, start=1):
        doc.trade.items.add(_line_item(number, line))
    _add_settlement(doc.trade.settlement, invoice, seller)
    return doc


def _add_seller(party: SellerTradeParty, invoice: InvoiceCreatedV1, seller: Seller) -> None:
    """BG-4: the tenant's legal identity, with the VAT id that S and Z categories require."""
    if not _VAT_PREFIX.match(seller.vat_id):
        # The XSD accepts any text; BR-CO-09 doesn't, and a rejected e-invoice surfaces at the customer.
        raise EInvoiceError(f"seller VAT id {seller.vat_id!r} has no country prefix (e.g. ESB12345678)")
    party.name = seller.legal_name
    if invoice.seller_name != seller.legal_name:
        # BT-28: the brand on the page, when it differs from the registered name.
        party.legal_organization.trade_name = invoice.seller_name
    party.address.line_one = seller.street
    party.address.postcode = seller.postcode
    party.address.city_name = seller.city
    party.address.country_id = seller.country
    if seller.email:
        party.electronic_address.uri_ID = ("EM", seller.email)
    party.tax_registrations.add(_tax_registration("VA", seller.vat_id))


def _add_buyer(party: BuyerTradeParty, invoice: InvoiceCreatedV1) -> None:
    """BG-7: the customer. We hold no street address, and EN 16931 only requires the country."""
    customer = invoice.customer
    party.name = customer.name
    party.address.country_id = customer.country
    if customer.email:
        party.electronic_address.uri_ID = ("EM", customer.email)
    if customer.tax_id:
        tax_id = customer.tax_id.replace(" ", "").upper()
        if _VAT_PREFIX.match(tax_id):
            # BT-48 (schemeID VA) must start with a country prefix (BR-CO-09).
            party.tax_registrations.add(_tax_registration("VA", tax_id))
        else:
            # A national id without prefix (a Spanish NIF "B12345678") is not a VAT number as
            # such; prefixing the country would invent one (wrong for DE, FR...). BT-47, the
            # buyer's legal registration id, carries it without that claim.
            party.legal_organization.id = customer.tax_id


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
        tax.basis_amount = group.basis
        tax.category_code = group.category
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


def build_cii_xml(invoice: InvoiceCreatedV1, seller: Seller) -> bytes:
    """The invoice as UN/CEFACT CII D16B XML at the Factur-X EN16931 profile, XSD-validated.

    Raises :class:`EInvoiceError` if the figures are inconsistent or the document does not pass
    the Factur-X EN16931 XSD (drafthorse parses its own output against it).
    """
    document = _build_document(invoice, seller)
    try:
        xml: bytes = document.serialize(schema=_SCHEMA)
    except etree.XMLSyntaxError as e:  # drafthorse parses its output with an XSD-validating parser
        raise EInvoiceError(f"invoice {invoice.invoice_number}: CII XML fails the EN16931 XSD: {e}") from e
    return xml


def validate_xml(xml: bytes) -> None:
    """Check a CII document against the Factur-X EN16931 XSD (structure, not the business rules).

    The EN 16931 business rules (schematron) need an XSLT 2 processor, which factur-x reaches
    over HTTP; the renderer stays offline and the rules are covered by how the XML is built.
    """
    try:
        facturx.xml_check_xsd(xml, flavor=_FLAVOR, level=_LEVEL)
    except Exception as e:
        raise EInvoiceError(f"not a valid Factur-X EN16931 XML: {e}") from e


def embed_xml(pdf_a3: bytes, xml: bytes) -> bytes:
    """Attach the XML to a PDF/A-3b, making it a Factur-X EN16931 PDF.

    The input must already be PDF/A-3 (WeasyPrint ``pdf_variant="pdf/a-3b"``): factur-x adds the
    ``factur-x.xml`` file spec (``/AFRelationship`` :data:`AF_RELATIONSHIP`), the catalog ``/AF``
    array and replaces the XMP with one declaring ``pdfaid:part=3``, ``conformance=B`` and the
    Factur-X extension schema, but it does not convert fonts, colours or transparency. Title and
    subject metadata are derived from the XML (seller, number, date) by the library.
    """
    try:
        pdf: bytes = facturx.generate_from_binary(
            pdf_a3,
            xml,
            flavor=_FLAVOR,
            level=_LEVEL,
            check_xsd=False,  # build_cii_xml already validated it against the same XSD
            afrelationship=AF_RELATIONSHIP,
        )
    except Exception as e:
        raise EInvoiceError(f"could not embed the Factur-X XML in the PDF: {e}") from e
    return pdf


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
