"""Event data models, one per event type and schema version.

A new version of an event is a new model registered beside the old one; consumers keep
accepting every version still in the registry. JSON Schemas exported from these models are
checked in under ``schemas/json`` (``make schemas``) with examples under ``schemas/examples``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any, Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from factura.common.envelope import Envelope

Locale = Literal["es", "pt", "en", "ro"]
LOCALES: tuple[str, ...] = get_args(Locale)
Channel = Literal["email", "sms", "voice", "push"]
CHANNELS: tuple[str, ...] = get_args(Channel)
#: Where a signed download link can travel (delivery channels, plus a customer portal).
LinkChannel = Literal["email", "sms", "voice", "push", "portal"]
#: Why a message is sent: the invoice itself, one reminder step (``reminder:<step>``), a receipt, or the
#: tenant's daily summary to its process owner (``report``).
Purpose = Annotated[str, Field(pattern=r"^(invoice|receipt|report|reminder:[a-z0-9][a-z0-9_+-]{0,39})$")]
ReminderStep = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_+-]{0,39}$", examples=["before-5", "due", "after-3"])]
Money = Annotated[Decimal, Field(max_digits=18, decimal_places=2)]
CENT = Decimal("0.01")
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]
#: Ingest validates and normalises addresses (email-validator); events only keep the shape.
Email = Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=320)]
E164 = Annotated[str, Field(pattern=r"^\+[1-9]\d{6,14}$", description="Phone number in E.164")]


def cents(value: Decimal) -> Decimal:
    """The product's one rounding rule: half-up to cents, per line amount and per line tax.

    Ingest computes totals with it; the e-invoice XML and anything else that re-derives a figure
    must use it too, or a document would disagree with the invoice by a cent.
    """
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Country = Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]
#: UNTDID 5305 VAT categories EN 16931 uses: S standard, Z zero rated, E exempt, AE reverse charge,
#: K intra-community supply, G export outside the EU, O not subject to VAT, L Canary Islands IGIC,
#: M Ceuta and Melilla IPSI.
VatCategory = Literal["S", "Z", "E", "AE", "K", "G", "O", "L", "M"]
#: Categories with no tax, for which EN 16931 wants an exemption reason (BT-120 text or BT-121 code).
EXEMPT_CATEGORIES: tuple[str, ...] = ("E", "AE", "K", "G", "O")
#: The VATEX code that says all there is to say for a category (CEF VATEX list); "E" has none: an
#: exempt supply must name the law that exempts it.
DEFAULT_VATEX: dict[str, str] = {"AE": "VATEX-EU-AE", "K": "VATEX-EU-IC", "G": "VATEX-EU-G", "O": "VATEX-EU-O"}
VatexCode = Annotated[
    str, Field(pattern=r"^VATEX-[A-Z]{2}-[A-Z0-9-]{1,20}$", description="CEF VATEX exemption reason code (BT-121)")
]
ShortText = Annotated[str, Field(min_length=1, max_length=300)]


def vat_category_problem(category: str, rate: Decimal, reason: str | None, code: str | None) -> tuple[str, str] | None:
    """(field, message) when a line's VAT category, rate and exemption reason disagree (EN 16931
    BR-S/Z/E/AE/IC/G/O/AF/AG rules, which a tax authority's validator applies), else ``None``."""
    if category == "S" and rate <= 0:
        return (
            "tax_rate",
            "must be above 0 for vat_category S (standard rate); a 0 rate is category Z, E, AE, K, G or O",
        )
    if category == "L" and rate <= 0:
        return "tax_rate", "must be above 0 for vat_category L (IGIC)"
    if category in (*EXEMPT_CATEGORIES, "Z") and rate != 0:
        return "tax_rate", f"must be 0 for vat_category {category}, not {rate}"
    if category == "E" and not (reason or code):
        return "exemption_reason", "required for vat_category E (exempt): the legal basis, as text or a VATEX code"
    if category not in EXEMPT_CATEGORIES and (reason or code):
        field = "exemption_reason" if reason else "exemption_code"
        return field, f"only exempt categories (E, AE, K, G, O) carry one, not vat_category {category}"
    return None


def line_category(rate: Decimal, category: str | None, reason: str | None = None, code: str | None = None) -> str:
    """The VAT category of a line: the one given, else S for a positive rate, E for a zero rate with an
    exemption reason, Z (zero rated) otherwise: what invoices without categories always meant."""
    if category is not None:
        return category
    if rate > 0:
        return "S"
    return "E" if reason or code else "Z"


