from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from factura.common.ledger import LedgerSettings
from factura.common.settings import LinkSettings, MongoSettings, S3Settings, ServiceSettings


class ProviderSettings(BaseModel):
    """A Twilio-compatible messages API."""

    base_url: str = "https://api.twilio.com"
    account_sid: str = "AC00000000000000000000000000000000"
    auth_token: SecretStr = SecretStr("")
    from_number: str = "+15005550006"
    timeout_s: float = 10.0


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FACTURA_SMS_SENDER_", env_nested_delimiter="__", extra="ignore")

    provider: ProviderSettings = ProviderSettings()
    s3: S3Settings = S3Settings()
    mongo: MongoSettings = MongoSettings()
    ledger: LedgerSettings = LedgerSettings()
    links: LinkSettings = LinkSettings()
    tenants_dir: Path | None = Field(default=None, description="Per-tenant configs (white-label link domain)")
