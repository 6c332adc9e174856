from pydantic_settings import SettingsConfigDict

from factura.common.settings import MongoSettings, ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FACTURA_AUDIT_", env_nested_delimiter="__", extra="ignore")

    mongo: MongoSettings = MongoSettings()
