"""The inbound ERP contract: what an ERP publishes on ``erp.invoices``, ``erp.payments`` and ``erp.cancellations``.

These are raw JSON messages, not envelopes: ERP teams should not have to know our event
model. Their JSON Schemas are exported with the events (``erp.invoice.v1.json``) so an ERP team
can validate before publishing. Ingest decodes with :func:`decode_erp`, validates with these
models, then normalises.

The exported schema states the models' rules wherever JSON Schema can say them (text without
control characters, digits and decimals of amounts written as strings, ranges of amounts written
as numbers), so an ERP team validating with it meets those refusals before publishing. In form
it is stricter than the models in places (they strip surrounding white space and read ``+5`` or
``1E+2`` as amounts). What no schema can say (a valid phone number for the country, dates in
order, a total that matches the lines, the decimals of an amount written as a JSON number)
ingest still refuses, with the field named.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ModelWrapValidatorHandler,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError, core_schema

from factura.common.envelope import TENANT_PATTERN
from factura.common.errors import InvalidMessage
from factura.common.events import LOCALES, Channel, FieldError, VatCategory

#: Deepest nesting of arrays and objects accepted in an ERP message. The contract itself needs 3;
#: the rest is room for unknown fields, which are ignored. A fixed limit makes the refusal the
#: same wherever the parser runs, instead of depending on how much stack is left.
MAX_DEPTH = 64

#: Characters no text field may hold: C0 and C1 controls (CR, LF, NUL, ESC, NEL, ...), the
#: Unicode line and paragraph separators, and U+FFFE/U+FFFF. They break email headers (names and
#: the invoice number reach Subject, From and To) and are not allowed in XML (the e-invoice).
_CONTROL = "\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029\\ufffe\\uffff"
#: The same, minus tab, LF and CR: line descriptions may span lines.
_CONTROL_MULTILINE = "\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f\\u2028\\u2029\\ufffe\\uffff"
#: Invisible formatting characters (Unicode category Cf) of the Basic Multilingual Plane: bidi
#: controls (U+202A–U+202E, U+2066–U+2069) that make a PDF, a Subject or a To display name read
#: other than it is, zero-width characters (U+200B–U+200F, U+2060–U+2064, U+FEFF) that make two
#: names look equal, the soft hyphen (U+00AD), and the rest of Cf. No text field may hold them.
_FORMAT = (
    "\\u00ad\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890\\u0891\\u08e2\\u180e\\u200b-\\u200f"
    "\\u202a-\\u202e\\u2060-\\u2064\\u2066-\\u206f\\ufeff\\ufff9-\\ufffb"
)
#: Category Cf beyond the BMP, as of Unicode 15. A JSON
#: Schema pattern cannot portably name these characters, so only the models refuse them.
_FORMAT_ASTRAL = (
    "\\U000110bd\\U000110cd\\U00013430-\\U0001343f\\U0001bca0-\\U0001bca3"
    "\\U0001d173-\\U0001d17a\\U000e0001\\U000e0020-\\U000e007f"
)
#: The model checks with the very classes the schema patterns are built from (Cc is exactly
#: U+0000–U+001F and U+007F–U+009F; Zl and Zp are U+2028 and U+2029), plus the astral Cf.
_FORBIDDEN = re.compile(f"[{_CONTROL}{_FORMAT}{_FORMAT_ASTRAL}]")
_FORBIDDEN_MULTILINE = re.compile(f"[{_CONTROL_MULTILINE}{_FORMAT}{_FORMAT_ASTRAL}]")


def forbidden_character(text: str, *, multiline: bool = False) -> str | None:
    """The first character of ``text`` that no text field may hold, or ``None``: a control
    character, a line separator or an invisible formatting character (category Cf)."""
    found = (_FORBIDDEN_MULTILINE if multiline else _FORBIDDEN).search(text)
    return found.group() if found else None


@dataclass(frozen=True)
class _Text:
    """Refuses control and invisible formatting characters with a readable reason, and says so in the JSON Schema.

    The schema pattern also requires one character that is not white space when the field may not
    be empty: the model strips surrounding white space first, so a blank value is an empty one.
    """

    multiline: bool = False
    required: bool = True

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def _check(self, value: str) -> str:
        char = forbidden_character(value, multiline=self.multiline)
        if char is not None:
            allowed = " (tab and line breaks are allowed)" if self.multiline else ""
            raise ValueError(
                "must not contain control characters, line separators or invisible formatting characters "
                f"(bidi controls, zero-width characters, soft hyphens){allowed}: "
                f"found U+{ord(char):04X} at position {value.index(char)}"
            )
        return value

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler(schema)
        bad = (_CONTROL_MULTILINE if self.multiline else _CONTROL) + _FORMAT
        out["pattern"] = f"^[^{bad}]*[^\\s{bad}][^{bad}]*$" if self.required else f"^[^{bad}]*$"
        return out


@dataclass(frozen=True)
class _DecimalText:
    """The JSON Schema side of a decimal whose digits pydantic limits (``max_digits``, ``decimal_places``).

    pydantic exports those limits as nothing, so an ERP team validating with the schema would not
    see them. As a string, ``pattern`` spells them out; as a number, ``bound`` is the magnitude the
    integer digits allow. The decimals of a JSON number cannot be checked portably (``multipleOf``
    with a fraction fails valid numbers through float rounding), so ``rule`` says it.
    """

    pattern: str
    bound: int | None
    signed: bool
    rule: str

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler(schema)
        for branch in out.get("anyOf", [out]):
            if branch.get("type") == "number" and self.bound is not None:
                branch["exclusiveMaximum"] = self.bound
                if self.signed:
                    branch["exclusiveMinimum"] = -self.bound
            elif branch.get("type") == "string":
                branch["pattern"] = self.pattern
        out["description"] = self.rule
        return out


_NUMBER_NOTE = "; a string, or a JSON number (whose decimals only ingest can count, not this schema)."


def _decimal(integer_digits: int, decimals: int, *, positive: bool) -> _DecimalText:
    """Schema rules for ``max_digits=integer_digits + decimals, decimal_places=decimals``."""
    return _DecimalText(
        pattern=f"^{'' if positive else '-?'}[0-9]{{1,{integer_digits}}}(\\.[0-9]{{1,{decimals}}})?$",
        bound=10**integer_digits,
        signed=not positive,
        rule=f"Up to {integer_digits} digits before the decimal point and {decimals} after"
        + (", more than 0" if positive else "")
        + _NUMBER_NOTE,
    )


@dataclass(frozen=True)
class _Schema:
    """Extra JSON Schema keywords for the value it annotates (inside an ``X | None``, the ``X`` branch)."""

    keywords: tuple[tuple[str, str], ...]

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler(schema)
        out.update(self.keywords)
        return out


Amount = Annotated[Decimal, Field(max_digits=18, decimal_places=4), _decimal(14, 4, positive=False)]
Quantity = Annotated[Decimal, Field(gt=0, max_digits=14, decimal_places=4), _decimal(10, 4, positive=True)]
TaxRate = Annotated[
    Decimal,
    Field(ge=0, le=100, max_digits=5, decimal_places=2),
    _DecimalText(
        pattern=r"^(100(\.0{1,2})?|[0-9]{1,2}(\.[0-9]{1,2})?)$",
        bound=None,
        signed=False,
        rule="Percent, 0 to 100 with at most 2 decimals" + _NUMBER_NOTE,
    ),
]
PaymentAmount = Annotated[Decimal, Field(gt=0, max_digits=18, decimal_places=2), _decimal(16, 2, positive=True)]

#: One line of text (names, ids, keys): no control characters, not blank.
Name = Annotated[str, StringConstraints(min_length=1, max_length=300), _Text()]
Ident = Annotated[str, StringConstraints(min_length=1, max_length=100), _Text()]
Key = Annotated[str, StringConstraints(min_length=1, max_length=1024), _Text()]
InvoiceNumber = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$")]


class _Erp(BaseModel):
    # Tolerant reader: unknown fields from an ERP are ignored, never an error.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


#: Optional one-line text (blank is the same as absent).
OptText = Annotated[str, StringConstraints(max_length=100), _Text(required=False)] | None


class ErpAddress(_Erp):
    """A postal address. The country is the party's own ``country``."""

    lines: list[Name] = Field(default_factory=list, max_length=3, description="Street, number, building: up to 3 lines")
    city: OptText = None
    postcode: Annotated[str, StringConstraints(max_length=20), _Text(required=False)] | None = None
    subdivision: OptText = Field(
        default=None, description="Province, district or county: ISO 3166-2 code (RO-B, PT-11) or name"
    )

    @field_validator("city", "postcode", "subdivision")
    @classmethod
    def _blank(cls, value: str | None) -> str | None:
        return value or None


