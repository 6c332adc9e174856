"""Settings pattern shared by every service.

Each service subclasses :class:`ServiceSettings` and gives it its own ``env_prefix``
(``FACTURA_RENDERER_``, ...). Nested groups use ``__``: ``FACTURA_RENDERER_KAFKA__BOOTSTRAP_SERVERS``.
Defaults are safe for production (acks=all, idempotent producer); the devstack overrides
what its local servers cannot do.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, Field, SecretStr, model_validator
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
    max_buffered_records: int = Field(
        default=2000, description="Records waiting in one partition's worker before fetching it pauses."
    )
    commit_interval_s: float = Field(default=0.5, gt=0, description="How often handled offsets are committed.")
    handler_timeout_s: float = Field(
        default=120.0, gt=0, description="Deadline of one handler call; past it the attempt counts as a bug."
    )
    drain_timeout_s: float = Field(
        default=8.0, gt=0, description="On revoke or stop, how long the record in hand may finish (< rebalance)."
    )
    lag_interval_s: float = Field(default=5.0, gt=0, description="How often per-partition lag is measured.")
    liveness_s: float = Field(default=30.0, gt=0, description="The poll loop must turn within this to be live.")
    retry_initial_s: float = Field(default=0.2, description="First backoff after a failed attempt.")
    retry_max_s: float = Field(default=10.0, description="Backoff cap (an outage is retried at this pace).")
    retry_max_attempts: int = Field(
        default=4, ge=1, description="Attempts before a message that hits a bug goes to the DLQ (outages never do)."
    )
    dlq_limit_consecutive: int | None = Field(
        default=50, description="Consecutive dead-letters that stop the consumer (arroyo's DlqLimit); None: no limit."
    )
    # Connection security (every client gets it from factura.common.kafka.connection.client_kwargs).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="SASL_SSL against Strimzi's TLS listener; PLAINTEXT only for a local broker."
    )
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    sasl_username: str | None = Field(default=None, description="The service's KafkaUser (e.g. factura-ingest).")
    sasl_password: SecretStr | None = Field(
        default=None, description="The KafkaUser Secret's `password` key (env or a file in FACTURA_SECRETS_DIR)."
    )
    ssl_ca_file: str | None = Field(
        default=None, description="CA bundle to trust (Strimzi: <cluster>-cluster-ca-cert, ca.crt); none: system CAs."
    )

    @model_validator(mode="after")
    def _sasl_complete(self) -> Self:
        protocol = self.security_protocol
        sasl = protocol.startswith("SASL_")
        if sasl and (not self.sasl_username or self.sasl_password is None):
            raise ValueError(f"kafka.security_protocol {protocol} needs sasl_username and sasl_password")
        if not sasl and (self.sasl_username or self.sasl_password is not None):
            raise ValueError(f"kafka.sasl_* is set but kafka.security_protocol {protocol} does not use SASL")
        if self.ssl_ca_file is not None and not protocol.endswith("SSL"):
            raise ValueError(f"kafka.ssl_ca_file is set but kafka.security_protocol {protocol} has no TLS")
        return self


class MongoSettings(BaseModel):
    url: str = "mongodb://127.0.0.1:27017"
    database: str = "factura"


class HttpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    health_deadline_s: float = Field(default=2.0, gt=0, description="Each readiness check must answer within this.")


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
    pseudonym_secret: SecretStr = Field(
        default=SecretStr(""),
        description="Key of the client-address pseudonyms in tracking events; required where hits are recorded",
    )
    minimal_user_agent: bool = Field(
        default=False, description="Record only the user-agent class in tracking events, never the raw string"
    )


class ServiceSettings(BaseSettings):
    """Fields every service has; subclasses set ``env_prefix`` and add their own."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="ignore")

    log_level: str = "INFO"
    kafka: KafkaSettings = KafkaSettings()
    http: HttpSettings = HttpSettings()