class PostalAddress(_Model):
    """A postal address (EN 16931 BG-5/BG-8); the country stays on the party."""

    lines: list[ShortText] = Field(default_factory=list, max_length=3, description="Street and number, building...")
    city: str | None = Field(default=None, min_length=1, max_length=100)
    postcode: str | None = Field(default=None, min_length=1, max_length=20)
    subdivision: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Province, district or county: its ISO 3166-2 code (RO-B, PT-11) or name",
    )


class SellerDetails(_Model):
    """What the ERP knows of the issuer; the tenant's configured ``[seller]`` wins where both say something."""

    vat_id: str | None = Field(default=None, max_length=50, description="Seller VAT/tax id (NIF, CIF, NIPC, CNPJ)")
    registration_id: str | None = Field(
        default=None, max_length=100, description="Trade register number (BT-30), e.g. Romanian J40/1234/2010"
    )
    address: PostalAddress | None = None
    country: Country | None = None


class Customer(_Model):
    customer_id: str = Field(min_length=1, max_length=100)
    name: str = Field(min_length=1, max_length=300)
    country: Country
    email: Email | None = None
    phone: E164 | None = None
    locale: Locale = "en"
    tax_id: str | None = Field(default=None, max_length=50)
    preferred_channel: Channel | None = Field(
        default=None, description="Channel the customer asked to be reached on first; the tenant's order follows"
    )
    push_token: str | None = Field(
        default=None, min_length=1, max_length=4096, description="Device registration token for push messages"
    )
    effective_channel: Channel | None = Field(
        default=None,
        description="Learnt when the invoice was accepted: the channel after which this customer most often paid",
    )
    address: PostalAddress | None = Field(default=None, description="Buyer postal address (BG-8), when the ERP has it")
    registration_id: str | None = Field(
        default=None, max_length=100, description="Buyer trade register number (BT-47), e.g. Romanian J40/..."
    )


class Line(_Model):
    description: str = Field(min_length=1, max_length=1000)
    quantity: Annotated[Decimal, Field(gt=0, max_digits=14, decimal_places=4)]
    unit_price: Annotated[Decimal, Field(max_digits=18, decimal_places=4)]
    tax_rate: Annotated[Decimal, Field(ge=0, le=100, max_digits=5, decimal_places=2)] = Decimal("0")
    amount: Money = Field(description="quantity × unit_price, before tax")
    vat_category: VatCategory | None = Field(
        default=None, description="UNTDID 5305 VAT category; absent: S above a 0 rate, Z at 0 (see line_category)"
    )
    exemption_reason: str | None = Field(
        default=None, min_length=1, max_length=300, description="Why no VAT (BT-120), e.g. 'Exenta art. 20.Uno.3 LIVA'"
    )
    exemption_code: VatexCode | None = None


class SuppliedDocument(_Model):
    """A document the ERP already produced and placed in the documents bucket: sent as is."""

    key: str = Field(min_length=1, max_length=1024, description="S3 key of the PDF")
    xml_key: str | None = Field(default=None, max_length=1024, description="S3 key of its e-invoice XML")
    annex_keys: list[str] = Field(default_factory=list, max_length=20)


class InvoiceCreatedV1(_Model):
    """A valid, normalised invoice accepted from an ERP."""

    invoice_number: str = Field(min_length=1, max_length=100)
    issue_date: date
    due_date: date
    currency: Currency
    seller_name: str = Field(min_length=1, max_length=300)
    customer: Customer
    lines: list[Line] = Field(min_length=1)
    subtotal: Money
    tax_total: Money
    total: Money
    erp_source: str = Field(min_length=1, max_length=100, description="ERP system that sent it")
    supplied_document: SuppliedDocument | None = Field(
        default=None, description="Set when the ERP produced the document itself; the renderer then only verifies it"
    )
    delivery_date: date | None = Field(
        default=None, description="Date of supply (BT-72) when it differs from issue_date; absent means issue_date"
    )
    seller: SellerDetails | None = Field(default=None, description="Issuer details the tenant's config lacks")
    atcud: str | None = Field(
        default=None,
        pattern=r"^[A-Z0-9]{8,70}-[0-9]{1,20}$",
        description="Portugal: ATCUD (series validation code - sequence number), shown on every page",
    )
    fiscal_qr: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description="Text of the fiscal QR code the ERP produced (Portugal: Portaria 195/2020; Spain: VERI*FACTU URL)",
    )
    legal_mentions: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(
        default_factory=list,
        max_length=10,
        description="Statements the law asks the ERP to print, e.g. 'Processado por programa certificado n.º 1234/AT'",
    )


