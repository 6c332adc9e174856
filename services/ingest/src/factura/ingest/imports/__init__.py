"""Bulk files over HTTP: ``POST /v1/imports`` stores an upload in S3 and queues it in MongoDB; a
background worker loads it into ``erp.invoices`` as ``python -m factura.ingest load`` would, and
the status and per-row report are fetched by the import's id.

Wiring (bootstrap): :func:`~factura.ingest.imports.api.router` among the routers,
:func:`~factura.ingest.imports.worker.import_worker` among the tasks, both over one
:class:`~factura.ingest.imports.store.ImportStore` and :class:`~factura.ingest.imports.files.ImportFiles`,
configured by :class:`~factura.ingest.imports.settings.ImportSettings`.
"""

from factura.ingest.imports.api import router
from factura.ingest.imports.files import ImportFiles
from factura.ingest.imports.settings import ImportSettings
from factura.ingest.imports.store import ImportStore
from factura.ingest.imports.worker import import_worker

__all__ = ["ImportFiles", "ImportSettings", "ImportStore", "import_worker", "router"]
