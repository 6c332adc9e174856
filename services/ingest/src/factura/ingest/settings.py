from pydantic_settings import SettingsConfigDict

from factura.common.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FACTURA_INGEST_", env_nested_delimiter="__", extra="ignore")
