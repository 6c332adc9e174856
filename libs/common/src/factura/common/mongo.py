"""MongoDB access through PyMongo's native async API (Motor is deprecated)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from factura.common.settings import MongoSettings

Document = dict[str, Any]


def create_client(settings: MongoSettings, *, server_selection_ms: int = 5_000) -> AsyncMongoClient[Document]:
    """The client every service uses. ``server_selection_ms`` is how long a call waits for a
    reachable server before it fails as an outage (tests of outages shorten it).

    tz_aware: datetimes come back as UTC-aware, like the ones we store.
    """
    return AsyncMongoClient(settings.url, tz_aware=True, serverSelectionTimeoutMS=server_selection_ms)


def database(client: AsyncMongoClient[Document], settings: MongoSettings) -> AsyncDatabase[Document]:
    return client[settings.database]


async def create_indexes(
    service: str, settings: MongoSettings, ensure: Callable[[AsyncDatabase[Document]], Awaitable[None]]
) -> None:
    """``python -m factura.<service> indexes`` (the Kubernetes index Job): ``ensure`` the service's
    indexes in its database, say so, and let the process exit."""
    client = create_client(settings)
    try:
        await ensure(database(client, settings))
    finally:
        await client.close()
    print(f"{service}: indexes created in database {settings.database!r}")


async def ping(client: AsyncMongoClient[Document]) -> None:
    await client.admin.command("ping")


def process_owner() -> str:
    """The owner id a process writes into the leases it holds in MongoDB (delivery claims, the
    scheduler's sweep): host (the pod name under Kubernetes) and pid for people, a random part
    for pid reuse."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def exact(query: Document) -> Document:
    """``query`` with each plain equality written as ``{"$eq": value}``.

    The same query for MongoDB, but the MongoDB-wire server of the local stack (nx-27017) treats a
    bare ``{field: "value"}`` as "equal, or an array containing it" and scans the collection,
    while ``$eq`` uses the index: 20 ms instead of 6 s for one invoice among 1 M audit records.
    """
    return {
        key: value if key.startswith("$") or isinstance(value, dict) else {"$eq": value} for key, value in query.items()
    }