class FieldError(_Model):
    field: str = Field(description="Dotted path of the offending field, or '$' for the whole message")
    message: str


class InvoiceRejectedV1(_Model):
    """An ERP message that was not accepted, with every reason."""

    source_topic: str
    source_offset: str = Field(description="topic/partition/offset of the rejected message")
    stage: Literal["ingest", "render"]
    reasons: list[FieldError] = Field(min_length=1)
    erp_reference: str | None = Field(default=None, description="Invoice number or payment id, if readable")


class InvoiceRejectedV2(InvoiceRejectedV1):
    """v1 plus why, in one word, so compliance can count and search refusals by kind: ``invalid``
    (the record is wrong in itself) or ``conflict`` (an invoice number already accepted with other
    content, sent without ``amendment``: the ERP must say it means to replace it)."""

    reason: Literal["invalid", "conflict"] = Field(
        default="invalid", description="invalid: the reasons say what is wrong; conflict: see the ERP contract"
    )


class DocumentRef(_Model):
    bucket: str
    key: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(gt=0)
    content_type: Literal["application/pdf", "application/zip"] = "application/pdf"
    filename: str = Field(min_length=1, max_length=200, description="Name to give the attachment or download")
    timestamp_key: str | None = Field(
        default=None,
        description="S3 key (same bucket) of the RFC 3161 TimeStampResp over the rendered PDF's SHA-256 "
        "(pdf_sha256), when the tenant timestamps its documents; verify with openssl ts -verify",
    )


class InvoiceSummary(_Model):
    """What a sender needs to address the customer, carried in the event (no lookups)."""

    invoice_number: str
    seller_name: str
    customer: Customer
    currency: Currency
    total: Money
    due_date: date


Packaging = Literal["pdf", "zip"]


class InvoiceRenderedV1(_Model):
    document: DocumentRef = Field(description="What the customer receives: the PDF, or the zip package")
    invoice: InvoiceSummary
    source: Literal["rendered", "erp_supplied"]
    packaging: Packaging
    einvoice: Literal["none", "factur-x-en16931", "erp_supplied"] = Field(
        description="Whether machine-readable XML travels with (inside, or zipped beside) the PDF"
    )
    pdf_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hash of the PDF itself (inside a zip, too)")
    retention_days: int = Field(ge=1, description="Days the stored document is kept before S3 expires it")
    expires_on: date
    tenant_config_version: str = Field(description="Version (hash) of the tenant configuration used")


class DeliverySucceededV1(_Model):
    channel: Literal["email", "sms"]
    recipient: str
    provider_message_id: str
    document: DocumentRef


FailureReason = Literal[
    "no_address",
    "rejected_by_server",
    "provider_error",
    "message_invalid",
    "document_mismatch",
    "document_missing",
    "hard_bounce",
    "soft_bounce",
    "complaint",
    "suppressed",
    "not_mobile",
]


class DeliveryFailedV1(_Model):
    channel: Literal["email", "sms"]
    reason: FailureReason
    detail: str = Field(description="Human-readable explanation, e.g. the SMTP reply text")
    code: int | None = Field(default=None, description="SMTP reply code or provider error code")
    enhanced_code: str | None = Field(default=None, description="SMTP enhanced status, e.g. 5.1.1")
    recipient: str | None = None
    invoice: InvoiceSummary
    document: DocumentRef


class Amount(_Model):
    currency: Currency
    amount: Money


class ChannelFigures(_Model):
    delivered: int = Field(ge=0)
    failed: int = Field(ge=0)


