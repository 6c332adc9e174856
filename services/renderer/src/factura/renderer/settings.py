from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from factura.common.settings import LinkSettings, MongoSettings, S3Settings, ServiceSettings


class RenderLimits(BaseModel):
    """Guards that turn a hostile or absurd invoice into a rejection instead of a stuck worker."""

    max_lines: int = Field(default=200, ge=1)
    max_text_bytes: int = Field(default=256 * 1024, ge=1024, description="All invoice text fields together")
    max_pages: int = Field(default=20, ge=1)
    max_supplied_bytes: int = Field(default=20 * 1024 * 1024, description="Largest ERP-supplied document accepted")
    max_worker_crashes: int = Field(
        default=3, ge=2, description="Consecutive render-worker deaths with an invoice in flight before it is rejected"
    )


class TrackingSettings(BaseModel):
    """How hits on public links become tracking events (see factura.renderer.tracking)."""

    scanner_window_s: float = Field(
        default=10.0, ge=0, description="A hit this soon after the link was minted is a mail gateway's scan"
    )
    dedupe_window_s: int = Field(
        default=60, ge=1, description="Per link and client, one event per window of this many seconds"
    )
    max_events_per_link_per_hour: int = Field(
        default=20, ge=1, description="Events per link and hour, counted apart for people and machines"
    )


class TsaSettings(BaseModel):
    """The RFC 3161 time-stamping authority for tenants whose ``[signing]`` asks for timestamps."""

    url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="TSA endpoint (application/timestamp-query); unset: tenants with timestamp = true stop startup",
    )
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="Per TSA request; a timeout pauses rendering")
    ca_file: Path | None = Field(
        default=None,
        description="PEM trust anchors for the TSA certificate; set, a token from any other TSA counts as a bad answer",
    )


class SigningSettings(BaseModel):
    """Where the tenants' signing secrets (PKCS#12, passphrase files) are mounted."""

    secrets_dir: Path | None = Field(
        default=None, description="Folder of <tenant_id>/<file> signing secrets; the tenant folder is tried after"
    )


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FACTURA_RENDERER_", env_nested_delimiter="__", extra="ignore")

    s3: S3Settings = S3Settings()
    links: LinkSettings = LinkSettings()
    mongo: MongoSettings = MongoSettings()
    tracking: TrackingSettings = TrackingSettings()
    limits: RenderLimits = RenderLimits()
    tsa: TsaSettings = TsaSettings()
    signing: SigningSettings = SigningSettings()
    tenants_dir: Path | None = Field(default=None, description="Folder of per-tenant configs (see docs/documents.md)")
    workers: int = Field(default=0, ge=0, description="Render processes; 0 = one per CPU core")
