"""Waiting for a positive signal in tests, never for a fixed time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Return as soon as ``predicate()`` holds; fail if it does not within ``timeout_s``."""
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def until_async(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 20.0, every_s: float = 0.05) -> None:
    """:func:`until` for a check that must await (a query), polled every ``every_s``."""
    for _ in range(int(timeout_s / every_s)):
        if await predicate():
            return
        await asyncio.sleep(every_s)
    raise AssertionError("condition not met in time")
