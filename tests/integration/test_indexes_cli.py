"""``python -m factura.<service> indexes`` creates that service's MongoDB indexes and exits 0.

Each command runs as the Kubernetes index Job runs it: a process of its own with the service's
settings from the environment, against the real local MongoDB, in a database of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from pymongo import MongoClient

from factura.common.mongo import Document
from factura.devstack.config import StackConfig

#: service -> (module, collections that must carry an index besides ``_id``).
SERVICES = {
    "ingest": ("ingest", {"ingest_invoices", "ingest_idempotency", "ingest_imports", "api_keys"}),
    "renderer": ("renderer", {"short_links", "link_hits"}),
    "email-sender": ("email_sender", {"deliveries", "suppressions", "short_links"}),
    "sms-sender": ("sms_sender", {"deliveries", "suppressions", "short_links"}),
    "scheduler": ("scheduler", {"schedules", "channel_deliveries", "campaigns", "api_keys"}),
    "audit": ("audit", {"audit_records", "audit_tombstones", "api_keys"}),
}


def indexed_collections(url: str, database: str) -> dict[str, set[str]]:
    client: MongoClient[Document] = MongoClient(url)
    try:
        db = client[database]
        return {
            name: names
            for name in db.list_collection_names()
            if (names := set(db[name].index_information()) - {"_id_"})
        }
    finally:
        client.close()


@pytest.mark.parametrize("service", SERVICES)
def test_indexes_command_creates_the_services_indexes(cfg: StackConfig, service: str) -> None:
    module, expected = SERVICES[service]
    database = f"idx{uuid.uuid4().hex[:10]}"
    prefix = f"FACTURA_{module.upper()}_"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACTURA_")}
    env |= {
        f"{prefix}MONGO__URL": cfg.mongo_url,
        f"{prefix}MONGO__DATABASE": database,
        f"{prefix}LINKS__SECRET": "k8s-index-job-test-link-secret",
    }
    assert indexed_collections(cfg.mongo_url, database) == {}
    done = subprocess.run(
        [sys.executable, "-m", f"factura.{module}", "indexes"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"{service}: indexes created in database {database!r}" in done.stdout
    created = indexed_collections(cfg.mongo_url, database)
    assert expected <= created.keys(), f"missing: {expected - created.keys()}; created: {sorted(created)}"