class ErpSeller(_Erp):
    """Issuer details for a tenant whose configuration lacks them; the tenant's ``[seller]`` wins."""

    vat_id: OptText = Field(default=None, description="Seller VAT/tax id: NIF, CIF/CUI, NIPC, CNPJ")
    registration_id: OptText = Field(default=None, description="Trade register number, e.g. J40/1234/2010")
    country: str | None = Field(default=None, pattern=r"^[A-Za-z]{2}$", description="ISO 3166-1 alpha-2")
    address: ErpAddress | None = None

    @field_validator("vat_id", "registration_id")
    @classmethod
    def _blank(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("country")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value.upper() if value else None


class ErpCustomer(_Erp):
    """Contact fields are validated *and normalised* here, so one pass reports every problem.

    Validation context ``{"allow_test_domains": True}`` admits the reserved ``.test`` TLD (RFC 2606),
    which real invoices never use but local stacks and demos do.
    """

    id: Ident
    name: Name
    country: str = Field(pattern=r"^[A-Za-z]{2}$", description="ISO 3166-1 alpha-2, used to read local phone numbers")
    email: Annotated[str, StringConstraints(max_length=320), _Schema((("format", "email"),))] | None = Field(
        default=None, description="Normalised with email-validator"
    )
    phone: Annotated[str, StringConstraints(max_length=40), _Text(required=False)] | None = Field(
        default=None, description="Any format; normalised to E.164"
    )
    locale: (
        Annotated[
            str,
            StringConstraints(max_length=35),
            _Schema((("pattern", r"^([Ee][NnSs]|[Pp][Tt]|[Rr][Oo])([-_][A-Za-z0-9_-]*)?$"),)),
        ]
        | None
    ) = Field(default=None, description="es, pt, en or ro, optionally with a region (es-MX); defaults from country")
    tax_id: Annotated[str, StringConstraints(max_length=50), _Text(required=False)] | None = None
    preferred_channel: Channel | None = Field(
        default=None, description="Channel the customer asked to be reached on first (email, sms, voice or push)"
    )
    push_token: Annotated[str, StringConstraints(max_length=4096), _Schema((("pattern", r"^[ -~]*$"),))] | None = Field(
        default=None, description="Device registration token for push messages: printable ASCII"
    )
    address: ErpAddress | None = Field(default=None, description="Postal address; Spain and Romania require it")
    registration_id: OptText = Field(default=None, description="Trade register number, e.g. J40/1234/2010")

    @field_validator("country")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value:
            return None
        allow_test = bool((info.context or {}).get("allow_test_domains", False))
        try:
            return validate_email(value, check_deliverability=False, test_environment=allow_test).normalized
        except EmailNotValidError as e:
            # Without email-validator's parenthesised detail: for an IDNA error it quotes a label of
            # the domain, and rejections outlive Kafka (audit trail, ingest_idempotency).
            raise ValueError(str(e).split(" (", 1)[0].rstrip(".") + ".") from e

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value:
            return None
        region = info.data.get("country")  # absent if the country itself was invalid
        try:
            number = phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException as e:
            # The number itself stays out of the reason: rejections are kept in the audit trail,
            # where a customer's contact data may only live encrypted (docs/compliance.md).
            raise ValueError(f"not a phone number ({e._msg})") from e
        if not phonenumbers.is_valid_number(number):
            raise ValueError(f"not a valid phone number for {region}")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    @field_validator("push_token")
    @classmethod
    def _push_token(cls, value: str | None) -> str | None:
        """Tokens of every push service are ASCII; anything else is a corrupted or misplaced value."""
        if not value:
            return None
        bad = next((i for i, char in enumerate(value) if not " " <= char <= "~"), None)
        if bad is not None:
            raise ValueError(f"must be printable ASCII: found U+{ord(value[bad]):04X} at position {bad}")
        return value

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str | None) -> str | None:
        if value is None:
            return None
        lang = value.lower().replace("_", "-").split("-")[0]
        if lang not in LOCALES:
            raise ValueError(f"{value!r} is not one of {', '.join(LOCALES)}")
        return lang


