"""How ``POST /v1/imports`` and its worker behave: sizes, the worker's lease, progress, backoff."""

from __future__ import annotations

from pydantic import BaseModel, Field

MIB = 1024 * 1024
#: S3 refuses multipart parts under 5 MiB (all but the last).
MIN_PART_BYTES = 5 * MIB


class ImportSettings(BaseModel):
    max_upload_bytes: int = Field(
        default=200 * MIB, ge=1024, description="Largest bulk file POST /v1/imports stores; 413 past it."
    )
    max_mapping_bytes: int = Field(default=64 * 1024, ge=1024, description="Largest mapping (TOML) part; 413 past it.")
    part_bytes: int = Field(
        default=8 * MIB,
        ge=MIN_PART_BYTES,
        description="Bytes of an upload held in memory before they go to S3 as one part of a multipart upload.",
    )
    lease_s: float = Field(
        default=60.0,
        gt=0,
        description="How long a worker's claim on an import lasts without a heartbeat; a dead worker's import is "
        "taken over after it. Heartbeats come every third of it.",
    )
    poll_s: float = Field(default=2.0, gt=0, description="How often an idle worker looks for queued imports.")
    progress_every: int = Field(
        default=500, ge=1, description="Invoices between two progress writes to MongoDB (besides each heartbeat)."
    )
    dedupe_s: int = Field(
        default=24 * 3600,
        ge=0,
        description="The same file, mapping and dry_run posted again for the tenant within this time returns the "
        "existing import.",
    )
    retry_initial_s: float = Field(
        default=5.0, gt=0, description="First wait before retrying an import after an outage."
    )
    retry_max_s: float = Field(default=300.0, gt=0, description="Longest wait between retries after outages.")
