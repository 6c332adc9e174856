from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from factura.common.ledger import LedgerSettings
from factura.common.settings import LinkSettings, MongoSettings, PiiSettings, ServiceSettings
from factura.common.tls import TlsSettings


class ProviderSettings(BaseModel):
    """A Twilio-compatible messages API."""

    base_url: str = "https://api.twilio.com"
    account_sid: str = "AC00000000000000000000000000000000"
    auth_token: SecretStr = SecretStr("")
    from_number: str = "+15005550006"
    timeout_s: float = 10.0


class VoiceSettings(ProviderSettings):
    """A Twilio-compatible Calls API: the same fields as the SMS account, often with the same values.

    Kept apart so calls can come from their own voice-capable number or account.
    """


class PushSettings(BaseModel):
    """Firebase Cloud Messaging, HTTP v1 API.

    FCM wants a short-lived OAuth 2 access token of a service account (scope
    ``firebase.messaging``), not a static key. This service does not mint it: a sidecar (or the
    platform's workload identity agent) keeps a fresh one in ``access_token_file``, which is re-read
    whenever it changes; ``access_token`` is for a token that outlives the process (tests, the
    devstack).
    """

    base_url: str = "https://fcm.googleapis.com"
    project_id: str = ""
    access_token: SecretStr = SecretStr("")
    access_token_file: Path | None = None
    timeout_s: float = 10.0


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FACTURA_SMS_SENDER_", env_nested_delimiter="__", extra="ignore")

    provider: ProviderSettings = ProviderSettings()
    voice: VoiceSettings = VoiceSettings()
    push: PushSettings = PushSettings()
    provider_tls: TlsSettings = Field(
        default_factory=TlsSettings, description="How the SMS, voice and push APIs' certificates are checked"
    )
    status_callback_url: str | None = Field(
        default=None,
        description="Public URL of /v1/webhooks/sms-status as the provider calls it; none: no status callbacks",
    )
    mongo: MongoSettings = MongoSettings()
    ledger: LedgerSettings = LedgerSettings()
    links: LinkSettings = LinkSettings()
    tenants_dir: Path | None = Field(default=None, description="Per-tenant configs (names, policy, link domain)")
    pii: PiiSettings = Field(
        default_factory=PiiSettings, description="Tenant KEKs encrypting contact data in the delivery ledger"
    )
