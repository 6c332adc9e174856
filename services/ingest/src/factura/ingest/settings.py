from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from factura.common.settings import MongoSettings, ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FACTURA_INGEST_", env_nested_delimiter="__", extra="ignore")

    mongo: MongoSettings = MongoSettings()
    tenants_dir: Path | None = Field(
        default=None, description="Per-tenant configs (whether to learn the most effective channel)"
    )
    allow_test_email_domains: bool = Field(
        default=False, description="Accept customer emails under the reserved .test TLD (local stacks, demos)."
    )
