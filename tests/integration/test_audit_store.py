"""The audit store on the real MongoDB-wire server: once per event_id, in order, hash kept."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import timedelta

import pytest

from factura.audit.store import AuditStore
from factura.common.events import parse_event
from factura.common.mongo import create_client, database
from factura.common.schemas import EXAMPLES_DIR
from factura.devstack.config import StackConfig
from tests.conftest import mongo_settings

pytestmark = pytest.mark.integration


async def test_append_is_idempotent_and_timeline_is_ordered(cfg: StackConfig) -> None:
    settings = mongo_settings(cfg)
    client = create_client(settings)
    try:
        store = AuditStore(database(client, settings)[f"audit_{uuid.uuid4().hex[:6]}"])
        await store.ensure_indexes()
        raw = json.loads((EXAMPLES_DIR / "invoice.created.v1.json").read_text(encoding="utf-8"))
        first = parse_event(json.dumps(raw))
        later = first.model_copy(update={"event_id": uuid.uuid4(), "occurred_at": first.occurred_at + timedelta(1)})
        assert await store.append(later, "t/0/2") is True
        assert await store.append(first, "t/0/1") is True
        assert await store.append(first, "t/0/1") is False  # redelivery
        docs = await store.timeline(first.tenant_id, str(first.invoice_id))
        assert [d["event_id"] for d in docs] == [str(first.event_id), str(later.event_id)]
        assert docs[0]["sha256"] == hashlib.sha256(docs[0]["event"].encode()).hexdigest()
        assert await store.timeline("other-tenant", str(first.invoice_id)) == []
    finally:
        await client.close()