class DailyReport(_Model):
    """One tenant's day (its own time zone) as the audit trail recorded it: the process owner's summary.

    Customer messages only (the summary's own email is not counted). Each attempt on each channel
    counts once: a message that failed by email and was delivered by SMS is one failure and one
    delivery; a bounce reported after acceptance counts as a delivery and a failure.
    """

    tenant_id: str
    day: date = Field(description="The tenant's local day reported on")
    timezone: str = Field(description="IANA zone of the tenant (``[reminders] timezone``)")
    start: AwareDatetime = Field(description="The day's first instant, UTC")
    end: AwareDatetime = Field(description="The next day's first instant, UTC (exclusive)")
    sent: int = Field(ge=0, description="Delivery attempts that day: delivered + failed")
    delivered: int = Field(ge=0)
    failed: int = Field(ge=0)
    exhausted: int = Field(ge=0, description="Messages no allowed channel delivered")
    failed_by_reason: dict[str, int] = Field(description="Failure reason → attempts")
    by_channel: dict[str, ChannelFigures]
    by_purpose: dict[str, int] = Field(description="Delivered messages by purpose family: invoice, reminder, receipt")
    reminders_due: int = Field(ge=0, description="Reminder steps the scheduler issued")
    reminders_delivered: int = Field(ge=0)
    payments: int = Field(ge=0, description="payment.received events")
    paid: list[Amount] = Field(description="Sum of those payments per currency")
    unpaid: int = Field(ge=0, description="Invoices issued in the window and not paid in full at ``end``")
    unpaid_amount: list[Amount] = Field(description="What those invoices still owe, per currency")
    unpaid_window_days: int = Field(ge=1, description="Only invoices issued this many days before ``end`` count")
    unpaid_complete: bool = Field(description="False when the scan stopped at its bound: the unpaid figures are low")


class ReportDueV1(_Model):
    """The daily summary is due to the tenant's process owner (``[audit] owner_email``): email only."""

    owner_email: Email
    locale: Locale = Field(description="Language of the email")
    country: Country = Field(description="With the language, how numbers and dates read")
    report: DailyReport


class Notice(_Model):
    """What one message is about. Copied unchanged from the request into every outcome and fallback,
    so each delivery event says which message it belongs to (audit tells invoice from reminder)."""

    purpose: Purpose
    invoice: InvoiceSummary
    document: DocumentRef | None = Field(default=None, description="The invoice document to attach or link")
    days_from_due: int | None = Field(default=None, description="Reminders: days after (+) or before (-) the due date")
    channels: list[Channel] | None = Field(
        default=None, description="Channel order for this message only (a reminder step's rule); else the tenant's"
    )
    outstanding: Money | None = Field(default=None, description="Still to pay, when partial payments were made")
    report: DailyReport | None = Field(default=None, description="Purpose ``report``: the figures the email carries")


class Attempt(_Model):
    """One channel that did not deliver a message: tried and failed, or skipped without trying."""

    channel: Channel
    reason: FailureReason
    detail: str = Field(max_length=1000)
    recipient: str | None = None


class DeliverySucceededV2(_Model):
    channel: Channel
    recipient: str
    provider_message_id: str = Field(description="SMTP Message-ID, or the provider's message/call id")
    notice: Notice
    chain: list[Attempt] = Field(default_factory=list, description="Channels that failed before this one")
    segments: int | None = Field(default=None, ge=1, description="SMS segments billed")
    encoding: Literal["gsm7", "ucs2"] | None = Field(default=None, description="SMS encoding")
    cost: Decimal | None = Field(default=None, ge=0, description="Cost of this message per the tenant's policy")


class DeliveryFailedV2(_Model):
    channel: Channel
    reason: FailureReason
    detail: str = Field(description="Human-readable explanation, e.g. the SMTP reply text")
    code: int | None = Field(default=None, description="SMTP reply code or provider error code")
    enhanced_code: str | None = Field(default=None, description="SMTP enhanced status, e.g. 5.1.1")
    recipient: str | None = None
    notice: Notice
    chain: list[Attempt] = Field(default_factory=list, description="Earlier failures of this message, oldest first")
    next_channel: Channel | None = Field(
        description="Channel the policy hands the message to next (the same one to retry); null: exhausted"
    )
    provider_message_id: str | None = Field(default=None, description="For a later bounce: the message that bounced")
    evidence: str | None = Field(
        default=None, max_length=16_000, description="Raw provider evidence (DSN, webhook body), truncated"
    )


class DeliveryExhaustedV1(_Model):
    """Every channel the policy allows failed or was skipped: the customer was not reached."""

    notice: Notice
    chain: list[Attempt] = Field(min_length=1)


class TrackingHit(_Model):
    """Who touched a tracked message or link, without personal data in the clear."""

    channel: LinkChannel
    purpose: Purpose
    link_id: str = Field(min_length=1, max_length=64)
    user_agent: str | None = Field(default=None, max_length=300, description="Raw, unless the tenant asks for less")
    user_agent_class: Literal["browser", "mobile", "email_client", "scanner", "bot", "unknown"]
    client_ip_hash: str | None = Field(default=None, description="Keyed HMAC-SHA256 of the client address")
    automated: bool = Field(description="A link scanner or preview bot, not a person")
    automated_reason: str | None = None


