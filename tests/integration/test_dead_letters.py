"""Dead letters are visible and recoverable: audit records each arrival, the DLQ tool lists and
replays them to their source topic once, on the real broker and MongoDB-wire server."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from factura.audit.chain import ChainWriter
from factura.audit.handlers import AuditHandlers
from factura.audit.store import AuditDb
from factura.common.dlq import Settings as DlqSettings
from factura.common.dlq import list_dead_letters, replay
from factura.common.envelope import Envelope
from factura.common.kafka.consumer import Batched, ConsumerLoop, Message
from factura.common.mongo import create_client, database
from factura.devstack.config import StackConfig
from tests.conftest import mongo_settings
from tests.integration.test_consumer_loop import event_bytes, send
from tests.kafka_helpers import isolated, read_topic
from tests.waiting import until

pytestmark = pytest.mark.integration


async def test_dead_letter_is_recorded_by_audit_listed_and_replayed_once(
    cfg: StackConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    fixed = False
    handled: list[str] = []

    async def handler(message: Message[Envelope[Any]]) -> None:
        if not fixed:
            raise ZeroDivisionError("the bug of the week")
        handled.append(message.value.data.invoice_number)

    client = create_client(mongo_settings(cfg))
    db = database(client, mongo_settings(cfg))
    store = AuditDb.of(db, prefix=f"audit_{uuid.uuid4().hex[:6]}_")
    await store.ensure_indexes()
    audit = AuditHandlers(ChainWriter(store.records, store.tombstones))
    async with isolated(cfg) as (settings, publisher):
        worker = ConsumerLoop(
            settings=settings, group_id="worker", routes={"invoice.created": handler}, publisher=publisher, service="w"
        )
        recorder = ConsumerLoop(
            settings=settings,
            group_id="audit",
            routes={"invoice.created.dlq": Batched(audit.on_dead_letters)},
            publisher=publisher,
            service="audit",
        )
        tasks = [asyncio.create_task(worker.run()), asyncio.create_task(recorder.run())]
        try:
            await send(publisher, settings, event_bytes("INV-DLQ-1"))

            async def recorded() -> list[dict[str, Any]]:
                return await store.records.find({"tenant_id": "harinas-sur", "kind": "dead_letter"}).to_list()

            for _ in range(400):
                if await recorded():
                    break
                await asyncio.sleep(0.05)
            [letter] = await recorded()
            assert letter["reason"] == "bug" and letter["invoice_id"] == "same-key" and letter["seq"] == 1
            raw = json.loads(letter["record"])["raw"]
            body = json.loads(raw)
            assert body["service"] == "w" and body["source_topic"] == "invoice.created"
            assert "ZeroDivisionError: the bug of the week" in body["error"]
            assert letter["_id"] == f"dlq:w:{letter['source']}"

            tool = DlqSettings(kafka=settings)
            assert await list_dead_letters(tool, "invoice.created") == 1
            listed = capsys.readouterr().out
            assert "reason=bug" in listed and "replayed=no" in listed and "from=" in listed

            fixed = True  # the fix is deployed: replay puts the message back on its source topic
            assert await replay(tool, "invoice.created") == 1
            await until(lambda: handled == ["INV-DLQ-1"])
            assert await replay(tool, "invoice.created") == 0  # idempotent: nothing left to replay
            source = await read_topic(cfg.kafka_bootstrap, f"{settings.topic_prefix}invoice.created", expect=2)
            assert [dict(r.headers).get("dlq.replayed_from") is not None for r in source] == [False, True]
        finally:
            worker.stop()
            recorder.stop()
            await asyncio.gather(*tasks)
            await client.close()
