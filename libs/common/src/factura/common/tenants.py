"""Per-tenant configuration: versioned files, one folder per tenant.

Why files: a tenant's branding and legal identity change rarely, must be reviewed, and must be
reproducible for an invoice issued years ago. So they live in version control:

    <tenants_dir>/<tenant_id>/tenant.toml      settings below
    <tenants_dir>/<tenant_id>/<logo file>      referenced by branding.logo
    <tenants_dir>/<tenant_id>/templates/       optional Jinja2 overrides (same names as the defaults)

Each config's ``version`` is the sha256 of its folder's files, recorded in every rendered event,
so compliance can tell which branding and legal text a document was issued with. A tenant
without a folder gets :meth:`TenantConfig.default`: a clean, neutral document.
"""

from __future__ import annotations

import hashlib
import string
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from factura.common.delivery.policy import ChannelPolicy
from factura.common.envelope import TENANT_PATTERN
from factura.common.events import Email, InvoiceCreatedV1, InvoiceSummary
from factura.common.reminders import ReminderPlan

HEX_COLOR = r"^#[0-9a-fA-F]{6}$"
#: Placeholders a payment URL template may use.
PAYMENT_PLACEHOLDERS = frozenset({"tenant_id", "invoice_number", "total", "currency", "customer_id"})


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Branding(_Config):
    display_name: str | None = Field(default=None, max_length=200)
    logo: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+\.(png|svg|jpg|jpeg)$")
    primary_color: str = Field(default="#1f6feb", pattern=HEX_COLOR)
    text_color: str = Field(default="#1f2933", pattern=HEX_COLOR)
    font_family: str = Field(default="DejaVu Sans", pattern=r"^[A-Za-z0-9 -]{1,60}$")
    legal_footer: str = Field(default="", max_length=2000)


class Seller(_Config):
    """The legal issuer, as the e-invoice XML and the legal footer need it."""

    legal_name: str = Field(min_length=1, max_length=300)
    vat_id: str = Field(
        pattern=r"^[A-Z]{2}[A-Z0-9+*.]{2,28}$", description="VAT identifier with country prefix, e.g. ESB12345678"
    )
    street: str = Field(min_length=1, max_length=200)
    city: str = Field(min_length=1, max_length=100)
    postcode: str = Field(min_length=1, max_length=20)
    country: str = Field(pattern=r"^[A-Z]{2}$")
    email: str | None = Field(default=None, max_length=320)
    iban: str | None = Field(default=None, pattern=r"^[A-Z]{2}[0-9]{2}[A-Z0-9]{10,30}$")


class Sender(_Config):
    """Who the customer sees as the sender: only ever from here, never from ERP-supplied text."""

    from_name: str = Field(min_length=1, max_length=200)
    from_address: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    reply_to: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$")


class AuditPolicy(_Config):
    """How long the audit trail keeps each class of record, and who gets the daily summary.

    Fiscal records (an invoice's issue, delivery and payment) are kept for the period tax law asks
    (10 years by default); engagement (opens, clicks, downloads) and API access records for less;
    the contact data inside fiscal records (encrypted per customer) for ``contact_days`` after the
    customer was last seen, if set.
    """

    fiscal_days: int = Field(default=3650, ge=365, le=36500, description="Issue, delivery, payment records")
    engagement_days: int = Field(default=730, ge=1, le=36500, description="Opens, clicks and downloads")
    access_days: int = Field(default=730, ge=1, le=36500, description="Who queried the audit API")
    contact_days: int | None = Field(
        default=None,
        ge=30,
        le=36500,
        description="A customer's contact data (name, email, phone, push token, address) is erased this many days "
        "after the last record that carried it (its data key destroyed; fiscal fields stay); unset: kept as long "
        "as the fiscal records",
    )
    owner_email: Email | None = Field(default=None, description="The process owner who gets the daily summary")
    daily_report_hour: int = Field(default=7, ge=0, le=23, description="Local hour the daily summary is sent")


