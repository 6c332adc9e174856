import os
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from factura.audit.checkpoints import Keyring
from factura.common.settings import MongoSettings, PiiSettings, S3Settings, ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FACTURA_AUDIT_", env_nested_delimiter="__", extra="ignore")

    mongo: MongoSettings = MongoSettings()
    s3: S3Settings | None = Field(
        default=None, description="Where rendered documents are (read only, for evidence bundles); none: hashes only"
    )
    signing_key_file: Path | None = Field(
        default=None, description="Ed25519 private key (PKCS#8 PEM) that signs chain checkpoints; required to run"
    )

    retired_public_keys: list[Path] = Field(
        default_factory=list, description="Public keys (PEM) of earlier signing keys: their checkpoints stay valid"
    )
    verify_cache_s: float = Field(default=60.0, ge=0, description="How long a chain's verification result is reused")

    def keyring(self, current: Path | None = None) -> Keyring:
        """The signing key's public half (or ``current``, a public key file) and every retired key."""
        return Keyring.from_files(current or self.signer_path(), self.retired_public_keys)

    def signer_path(self) -> Path:
        """The signing key file; audit refuses to run (or verify) without one, never signs with a default."""
        if self.signing_key_file is None:
            raise ValueError(
                "FACTURA_AUDIT_SIGNING_KEY_FILE is not set: create a key with "
                "`python -m factura.audit keygen --out FILE` and mount it as a secret"
            )
        return self.signing_key_file

    checkpoint_interval_s: float = Field(default=60.0, gt=0, description="How often changed chain heads are signed")
    tenants_dir: Path | None = Field(default=None, description="Per-tenant configs ([audit] retention and summary)")
    retention_interval_s: float = Field(default=3600.0, gt=0, description="How often expired records are removed")
    verify_interval_s: float = Field(
        default=3600.0, gt=0, description="How often every chain is verified in the background (from its last seal)"
    )
    verify_full_interval_s: float = Field(
        default=86400.0, gt=0, description="How often that background verification walks each whole chain instead"
    )
    batch_max_records: int = Field(default=1000, ge=1, le=10_000, description="Records per chain insert")
    pii: PiiSettings = Field(
        default_factory=PiiSettings,
        description="Tenant KEKs of customers' contact data; neither keys_dir nor secret: derived from the "
        "signing key (development only: rotating that key would then lose every customer's contact data)",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_renamed_pii_settings(cls, data: Any) -> Any:
        """The PII settings moved into the shared ``pii`` group: an old name left in a deployment must
        stop the start, not silently switch the KEKs to the development fallback."""
        for old in ("FACTURA_AUDIT_PII_KEYS_DIR", "FACTURA_AUDIT_PII_CACHE_TTL_S"):
            if old in os.environ:
                raise ValueError(f"{old} was renamed {old.replace('_PII_', '_PII__')}")
        return data