class DeliveryOpenedV1(TrackingHit):
    """The open pixel of an email was fetched."""


class LinkClickedV1(TrackingHit):
    """A tracked payment or download link was followed."""

    target: Literal["payment", "download"]


class DocumentDownloadedV1(_Model):
    """Someone opened a signed download link (delivery tracking evidence)."""

    document: DocumentRef
    link_id: str = Field(description="Id of the signed link that was used")
    channel: LinkChannel = Field(description="Channel the link was sent through")
    user_agent: str | None = Field(default=None, max_length=300)
    client_ip_hash: str | None = Field(
        default=None, description="Keyed HMAC-SHA256 of the client address: no raw IPs stored, none recoverable"
    )


class PaymentReceivedV1(_Model):
    payment_id: str = Field(min_length=1, max_length=100)
    amount: Money
    currency: Currency
    paid_at: AwareDatetime
    method: str = Field(min_length=1, max_length=50)


class ReminderDueV1(_Model):
    kind: Literal["overdue"]
    due_date: date
    days_overdue: int = Field(ge=1)
    invoice: InvoiceSummary


class ReminderDueV2(_Model):
    step: ReminderStep = Field(description="Plan step; the message purpose is reminder:<step>")
    due_date: date
    days_from_due: int = Field(description="Days after (+) or before (-) the due date")
    invoice: InvoiceSummary
    document: DocumentRef | None = Field(default=None, description="The invoice document, once rendered")
    channels: list[Channel] | None = Field(default=None, description="The step's channel order, if it has one")
    outstanding: Money | None = Field(default=None, description="Still to pay, when partial payments were made")
    occurrence: int = Field(default=1, ge=1, description="Which repetition of the step this is")


UnmatchedReason = Literal["currency_mismatch", "unknown_invoice", "overpayment", "invoice_cancelled"]


class PaymentUnmatchedV1(_Model):
    """A payment the scheduler refused to count toward the invoice it names, and why."""

    reason: Literal["currency_mismatch"]
    detail: str = Field(description="Human-readable explanation, e.g. 'payment in USD, invoice in EUR'")
    payment: PaymentReceivedV1 = Field(description="The refused payment, as received")
    invoice_currency: Currency = Field(description="Currency of the invoice the payment names")


class PaymentUnmatchedV2(_Model):
    """A payment (or the part of one) not counted toward the invoice it names, and why."""

    reason: UnmatchedReason
    detail: str = Field(description="Human-readable explanation, e.g. 'payment in USD, invoice in EUR'")
    payment: PaymentReceivedV1 = Field(description="The payment, as received")
    invoice_currency: Currency | None = Field(default=None, description="Currency of the invoice, when known")
    unmatched_amount: Money | None = Field(default=None, description="The part not counted (e.g. an overpayment)")


class InvoiceCancelledV1(_Model):
    """The ERP cancelled the invoice or credited all of it: no reminder may follow."""

    kind: Literal["cancellation", "credit_note"]
    reason: str | None = Field(default=None, max_length=500)
    credit_note_number: str | None = Field(default=None, min_length=1, max_length=100)
    cancelled_at: AwareDatetime
    erp_source: str = Field(min_length=1, max_length=100)


class ReceiptDueV1(_Model):
    """The invoice is paid in full and the tenant thanks its customers: a ``receipt`` message."""

    invoice: InvoiceSummary
    paid: Money
    paid_at: AwareDatetime
    document: DocumentRef | None = None


class TicketDueV1(_Model):
    """An invoice long overdue: the tenant's helpdesk gets a ticket."""

    step: ReminderStep
    days_from_due: int
    outstanding: Money
    invoice: InvoiceSummary


class TicketOpenedV1(_Model):
    """The helpdesk accepted the ticket."""

    status: int = Field(description="HTTP status the helpdesk answered")
    ticket_ref: str | None = Field(default=None, max_length=200, description="The helpdesk's id, if it returned one")
    attempts: int = Field(ge=1)


class TicketFailedV1(_Model):
    """The helpdesk refused the ticket for good (a 4xx): someone must open it by hand."""

    status: int
    detail: str = Field(max_length=1000)
    attempts: int = Field(ge=1)


