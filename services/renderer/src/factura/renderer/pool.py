"""A pool of render processes: WeasyPrint is CPU-bound and single-threaded, so one per core.

Workers are started with ``forkserver`` (never ``fork`` from a process that runs an event loop
and Kafka client threads) and warmed up with a full Factur-X render of the example invoice, so
the first real invoice does not pay for imports (factur-x, pypdf, drafthorse), fonts and templates.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from factura.renderer.pipeline import produce, warm_up_job

T = TypeVar("T")


def _warm() -> int:
    produce(*warm_up_job())
    return os.getpid()


class RenderPool:
    def __init__(self, workers: int = 0) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._executor = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context("forkserver")
        )

    async def warm_up(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._executor, _warm) for _ in range(self.workers)))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