class ErpLine(_Erp):
    description: Annotated[str, StringConstraints(min_length=1, max_length=1000), _Text(multiline=True)]
    quantity: Quantity
    unit_price: Amount
    tax_rate: TaxRate = Decimal("0")
    vat_category: VatCategory | None = Field(
        default=None,
        description="UNTDID 5305: S standard, Z zero rated, E exempt, AE reverse charge, K intra-community, "
        "G export, O not subject, L IGIC, M IPSI. Absent: S above a 0 rate; at 0, E with an exemption "
        "reason, else Z",
    )
    exemption_reason: Annotated[str, StringConstraints(max_length=300), _Text(required=False)] | None = Field(
        default=None, description="Legal basis of an exempt line (E requires it or a code), e.g. 'Art. 20.Uno.3 LIVA'"
    )
    exemption_code: Annotated[str, StringConstraints(max_length=30)] | None = Field(
        default=None,
        pattern=r"^[Vv][Aa][Tt][Ee][Xx]-[A-Za-z]{2}-[A-Za-z0-9-]{1,20}$",
        description="CEF VATEX code, e.g. VATEX-EU-132-1I; AE, K, G and O default to theirs",
    )

    @field_validator("vat_category", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("exemption_reason")
    @classmethod
    def _reason(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("exemption_code")
    @classmethod
    def _code(cls, value: str | None) -> str | None:
        """Whether category, rate and reason agree is ingest's check (it names the field at fault)."""
        return value.upper() if value else None


class ErpDocument(_Erp):
    """A document the ERP produced itself, already uploaded to the documents bucket under its tenant's upload prefix.

    Every key starts with ``<tenant_id>/erp/`` (where ``POST /v1/documents`` stores uploads) and has
    no ``..`` part; any other key is refused.
    """

    s3_key: Key
    xml_s3_key: Key | None = None
    annex_s3_keys: list[Key] = Field(default_factory=list, max_length=20)


class ErpInvoiceV1(_Erp):
    tenant_id: str = Field(pattern=TENANT_PATTERN)
    erp_source: Ident
    invoice_number: InvoiceNumber
    issue_date: date
    due_date: date
    currency: Currency
    seller_name: Name
    customer: ErpCustomer
    lines: list[ErpLine] = Field(min_length=1, max_length=500)
    total: Amount | None = Field(
        default=None,
        description="If given, must match the computed total (±0.01); 0 or more (a credit note is an erp.cancellation)",
    )
    document: ErpDocument | None = Field(
        default=None, description="Send this ERP-produced PDF instead of rendering; every key under <tenant_id>/erp/"
    )
    amendment: bool = Field(
        default=False,
        description="true to replace the version of this invoice number accepted before; without it, "
        "other content under an accepted number is refused as a conflict",
    )
    delivery_date: date | None = Field(default=None, description="Date of supply, when not the issue date")
    seller: ErpSeller | None = Field(default=None, description="Issuer details the tenant's configuration lacks")
    atcud: Annotated[str, StringConstraints(max_length=100)] | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9]{8,70}-[0-9]{1,20}$",
        description="Portugal: ATCUD, '<series validation code>-<sequence number>' (e.g. CSDF7T5H-35)",
    )
    fiscal_qr: Annotated[str, StringConstraints(max_length=2000), _Text(required=False)] | None = Field(
        default=None, description="Text of the fiscal QR code (Portugal: Portaria 195/2020; Spain: VERI*FACTU URL)"
    )
    legal_mentions: list[Annotated[str, StringConstraints(min_length=1, max_length=500), _Text()]] = Field(
        default_factory=list,
        max_length=10,
        description="Statements the law makes the issuer print, e.g. 'Processado por programa certificado n.º 1234/AT'",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _own_documents(cls, data: Any, handler: ModelWrapValidatorHandler[ErpInvoiceV1]) -> ErpInvoiceV1:
        """Each key under another prefix is refused by name, reported with every other problem of the message."""
        return _also_refuse(cls, data, handler, _foreign_keys(data))


class ErpPaymentV1(_Erp):
    tenant_id: str = Field(pattern=TENANT_PATTERN)
    erp_source: Ident
    payment_id: Ident
    invoice_number: InvoiceNumber
    amount: PaymentAmount
    currency: Currency
    paid_at: AwareDatetime
    method: Annotated[str, StringConstraints(min_length=1, max_length=50), _Text()] = "transfer"


#: Keys that carry an amount (our own contracts' ``amount``, ``total``, ``lines``, and any ``*_amount``
#: or ``*_total``). A cancellation has none: it stands for the whole invoice.
_AMOUNT_KEY = r"^(amount|total|lines)$|_(amount|total)$"
_PARTIAL = (
    "a cancellation or credit note covers the whole invoice and carries no amount; "
    "a partial credit note is not a cancellation and cannot be sent here"
)


def _no_amounts(schema: dict[str, Any]) -> None:
    """The JSON Schema side of :meth:`ErpCancellationV1._refuse_amounts` and of the credit note number rule."""
    schema["patternProperties"] = {_AMOUNT_KEY: False}
    schema["if"] = {"properties": {"kind": {"const": "credit_note"}}, "required": ["kind"]}
    schema["then"] = {"properties": {"credit_note_number": {"type": "string"}}, "required": ["credit_note_number"]}
    schema["else"] = {"properties": {"credit_note_number": {"type": "null"}}}


class ErpCancellationV1(_Erp):
    """The ERP cancelled an invoice, or credited all of it with a credit note: its reminders stop.

    Only a *whole* invoice can be cancelled here. A partial credit note leaves money owed, so it is
    not a cancellation: it will be a payment-like adjustment of its own (not supported yet). Since
    this reader otherwise ignores unknown fields, it refuses every key that carries an amount
    (``amount``, ``total``, ``lines``, ``*_amount``, ``*_total``) rather than drop it: read as a
    full cancellation, a partial credit note would silently stop reminders for money still owed.
    """

    model_config = ConfigDict(json_schema_extra=_no_amounts)

    tenant_id: str = Field(pattern=TENANT_PATTERN)
    erp_source: Ident
    invoice_number: InvoiceNumber = Field(description="The invoice cancelled or fully credited")
    kind: Literal["cancellation", "credit_note"]
    credit_note_number: Ident | None = Field(
        default=None, validate_default=True, description="Required for a credit note, absent for a cancellation"
    )
    reason: Annotated[str, StringConstraints(max_length=500), _Text(required=False)] | None = Field(
        default=None, description="Free text for the audit trail; blank is the same as absent"
    )
    cancelled_at: AwareDatetime = Field(description="When the ERP cancelled or credited it, with its UTC offset")

    @field_validator("credit_note_number")
    @classmethod
    def _credit_note_number(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")  # absent if the kind itself was invalid
        if kind == "credit_note" and value is None:
            raise ValueError("required when kind is credit_note")
        if kind == "cancellation" and value is not None:
            raise ValueError("only a credit_note has one; send kind credit_note, or leave it out")
        return value

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="wrap")
    @classmethod
    def _refuse_amounts(cls, data: Any, handler: ModelWrapValidatorHandler[ErpCancellationV1]) -> ErpCancellationV1:
        """Each amount key is refused by name, reported with every other problem of the message."""
        keys = [k for k in data if isinstance(k, str) and re.search(_AMOUNT_KEY, k)] if isinstance(data, dict) else []
        return _also_refuse(cls, data, handler, [_error("partial_credit", _PARTIAL, (key,), data[key]) for key in keys])


def _error(kind: str, message: str, loc: tuple[int | str, ...], value: Any) -> InitErrorDetails:
    """One line of a :class:`ValidationError`, its message kept word for word."""
    return InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)


