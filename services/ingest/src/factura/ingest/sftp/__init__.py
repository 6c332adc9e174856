"""The SFTP drop: tenants put invoices (CSV/XLSX) and documents (PDF/zip/XML) in their inbox over
SFTP; each file is ingested like an upload and moved to ``processed/`` or ``failed/`` with its
report beside it. :func:`sftp_task` is the entry point, :class:`SftpSettings` its settings."""

from factura.ingest.sftp.settings import SftpSettings
from factura.ingest.sftp.task import sftp_task

__all__ = ["SftpSettings", "sftp_task"]
