"""MongoDB access through PyMongo's native async API (Motor is deprecated)."""

from __future__ import annotations

import os
import socket
import uuid
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


def process_owner() -> str:
    """The owner id a process writes into the leases it holds in MongoDB (delivery claims, the
    scheduler's sweep): host (the pod name under Kubernetes) and pid for people, a random part
    for pid reuse."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
