from pydantic_settings import SettingsConfigDict

from factura.common.settings import S3Settings, ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FACTURA_RENDERER_", env_nested_delimiter="__", extra="ignore")

    s3: S3Settings = S3Settings()
