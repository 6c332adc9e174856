"""Settings pattern shared by every service.

Each service subclasses :class:`ServiceSettings` and gives it its own ``env_prefix``
(``FACTURA_RENDERER_``, ...). Nested groups use ``__``: ``FACTURA_RENDERER_KAFKA__BOOTSTRAP_SERVERS``.
Defaults are safe for production (acks=all, idempotent producer); the devstack overrides
what its local servers cannot do.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = Field(default="", description="Prepended to every physical topic name.")
    idempotence: bool = Field(
        default=True, description="Idempotent producer; Tansu cannot do InitProducerId, so devstack turns it off."
    )
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    rebalance_timeout_ms: int = 10_000
    max_poll_records: int = 100
    poll_timeout_ms: int = 500
    retry_initial_s: float = Field(default=0.2, description="First backoff for a transient handler error.")
    retry_max_s: float = Field(default=10.0, description="Backoff cap.")
    retry_max_attempts: int = Field(
        default=8, description="Attempts before a message that keeps failing goes to the DLQ (never lost)."
    )


class MongoSettings(BaseModel):
    url: str = "mongodb://127.0.0.1:27017"
    database: str = "factura"


class HttpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000


class S3Settings(BaseModel):
    endpoint_url: str | None = None
    region: str = "us-east-1"
    bucket: str = "factura-documents"
    access_key_id: str = "factura"
    secret_access_key: SecretStr = SecretStr("factura")


class LinkSettings(BaseModel):
    """Signed download links (HMAC-SHA256). The secret is shared by signers and the download endpoint."""

    secret: SecretStr = SecretStr("")
    base_url: str = Field(default="http://127.0.0.1:8102", description="Default public base; tenants may override")
    ttl_s: int = Field(default=30 * 24 * 3600, ge=60)


class ServiceSettings(BaseSettings):
    """Fields every service has; subclasses set ``env_prefix`` and add their own."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="ignore")

    log_level: str = "INFO"
    kafka: KafkaSettings = KafkaSettings()
    http: HttpSettings = HttpSettings()