_M = TypeVar("_M", bound=BaseModel)


def _also_refuse(
    cls: type[_M], data: Any, handler: ModelWrapValidatorHandler[_M], refusals: list[InitErrorDetails]
) -> _M:
    """The model, unless ``refusals`` (rules read from the raw ``data``) or its own validation say otherwise;
    then every problem at once."""
    if not refusals:
        return handler(data)
    try:
        handler(data)
    except ValidationError as e:
        refusals = [_error(d["type"], d["msg"], d["loc"], d["input"]) for d in e.errors()] + refusals
    raise ValidationError.from_exception_data(cls.__name__, refusals)


#: The folder under a tenant's prefix that holds what its ERP uploaded. Everything else under the
#: tenant (rendered PDFs, manifests) is ours: were any tenant key allowed, one customer's invoice
#: could carry another customer's rendered PDF of the same tenant.
UPLOAD_FOLDER = "erp"


def upload_prefix(tenant_id: str) -> str:
    """``<tenant_id>/erp/``: where the tenant's own documents are uploaded, and the only place an
    invoice's ``document`` keys may point to."""
    return f"{tenant_id}/{UPLOAD_FOLDER}/"


def owned_key(tenant_id: str, key: str) -> bool:
    """Whether ``key`` is one of the tenant's uploads: under :func:`upload_prefix`, with no ``..`` to climb out.

    Stricter than the renderer's rule (any key under ``<tenant_id>/``), applied at the door so a key
    of another tenant, or one of our own renders, is refused with the invoice, not after it was accepted.
    """
    return key.startswith(upload_prefix(tenant_id)) and ".." not in key.split("/")


