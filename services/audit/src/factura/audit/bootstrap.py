"""Wire audit: MongoDB store, one handler on every event topic, the compliance API."""

from __future__ import annotations

from contextlib import AsyncExitStack

from factura.audit.api import router
from factura.audit.handlers import AuditHandlers
from factura.audit.settings import Settings
from factura.audit.store import AuditStore
from factura.common.kafka.producer import Publisher
from factura.common.mongo import create_client, database, ping
from factura.common.runtime import Wiring
from factura.common.topics import event_topics


async def bootstrap(settings: Settings, publisher: Publisher, stack: AsyncExitStack) -> Wiring:
    mongo = create_client(settings.mongo)
    stack.push_async_callback(mongo.close)
    store = AuditStore(database(mongo, settings.mongo)["audit_events"])
    await store.ensure_indexes()
    handlers = AuditHandlers(store)

    async def mongo_ok() -> None:
        await ping(mongo)

    return Wiring(
        routes={topic.name: handlers.on_event for topic in event_topics()},
        checks={"mongo": mongo_ok},
        routers=[router(store)],
    )
