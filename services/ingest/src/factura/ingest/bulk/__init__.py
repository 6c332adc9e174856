"""Bulk files (CSV and XLSX exports) turned into ERP invoice messages on ``erp.invoices``.

Each row is mapped and validated at the door with the same contract ingest's consumer uses, so
the uploader gets a per-row report at once; only valid invoices are published, and the consumer
stays the one place that turns them into events (idempotency and rejection work as for Kafka).
"""