def _foreign_keys(data: Any) -> list[InitErrorDetails]:
    """The document keys of a raw invoice that are not under its tenant's upload prefix, named by field.

    Read before validation (stripped, as the model does), so the refusal comes with the message's
    other problems. Values of the wrong type are left to the model; without a valid tenant there is
    no prefix to compare with, and the tenant's own error says so.
    """
    if not isinstance(data, dict) or not isinstance(document := data.get("document"), dict):
        return []
    tenant = data.get("tenant_id")
    if not isinstance(tenant, str) or not re.fullmatch(TENANT_PATTERN, tenant := tenant.strip()):
        return []
    annexes = document.get("annex_s3_keys")
    keys: list[tuple[tuple[int | str, ...], Any]] = [
        (("document", "s3_key"), document.get("s3_key")),
        (("document", "xml_s3_key"), document.get("xml_s3_key")),
    ]
    keys += [
        (("document", "annex_s3_keys", i), key) for i, key in enumerate(annexes if isinstance(annexes, list) else [])
    ]
    return [
        _error(
            "foreign_document",
            f"{key.strip()!r} is not under this tenant's upload prefix {upload_prefix(tenant)} "
            "(where POST /v1/documents stores the ERP's files)",
            loc,
            key,
        )
        for loc, key in keys
        if isinstance(key, str) and key.strip() and not owned_key(tenant, key.strip())
    ]