#: (type, schema_version) → data model. The single source for parsing and schema export.
EVENT_MODELS: dict[tuple[str, int], type[_Model]] = {
    ("invoice.created", 1): InvoiceCreatedV1,
    ("invoice.rejected", 1): InvoiceRejectedV1,
    ("invoice.rejected", 2): InvoiceRejectedV2,
    ("invoice.rendered", 1): InvoiceRenderedV1,
    ("delivery.succeeded", 1): DeliverySucceededV1,
    ("delivery.succeeded", 2): DeliverySucceededV2,
    ("delivery.failed", 1): DeliveryFailedV1,
    ("delivery.failed", 2): DeliveryFailedV2,
    ("delivery.exhausted", 1): DeliveryExhaustedV1,
    ("delivery.opened", 1): DeliveryOpenedV1,
    ("link.clicked", 1): LinkClickedV1,
    ("document.downloaded", 1): DocumentDownloadedV1,
    ("payment.received", 1): PaymentReceivedV1,
    ("payment.unmatched", 1): PaymentUnmatchedV1,
    ("payment.unmatched", 2): PaymentUnmatchedV2,
    ("invoice.cancelled", 1): InvoiceCancelledV1,
    ("receipt.due", 1): ReceiptDueV1,
    ("ticket.due", 1): TicketDueV1,
    ("ticket.opened", 1): TicketOpenedV1,
    ("ticket.failed", 1): TicketFailedV1,
    ("reminder.due", 1): ReminderDueV1,
    ("reminder.due", 2): ReminderDueV2,
    ("report.due", 1): ReportDueV1,
}


def _reminder_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "step": data["kind"],
        "due_date": data["due_date"],
        "days_from_due": data["days_overdue"],
        "invoice": data["invoice"],
    }


def _failed_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    notice = {"purpose": "invoice", "invoice": data["invoice"], "document": data["document"]}
    rest = {k: v for k, v in data.items() if k not in ("invoice", "document")}
    # v1 had one fallback, email → SMS, decided by the SMS sender itself.
    return rest | {"notice": notice, "next_channel": "sms" if data["channel"] == "email" else None}


#: (type, version) → function turning that version's data into the next version's. Consumers then
#: handle the current version only; a v1 event still in a topic reads as v2 (delivery.succeeded v1
#: lacks the invoice, so it cannot be upgraded and stays v1).
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    ("reminder.due", 1): _reminder_v1_to_v2,
    ("delivery.failed", 1): _failed_v1_to_v2,
    ("payment.unmatched", 1): lambda data: data,  # v2 only widens v1
    ("invoice.rejected", 1): lambda data: data,  # v2 adds a reason, "invalid" by default
}

#: The version producers write today.
CURRENT_VERSION: dict[str, int] = {t: max(v for (tt, v) in EVENT_MODELS if tt == t) for (t, _) in EVENT_MODELS}


class UnknownEventType(ValueError):
    pass


#: Parametrised envelopes built once: pydantic caches them only weakly, and rebuilding them per
#: message is a measurable share of a consumer's CPU.
_GENERIC = Envelope[dict[str, Any]]
_ENVELOPES: dict[type[_Model], type[Envelope[Any]]] = {m: Envelope[m] for m in EVENT_MODELS.values()}  # type: ignore[valid-type]


def parse_event(raw: bytes | str) -> Envelope[Any]:
    """Validate an envelope and its data against the registered model for its type and version.

    Raises ``pydantic.ValidationError`` or :class:`UnknownEventType`; the consumer loop treats
    both as an invalid message (DLQ), never as a transient error.
    """
    generic = _GENERIC.model_validate_json(raw)
    model = EVENT_MODELS.get((generic.type, generic.schema_version))
    if model is None:
        raise UnknownEventType(f"unknown event type/version {generic.type} v{generic.schema_version}")
    data = model.model_validate(generic.data)
    version = generic.schema_version
    while (upcast := UPCASTERS.get((generic.type, version))) is not None:
        version += 1
        model = EVENT_MODELS[(generic.type, version)]
        data = model.model_validate(upcast(data.model_dump(mode="json")))
    envelope = generic.model_dump() | {"data": data, "schema_version": version}
    return _ENVELOPES[model].model_validate(envelope)


def summary_of(invoice: InvoiceCreatedV1) -> InvoiceSummary:
    return InvoiceSummary(
        invoice_number=invoice.invoice_number,
        seller_name=invoice.seller_name,
        customer=invoice.customer,
        currency=invoice.currency,
        total=invoice.total,
        due_date=invoice.due_date,
    )


def as_datetime(value: date) -> datetime:
    """A date as midnight UTC, for stores that only keep datetimes (BSON)."""
    return datetime.combine(value, time.min, tzinfo=UTC)