#: A file name in the signing secrets folder or the tenant's folder: no path, no leading dot.
SECRET_FILE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$"


class SigningPolicy(_Config):
    """``[signing]``: PAdES signature and RFC 3161 timestamps on the tenant's rendered PDFs.

    The section's presence opts in (docs/signing.md). ``enabled`` signs with the tenant's
    certificate (PKCS#12, RSA key); ``timestamp`` asks the renderer's TSA for a timestamp in the
    signature (PAdES B-T) and a detached token over the final PDF. ``enabled = false`` with
    ``timestamp = true`` timestamps without signing; ``timestamp = false`` signs PAdES B-B and
    never calls a TSA. Secrets are named here, never written here: the PKCS#12 file and the
    passphrase file are looked up in the renderer's signing secrets folder (``<tenant_id>/<name>``),
    then in the tenant's folder.
    """

    enabled: bool = Field(default=True, description="Sign rendered PDFs with the tenant's certificate")
    timestamp: bool = Field(default=True, description="RFC 3161 timestamps from the renderer's TSA (B-T + token)")
    pkcs12: str | None = Field(default=None, pattern=SECRET_FILE_NAME, description="PKCS#12 file: key + certificate")
    passphrase_file: str | None = Field(
        default=None, pattern=SECRET_FILE_NAME, description="File holding the passphrase"
    )
    passphrase_env: str | None = Field(
        default=None, pattern=r"^[A-Z_][A-Z0-9_]{0,99}$", description="Environment variable holding the passphrase"
    )
    reason: str | None = Field(default=None, max_length=200, description="Reason recorded in the signature")
    location: str | None = Field(default=None, max_length=200, description="Location recorded in the signature")

    @model_validator(mode="after")
    def _complete(self) -> SigningPolicy:
        if self.enabled and self.pkcs12 is None:
            raise ValueError("signing.enabled needs signing.pkcs12 (the certificate and key file)")
        if self.passphrase_file is not None and self.passphrase_env is not None:
            raise ValueError("give signing.passphrase_file or signing.passphrase_env, not both")
        return self


#: The WeasyPrint engine's template, which a tenant may override in its ``templates/`` folder.
HTML_TEMPLATE: Final = "invoice.html.j2"


