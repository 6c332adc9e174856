from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from factura.common.ledger import LedgerSettings
from factura.common.settings import MongoSettings, S3Settings, ServiceSettings


class SmtpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 25
    username: str | None = None
    password: SecretStr | None = None
    start_tls: bool = False
    timeout_s: float = Field(default=30.0, description="Per SMTP command, and for the whole readiness probe")
    local_hostname: str | None = Field(default=None, description="Name sent in EHLO; default: this host's FQDN")
    from_address: str = "invoices@factura.example"
    from_name: str = "Factura"


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FACTURA_EMAIL_SENDER_", env_nested_delimiter="__", extra="ignore")

    smtp: SmtpSettings = SmtpSettings()
    s3: S3Settings = S3Settings()
    mongo: MongoSettings = MongoSettings()
    ledger: LedgerSettings = LedgerSettings()
    tenants_dir: Path | None = Field(default=None, description="Per-tenant configs (sender identity)")
