"""Settings of the SFTP drop (``FACTURA_INGEST_SFTP__*`` once wired into ingest's settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class SftpSettings(BaseModel):
    enabled: bool = Field(default=False, description="Run the SFTP drop inside ingest.")
    host: str = Field(default="127.0.0.1", description="Address the SFTP server listens on.")
    port: int = Field(default=2222, ge=0, le=65535, description="Port the SFTP server listens on (0: any free one).")
    root: Path = Field(default=Path("sftp"), description="One folder per tenant under it: inbox/, processed/, failed/.")
    host_key_file: Path | None = Field(
        default=None, description="The server's private host key (OpenSSH format); the drop refuses to start without."
    )
    generate_host_key: bool = Field(
        default=False, description="Dev only: create an Ed25519 host key at host_key_file when it does not exist."
    )
    keys_dir: Path = Field(
        default=Path("sftp-keys"),
        description="<tenant>.pub per tenant, in authorized_keys format: the keys that log in as that tenant.",
    )
    mappings_dir: Path | None = Field(
        default=None,
        description="<tenant>.toml per tenant: the column mapping of its bulk files (its folder's mapping.toml wins).",
    )
    scan_interval_s: float = Field(
        default=30.0, gt=0, description="How often inboxes are scanned for files left behind (and outages retried)."
    )
    publish_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest wait for one broker ack; past it the file waits for the next scan."
    )
    max_file_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024, description="Largest file a tenant may upload; writes past it fail."
    )