class TenantConfig(_Config):
    tenant_id: str = Field(pattern=TENANT_PATTERN)
    version: str = "default"
    directory: Path | None = None
    branding: Branding = Branding()
    seller: Seller | None = None
    sender: Sender | None = None
    payment_url_template: str | None = Field(
        default=None, description="e.g. https://pay.example.com/{tenant_id}/{invoice_number}?amount={total}"
    )
    einvoice: Literal["none", "factur-x-en16931"] = "none"
    engine: Literal["weasyprint", "typst"] = Field(
        default="typst",
        description="Render engine: typst (invoice.typ, several times faster, tagged PDF/UA-1) or weasyprint "
        "(HTML/CSS templates, invoice.html.j2); both render the same view model. Unset: weasyprint for a "
        "tenant whose folder overrides the HTML template, typst otherwise",
    )
    packaging: Literal["pdf", "zip"] = "pdf"
    retention_days: int = Field(default=3650, ge=1, le=36500)
    links_base_url: str | None = Field(default=None, pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]+)?(/[A-Za-z0-9._/-]*)?$")
    delivery: ChannelPolicy = Field(default_factory=ChannelPolicy, description="Channels, fallback, tracking")
    reminders: ReminderPlan = Field(
        default_factory=ReminderPlan, description="Reminder steps, send window, repetition, escalation, ticket"
    )
    audit: AuditPolicy = Field(default_factory=AuditPolicy, description="Retention per record class, daily summary")
    signing: SigningPolicy | None = Field(default=None, description="PAdES signature and timestamps; None = neither")

    @model_validator(mode="before")
    @classmethod
    def _engine_of_own_template(cls, data: Any) -> Any:
        """A tenant that wrote its own HTML template keeps WeasyPrint unless it names an engine, so
        making Typst the default changed no tenant's documents."""
        if not isinstance(data, dict) or "engine" in data or data.get("directory") is None:
            return data
        own_html = (Path(data["directory"]) / "templates" / HTML_TEMPLATE).is_file()
        return data | {"engine": "weasyprint"} if own_html else data

    @field_validator("payment_url_template")
    @classmethod
    def _placeholders(cls, value: str | None) -> str | None:
        if value is None:
            return None
        used = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        unknown = used - PAYMENT_PLACEHOLDERS
        if unknown:
            raise ValueError(f"unknown placeholders {sorted(unknown)}; allowed: {sorted(PAYMENT_PLACEHOLDERS)}")
        if not value.startswith("https://") and not value.startswith("http://"):
            raise ValueError("must be an http(s) URL")
        return value

    def payment_url(self, invoice: InvoiceCreatedV1 | InvoiceSummary) -> str | None:
        """The tenant's payment link with this invoice's values, each URL-encoded (they are untrusted)."""
        if self.payment_url_template is None:
            return None
        values = {
            "tenant_id": self.tenant_id,
            "invoice_number": invoice.invoice_number,
            "total": str(invoice.total),
            "currency": invoice.currency,
            "customer_id": invoice.customer.customer_id,
        }
        return self.payment_url_template.format(**{k: quote(v, safe="") for k, v in values.items()})

    @property
    def display_name(self) -> str | None:
        """How messages name the tenant (SMS, voice, subjects): configured text only."""
        return self.branding.display_name or (self.sender.from_name if self.sender else None)

    @classmethod
    def default(cls, tenant_id: str) -> TenantConfig:
        return cls(tenant_id=tenant_id)

    def asset(self, name: str) -> Path | None:
        """A file from the tenant's folder (logo), or None."""
        if self.directory is None:
            return None
        path = self.directory / name
        return path if path.is_file() else None


#: Ids no tenant may have: ``unidentified`` is audit's chain for records that name no tenant.
RESERVED_TENANT_IDS = frozenset({"unidentified"})


class TenantConfigError(ValueError):
    pass


def _version(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


class TenantDirectory:
    """All tenant configs, loaded and validated once at startup (a bad file stops the service)."""

    def __init__(self, root: Path | None) -> None:
        self._configs: dict[str, TenantConfig] = {}
        if root is None:
            return
        if not root.is_dir():
            raise TenantConfigError(f"tenants directory {root} does not exist")
        for folder in sorted(p for p in root.iterdir() if (p / "tenant.toml").is_file()):
            path = folder / "tenant.toml"
            if folder.name in RESERVED_TENANT_IDS:
                raise TenantConfigError(f"{path}: the tenant id {folder.name!r} is reserved by audit")
            try:
                raw = tomllib.loads(path.read_text(encoding="utf-8"))
                config = TenantConfig.model_validate(
                    raw | {"tenant_id": folder.name, "version": _version(folder), "directory": folder.resolve()}
                )
            except (tomllib.TOMLDecodeError, ValidationError) as e:
                raise TenantConfigError(f"{path}: {e}") from e
            if config.branding.logo and config.asset(config.branding.logo) is None:
                raise TenantConfigError(f"{path}: branding.logo {config.branding.logo!r} is not in {folder}")
            if config.einvoice != "none" and config.seller is None:
                raise TenantConfigError(f"{path}: einvoice needs a [seller] section (legal identity for the XML)")
            self._configs[folder.name] = config

    def get(self, tenant_id: str) -> TenantConfig:
        return self._configs.get(tenant_id) or TenantConfig.default(tenant_id)

    def __iter__(self) -> Iterator[TenantConfig]:
        return iter(self._configs.values())
