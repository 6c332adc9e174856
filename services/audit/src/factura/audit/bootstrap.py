"""Wire audit: MongoDB stores, a handler on every event and every DLQ topic, the compliance API."""

from __future__ import annotations

from contextlib import AsyncExitStack

from factura.audit.api import router
from factura.audit.handlers import AuditHandlers
from factura.audit.settings import Settings
from factura.audit.store import AuditStore, DeadLetterStore
from factura.common.kafka.producer import Publisher
from factura.common.mongo import create_client, database, ping
from factura.common.runtime import Wiring
from factura.common.topics import dead_letter_topics, event_topics


async def bootstrap(settings: Settings, publisher: Publisher, stack: AsyncExitStack) -> Wiring:
    mongo = create_client(settings.mongo)
    stack.push_async_callback(mongo.close)
    db = database(mongo, settings.mongo)
    store = AuditStore(db["audit_events"])
    dead_letters = DeadLetterStore(db["dead_letters"])
    await store.ensure_indexes()
    await dead_letters.ensure_indexes()
    handlers = AuditHandlers(store, dead_letters)

    async def mongo_ok() -> None:
        await ping(mongo)

    return Wiring(
        routes={
            **{topic.name: handlers.on_event for topic in event_topics()},
            **{topic.name: handlers.on_dead_letter for topic in dead_letter_topics()},
        },
        checks={"mongo": mongo_ok},
        routers=[router(store, dead_letters)],
    )
