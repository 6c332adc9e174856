from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from factura.common.erp import MAX_MESSAGE_BYTES
from factura.common.settings import MongoSettings, S3Settings, ServiceSettings
from factura.ingest.documents import DEFAULT_MAX_BYTES as DOCUMENTS_MAX_BYTES
from factura.ingest.imports import ImportSettings
from factura.ingest.normalise import DEFAULT_DATES, DateWindow
from factura.ingest.sftp import SftpSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FACTURA_INGEST_", env_nested_delimiter="__", extra="ignore")

    mongo: MongoSettings = MongoSettings()
    s3: S3Settings = S3Settings()
    imports: ImportSettings = Field(default=ImportSettings(), description="POST /v1/imports and its worker")
    sftp: SftpSettings = Field(
        default=SftpSettings(), description="The SFTP drop (off by default; on in exactly one replica)"
    )
    tenants_dir: Path | None = Field(
        default=None, description="Per-tenant configs (whether to learn the most effective channel)"
    )
    allow_test_email_domains: bool = Field(
        default=False, description="Accept customer emails under the reserved .test TLD (local stacks, demos)."
    )
    api_max_batch_bytes: int = Field(
        default=5 * 1024 * 1024, ge=1024, description="Largest body POST /v1/invoices reads (a batch); 413 past it."
    )
    max_message_bytes: int = Field(
        default=MAX_MESSAGE_BYTES,
        ge=1024,
        le=1024 * 1024,
        description="Largest ERP message (one record) accepted; at most 1 MiB, so a refused one can be dead-lettered.",
    )
    dates: DateWindow = Field(
        default=DEFAULT_DATES, description="Plausible issue and due dates, around the day an invoice arrives."
    )
    documents_max_bytes: int = Field(
        default=DOCUMENTS_MAX_BYTES,
        ge=1024,
        description="Largest file POST /v1/documents (and the SFTP drop) stores; 413 past it.",
    )
