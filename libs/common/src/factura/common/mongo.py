"""MongoDB access through PyMongo's native async API (Motor is deprecated)."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from factura.common.settings import MongoSettings

Document = dict[str, Any]


def create_client(settings: MongoSettings) -> AsyncMongoClient[Document]:
    # tz_aware: datetimes come back as UTC-aware, like the ones we store.
    return AsyncMongoClient(settings.url, tz_aware=True, serverSelectionTimeoutMS=5_000)


def database(client: AsyncMongoClient[Document], settings: MongoSettings) -> AsyncDatabase[Document]:
    return client[settings.database]


async def ping(client: AsyncMongoClient[Document]) -> None:
    await client.admin.command("ping")
