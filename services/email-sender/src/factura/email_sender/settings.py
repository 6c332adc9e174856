from pathlib import Path
from typing import Final, Literal, Self

from pydantic import BaseModel, Field, FilePath, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from factura.common.delivery.api import AdminSettings
from factura.common.ledger import LedgerSettings
from factura.common.settings import LinkSettings, MongoSettings, PiiSettings, S3Settings, ServiceSettings
from factura.common.webhooks import WebhookSettings

#: The usual port for each way of securing the connection (RFC 8314: 465 is implicit TLS).
DEFAULT_PORTS: Final[dict[str, int]] = {"none": 25, "starttls": 587, "tls": 465}


class SmtpSettings(BaseModel):
    """How the sender reaches its relay (``FACTURA_EMAIL_SENDER_SMTP__*``).

    The default ``security="none"`` fits the devstack's local capture relay only: a real relay
    (SES, Postfix, a provider) is reached with ``starttls`` or ``tls``, with the certificate
    checked. Credentials never cross a plain connection unless ``allow_plaintext_auth`` says so.

    Every check that can fail is a field validator, never a model one: a model-level error would
    print the whole input, password included, into the startup log.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=25, description="Default: 25, 587 or 465 after `security`")
    security: Literal["none", "starttls", "tls"] = Field(
        default="none",
        description="tls: TLS from the first byte (SMTPS, 465); starttls: upgrade, required (587); "
        "none: plain, for a relay on this host or pod only",
    )
    start_tls: bool | None = Field(
        default=None, exclude=True, description="Deprecated (before `security`): true means security=starttls"
    )
    verify_certificate: bool = Field(
        default=True, description="Check the relay's certificate chain and host name; false is for development only"
    )
    ca_file: FilePath | None = Field(
        default=None,
        description="PEM bundle of the CAs to trust instead of the system's (e.g. a private relay's CA); "
        "concatenate bundles to trust several",
    )
    client_cert: FilePath | None = Field(default=None, description="PEM certificate for mutual TLS")
    client_key: FilePath | None = Field(default=None, description="PEM key of client_cert, if not inside it")
    allow_plaintext_auth: bool = Field(
        default=False, description="Allow username/password over security=none (sent in clear)"
    )
    password: SecretStr | None = None
    username: str | None = Field(default=None, validate_default=True)  # after password: checks it
    timeout_s: float = Field(
        default=30.0, description="Per SMTP command, per lookup request, and for the whole readiness probe"
    )
    lookup_url: str | None = Field(
        default=None,
        description="Base URL of the relay's Mailpit-compatible message search (`/api/v1/search`), asked before "
        "a retried delivery sends again whether an earlier attempt's message was accepted (found: recorded "
        "as delivered, not sent again); its certificate is checked like the relay's. Unset: not asked (a "
        "relay without such an API, e.g. Postfix or SES: the duplicate window documented in the ledger stays)",
    )
    local_hostname: str | None = Field(default=None, description="Name sent in EHLO; default: this host's FQDN")
    from_address: str = "invoices@factura.example"
    from_name: str = "Factura"

    @field_validator("lookup_url")
    @classmethod
    def _lookup_is_http(cls, url: str | None) -> str | None:
        if not url:  # an empty env var means "not asked"
            return None
        if not url.startswith(("http://", "https://")):
            raise ValueError("lookup_url must be an http:// or https:// URL")
        return url.rstrip("/")

    @field_validator("start_tls")
    @classmethod
    def _start_tls_agrees(cls, start_tls: bool | None, info: ValidationInfo) -> bool | None:
        if start_tls and info.data.get("security") == "tls":
            raise ValueError("start_tls=true contradicts security='tls'; set security only")
        return start_tls

    @field_validator("client_key")
    @classmethod
    def _key_has_cert(cls, client_key: Path | None, info: ValidationInfo) -> Path | None:
        if client_key is not None and info.data.get("client_cert") is None:
            raise ValueError("client_key needs client_cert")
        return client_key

    @field_validator("username")
    @classmethod
    def _no_clear_text_credentials(cls, username: str | None, info: ValidationInfo) -> str | None:
        if not username:  # an empty env var means "no login"
            if info.data.get("password") is not None:
                raise ValueError("password is set but username is not")
            return None
        plain = info.data.get("security") == "none" and not info.data.get("start_tls")
        if plain and not info.data.get("allow_plaintext_auth"):
            raise ValueError(
                "username/password over security='none' would cross the network in clear: "
                "use security='starttls' or 'tls', or set allow_plaintext_auth=true for a relay on this host"
            )
        return username

    @model_validator(mode="after")
    def _resolve_defaults(self) -> Self:
        """The old ``start_tls=true`` becomes ``security="starttls"``; an unset port follows ``security``."""
        if self.start_tls and self.security == "none":
            self.security = "starttls"
        if "port" not in self.model_fields_set:
            self.port = DEFAULT_PORTS[self.security]
        return self


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FACTURA_EMAIL_SENDER_", env_nested_delimiter="__", extra="ignore")

    smtp: SmtpSettings = SmtpSettings()
    s3: S3Settings = S3Settings()
    mongo: MongoSettings = MongoSettings()
    ledger: LedgerSettings = LedgerSettings()
    links: LinkSettings = LinkSettings()
    webhooks: WebhookSettings = Field(
        default_factory=WebhookSettings, description="Who may post bounce reports (HMAC secrets, bearer tokens)"
    )
    admin: AdminSettings = Field(default_factory=AdminSettings, description="Who may list and lift suppressions")
    tenants_dir: Path | None = Field(default=None, description="Per-tenant configs (identity, policy, branding)")
    pii: PiiSettings = Field(
        default_factory=PiiSettings, description="Tenant KEKs encrypting contact data in the delivery ledger"
    )
