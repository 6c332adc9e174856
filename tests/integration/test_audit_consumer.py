"""Audit's real wiring on the real broker and MongoDB-wire server: two replicas of the consumer,
one joining and one leaving mid-stream (two rebalances), store every event exactly once in one
unforked chain; redeliveries are counted as duplicates, not stored."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from factura.audit.chain import ChainWriter
from factura.audit.checkpoints import Signer
from factura.audit.handlers import RECORDED, AuditHandlers
from factura.audit.store import AuditDb
from factura.audit.verify import verify_chain
from factura.common.kafka.consumer import Batched, ConsumerLoop
from factura.common.kafka.producer import Publisher
from factura.common.mongo import create_client, database
from factura.common.schemas import EXAMPLES_DIR
from factura.common.settings import KafkaSettings
from factura.devstack.config import StackConfig
from tests.conftest import mongo_settings
from tests.integration.test_consumer_loop import short_session
from tests.kafka_helpers import isolated
from tests.waiting import until, until_async

pytestmark = pytest.mark.integration
EXAMPLE = json.loads((EXAMPLES_DIR / "delivery.failed.v2.json").read_text(encoding="utf-8"))


def event(n: int) -> bytes:
    return json.dumps(EXAMPLE | {"event_id": str(uuid.uuid4()), "invoice_id": f"INV/{n}"}).encode()


@asynccontextmanager
async def replica(settings: KafkaSettings, publisher: Publisher, db: AuditDb, name: str) -> AsyncIterator[None]:
    handlers = AuditHandlers(ChainWriter(db.records, db.tombstones))
    loop = ConsumerLoop(
        settings=settings,
        group_id="audit",
        routes={"delivery.failed": Batched(handlers.on_events, 50)},
        publisher=publisher,
        service=name,
    )
    task = asyncio.create_task(loop.run())
    try:
        yield
    finally:
        loop.stop()
        await asyncio.wait_for(task, 30)


async def test_two_replicas_and_two_rebalances_store_each_event_once_in_one_chain(cfg: StackConfig) -> None:
    client = create_client(mongo_settings(cfg))
    db = AuditDb.of(database(client, mongo_settings(cfg)), prefix=f"audit_{uuid.uuid4().hex[:6]}_")
    await db.ensure_indexes()
    tenant = EXAMPLE["tenant_id"]

    async def stored() -> int:
        return await db.records.count_documents({"tenant_id": tenant})

    def at_least(n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await stored() >= n

        return check

    duplicates = RECORDED.labels(kind="event", outcome="duplicate")
    try:
        async with isolated(cfg) as (bus_settings, publisher):
            settings = short_session(bus_settings)  # four joins, each half a session long on the local broker
            bodies = [event(n) for n in range(400)]
            topic = f"{settings.topic_prefix}delivery.failed"
            for n, body in enumerate(bodies[:200]):
                await publisher.send(topic, body, key=f"{tenant}/INV/{n}".encode(), headers=[])
            async with replica(settings, publisher, db, "a"):
                await until_async(at_least(1))
                async with replica(settings, publisher, db, "b"):  # joins: rebalance
                    for n, body in enumerate(bodies[200:], start=200):
                        await publisher.send(topic, body, key=f"{tenant}/INV/{n}".encode(), headers=[])
                    await until_async(at_least(300), timeout_s=60)
                # b left: a takes every partition again (rebalance), and whatever b had not committed
                await until_async(at_least(400), timeout_s=60)
                before = duplicates._value.get()
                for n, body in enumerate(bodies[:30]):  # the ERP-side retry of an old batch
                    await publisher.send(topic, body, key=f"{tenant}/INV/{n}".encode(), headers=[])
                await until(lambda: duplicates._value.get() >= before + 30, timeout_s=30)
        assert await stored() == 400
        seqs = sorted([d["seq"] async for d in db.records.find({"tenant_id": tenant}, {"seq": 1})])
        assert seqs == list(range(1, 401))
        verification = await verify_chain(db, tenant, Signer(Ed25519PrivateKey.generate()).public)
        assert verification.ok and verification.records == 400, verification.first_break
    finally:
        await client.close()
