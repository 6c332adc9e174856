"""Readiness probes: each asks a server the way its clients will, and raises if it cannot answer.

An open port is not enough (Tansu accepts connections before it serves metadata; a service binds
before its consumer joins), so every probe makes a real protocol request.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pymongo
from aiokafka.admin import AIOKafkaAdminClient

PROBE_TIMEOUT_S = 3.0


async def _list_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(PROBE_TIMEOUT_S * 1000))
    await admin.start()
    try:
        topics: list[str] = await admin.list_topics()
        return topics
    finally:
        await admin.close()


def topics(bootstrap: str) -> list[str]:
    """The broker's topic names (a metadata request), within the probe timeout."""
    return asyncio.run(asyncio.wait_for(_list_topics(bootstrap), PROBE_TIMEOUT_S))


def kafka(bootstrap: str) -> None:
    """A metadata request succeeds."""
    host, _, port = bootstrap.rpartition(":")
    socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()  # spares aiokafka's error log
    asyncio.run(asyncio.wait_for(_list_topics(bootstrap), PROBE_TIMEOUT_S))


def mongo(url: str) -> None:
    client: pymongo.MongoClient[dict[str, Any]]
    with pymongo.MongoClient(url, serverSelectionTimeoutMS=int(PROBE_TIMEOUT_S * 1000)) as client:
        client.admin.command("ping")


def http_200(url: str) -> None:
    status = httpx.get(url, timeout=PROBE_TIMEOUT_S).status_code
    if status != 200:
        raise RuntimeError(f"GET {url} answered {status}")


def smtp(host: str, port: int) -> None:
    """The server greets with 220."""
    with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as sock:
        greeting = sock.recv(512)
        sock.sendall(b"QUIT\r\n")
    if not greeting.startswith(b"220"):
        raise RuntimeError(f"SMTP greeting was {greeting!r}")
