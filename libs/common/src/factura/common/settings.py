"""Settings pattern shared by every service.

Each service subclasses :class:`ServiceSettings` and gives it its own ``env_prefix``
(``FACTURA_RENDERER_``, ...). Nested groups use ``__``: ``FACTURA_RENDERER_KAFKA__BOOTSTRAP_SERVERS``.
Defaults are safe for production (acks=all, idempotent producer); the devstack overrides
what its local servers cannot do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, Field, SecretBytes, SecretStr, model_validator
from pydantic_settings import BaseSettings, NestedSecretsSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

#: Directory of mounted secret files, one file per setting named like its environment variable
#: (``/run/secrets/FACTURA_RENDERER_S3__SECRET_ACCESS_KEY``). The environment wins over a file.
SECRETS_DIR_ENV = "FACTURA_SECRETS_DIR"
#: Every secret the devstack hands out carries this marker, so a copied devstack value is caught.
DEVSTACK_MARKER = "devstack-only-"
#: Set to ``1`` by the devstack's environment builder only: the one place devstack secrets are allowed.
DEVSTACK_ENV = "FACTURA_DEVSTACK"


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = Field(default="", description="Prepended to every physical topic name.")
    idempotence: bool = Field(
        default=True, description="Idempotent producer; Tansu cannot do InitProducerId, so devstack turns it off."
    )
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    rebalance_timeout_ms: int = 10_000
    leave_group_on_stop: bool = Field(
        default=True,
        description=(
            "A graceful stop sends LeaveGroup, so the group rebalances at once, not after the session "
            "timeout. Off for Tansu 0.6 (the devstack and tests): a LeaveGroup while another member "
            "joins wedges the group for good; a member that just goes silent expires cleanly."
        ),
    )
    max_poll_records: int = 100
    poll_timeout_ms: int = 500
    linger_ms: int = Field(
        default=0,
        ge=0,
        description=(
            "How long a producer holds a record to batch it with others. Records sent while a request "
            "is in flight batch anyway; every publish is awaited, so a linger adds to each hop."
        ),
    )
    fetch_max_wait_ms: int = Field(
        default=500,
        ge=0,
        description=(
            "Longest a fetch waits on the broker for data. Kafka answers as soon as data arrives; a "
            "broker that does not wake waiting fetches (the local Tansu) adds this much per hop."
        ),
    )
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
    """Where documents live. No keys by default: unset, the AWS credential chain applies (environment,
    web identity / IRSA, ECS or instance profile), so production needs no long-lived key at all."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    bucket: str = "factura-documents"
    access_key_id: str | None = Field(default=None, description="Static key id; none: the AWS credential chain")
    secret_access_key: SecretStr | None = Field(default=None, description="Set together with access_key_id")

    @model_validator(mode="after")
    def _keys_in_pairs(self) -> Self:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("s3.access_key_id and s3.secret_access_key are set together or not at all")
        return self


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


class PiiSettings(BaseModel):
    """Where the tenant KEKs that wrap customers' data keys come from (factura.common.pii). Every service
    that encrypts or reads contact data in the shared ``customer_keys`` collection needs the same KEKs."""

    keys_dir: Path | None = Field(
        default=None,
        description="Tenant KEK files (<tenant>.kek) wrapping customers' data keys: the factura-pii-keys Secret",
    )
    secret: SecretStr | None = Field(
        default=None,
        min_length=32,
        description="Without keys_dir: every tenant's KEK derived from this secret (development only)",
    )
    cache_ttl_s: float = Field(
        default=30.0, ge=0, le=600, description="How long an unwrapped customer data key is cached in memory"
    )
    webhook_log_days: int = Field(
        default=30,
        ge=1,
        le=366,
        description="How long the senders keep refused webhook bodies (masked, but not tied to a customer to erase)",
    )


def secret_values(value: object, path: str = "") -> Iterator[tuple[str, str]]:
    """``(field path, secret value)`` for every secret inside a settings value, however deeply nested."""
    if isinstance(value, SecretStr):
        yield path, value.get_secret_value()
    elif isinstance(value, SecretBytes):
        yield path, value.get_secret_value().decode("utf-8", "replace")
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from secret_values(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from secret_values(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from secret_values(item, f"{path}[{key!r}]")


class MetricsSettings(BaseModel):
    """What ``/metrics`` exposes beyond the fixed catalogue (docs/operations.md)."""

    tenant_labels: list[str] = Field(
        default=[],
        description="Tenants that get their own `tenant` label value; every other tenant is counted as `other`. "
        "Keep it small: each tenant listed multiplies the series of every tenant-labelled metric.",
    )


class ServiceSettings(BaseSettings):
    """Fields every service has; subclasses set ``env_prefix`` and add their own.

    Every setting, secrets included, comes from the environment or from a file in the directory
    named by ``FACTURA_SECRETS_DIR`` (a mounted Kubernetes Secret): the file is named like the
    variable, nested groups included (``FACTURA_SMS_SENDER_PROVIDER__AUTH_TOKEN``). A secret carrying
    the devstack's marker is refused unless ``FACTURA_DEVSTACK=1``, so no devstack value reaches
    production by copy and paste.
    """

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="ignore")

    log_level: str = "INFO"
    kafka: KafkaSettings = KafkaSettings()
    http: HttpSettings = HttpSettings()
    metrics: MetricsSettings = MetricsSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The stock secrets source reads only top-level fields; the nested one reads ``S3__...`` files too.

        A ``FACTURA_SECRETS_DIR`` that does not exist stops the start: a missing mount must not
        silently leave every secret unset.
        """
        secrets = NestedSecretsSettingsSource(
            file_secret_settings, secrets_dir=os.environ.get(SECRETS_DIR_ENV) or None, secrets_dir_missing="error"
        )
        return init_settings, env_settings, dotenv_settings, secrets

    @model_validator(mode="after")
    def _no_devstack_secrets(self) -> Self:
        if os.environ.get(DEVSTACK_ENV) == "1":
            return self
        for path, secret in secret_values(self):
            if DEVSTACK_MARKER in secret:
                raise ValueError(
                    f"{path} holds a devstack secret (it contains {DEVSTACK_MARKER!r}); set a real one, "
                    f"or {DEVSTACK_ENV}=1 if this really is the devstack"
                )
        return self