ERP_MODELS: dict[str, type[_Erp]] = {
    "erp.invoice.v1": ErpInvoiceV1,
    "erp.payment.v1": ErpPaymentV1,
    "erp.cancellation.v1": ErpCancellationV1,
}


def _undecodable(message: str) -> InvalidMessage:
    return InvalidMessage([FieldError(field="$", message=message)])


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


#: Largest ERP message (uncompressed) by default: below the producer's 1 MiB request limit, so a
#: refused message can be dead-lettered whole, and far above any real invoice (500 lines fill ~150 KiB).
MAX_MESSAGE_BYTES = 512 * 1024


def decode_erp(raw: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """The JSON object an ERP message holds, or :class:`InvalidMessage` naming field ``$``.

    The rules are JSON's own (RFC 8259), read strictly, because whatever else a parser lets
    through would fail later where it can only be retried: UTF-8 only (a leading byte order mark
    is ignored), no ``NaN``/``Infinity``, no ``\\ud800``-style escapes that are not characters, at
    most :data:`MAX_DEPTH` levels of nesting, and an object at the top. Numbers with a fraction or
    an exponent become :class:`~decimal.Decimal`, so an amount sent as a number keeps every digit.
    At most ``max_bytes`` (:data:`MAX_MESSAGE_BYTES` unless the service configures another cap),
    checked before anything is parsed.
    """
    if len(raw) > max_bytes:
        raise _undecodable(f"message is {len(raw)} bytes; at most {max_bytes} are accepted")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _undecodable(f"not valid UTF-8: byte {e.start} ({e.reason})") from e
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise _undecodable("empty message: expected a JSON object")
    try:
        value = json.loads(text, parse_float=Decimal, parse_constant=_no_constant)
    except RecursionError as e:
        raise _undecodable(f"nested deeper than {MAX_DEPTH} levels") from e
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, integers past Python's digit limit
        raise _undecodable(f"not valid JSON: {str(e)[:200]}") from e
    if not isinstance(value, dict):
        raise _undecodable(f"expected a JSON object, got {_json_type(value)}")
    _check_tree(value)
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _check_tree(root: dict[str, Any]) -> None:
    """Refuse nesting past :data:`MAX_DEPTH` and strings that are not Unicode text (lone surrogates).

    Iterative, so the check itself cannot exhaust the stack.
    """
    reasons: list[FieldError] = []
    stack: list[tuple[Any, str, int]] = [(root, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > MAX_DEPTH:
                raise _undecodable(f"nested deeper than {MAX_DEPTH} levels")
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                child_path = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and not _is_text(key):
                    reasons.append(FieldError(field=path or "$", message="a key is not valid Unicode text"))
                    child_path = path or "$"
                stack.append((child, child_path, depth + 1))
        elif isinstance(node, str) and not _is_text(node):
            reasons.append(FieldError(field=path, message="not valid Unicode text (a lone surrogate escape)"))
    if reasons:
        raise InvalidMessage(reasons[:20])


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
