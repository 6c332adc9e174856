"""A pool of render processes: WeasyPrint is CPU-bound and single-threaded, so one per core.

Workers are started with ``forkserver`` (never ``fork`` from a process that runs an event loop
and Kafka client threads) and warmed up with a full Factur-X render of the example invoice, so
the first real invoice does not pay for imports (factur-x, pypdf, drafthorse), fonts and templates.

A ``ProcessPoolExecutor`` whose worker dies (SIGKILL, the OOM killer, a crash in a C library) is
broken for good: every later submit raises ``BrokenProcessPool``. :class:`RenderPool` therefore
replaces a broken executor with a fresh, warmed one, started once however many callers notice,
and turns the jobs that were lost into :class:`~factura.common.errors.DependencyDown`, so the
consumer loop pauses and retries them instead of dead-lettering invoices. The pool cannot tell
which job killed a worker, so it raises :class:`WorkerDied` for each job that was lost; the render
handler counts them per invoice and rejects one that was in flight at ``max_worker_crashes``
consecutive deaths, so a poison invoice cannot stall its partition for ever.

Each worker also watches the process that owns the pool and exits when it is gone, so a
SIGKILLed renderer leaves no render process behind: once its workers have exited, the
forkserver exits too (``tests/integration/test_render_pool.py`` checks both).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import select
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from factura.common.errors import DependencyDown
from factura.common.metrics import counter
from factura.renderer.pipeline import ENGINES, produce, warm_up_job

T = TypeVar("T")
DEPENDENCY = "render-pool"
REPLACEMENTS = counter("render_pool_replacements_total", "Render pools replaced after a worker died.")
log = logging.getLogger(__name__)


class WorkerDied(DependencyDown):
    """A render worker died with this job in flight (it may or may not be the job's fault)."""

    def __init__(self) -> None:
        super().__init__(DEPENDENCY, "a render worker died; the pool is being replaced")


def warm_engines(engines: Iterable[str] = ENGINES) -> int:
    """One render per engine in use, so no tenant's first invoice pays for loading fonts and code
    (an engine no tenant uses is not warmed: its caches would only cost memory).

    What the warm-up loaded stays for the worker's life, so it is then moved out of the garbage
    collector's sight (``gc.freeze``): otherwise every full collection during a render walks the
    fonts, stylesheets and modules again."""
    invoice, tenant, limits = warm_up_job()
    for engine in engines:
        produce(invoice, tenant.model_copy(update={"engine": engine}), limits)
    gc.collect()
    gc.freeze()
    return os.getpid()


def _exit_with_owner(owner: int) -> None:
    """Worker initializer: start a thread that ends this worker as soon as ``owner`` has exited."""
    threading.Thread(target=_watch_owner, args=(owner,), name="watch-owner", daemon=True).start()


def _watch_owner(owner: int) -> None:
    try:
        # Linux: a pidfd becomes readable when the process exits; no polling, no pid-reuse race.
        fd = os.pidfd_open(owner)
    except ProcessLookupError:
        os._exit(1)  # the owner died before this worker finished starting
    except (AttributeError, OSError):  # not Linux, or pidfd_open refused (old kernel, seccomp)
        while True:
            time.sleep(1.0)
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass  # it exists, under another user
    select.select([fd], [], [])
    os._exit(1)


def _is_broken(executor: ProcessPoolExecutor) -> bool:
    # CPython sets ``_broken`` from its management thread as soon as it sees a worker die, even
    # with no job in flight; there is no public way to ask.
    return bool(getattr(executor, "_broken", False))


class RenderPool:
    """Render processes that survive the death of any one of them.

    ``warm`` is what each worker runs once before it counts as ready (the example render by
    default; tests pass something cheaper).
    """

    def __init__(self, workers: int = 0, warm: Callable[[], object] = warm_engines) -> None:
        self.workers = workers or os.cpu_count() or 1
        #: How many broken executors were replaced since start.
        self.replacements = 0
        self._warm = warm
        self._context = multiprocessing.get_context("forkserver")
        # Workers fork from a forkserver that has already imported the render stack, so a
        # replacement worker does not import WeasyPrint & co. again. The list is read when the
        # process's forkserver starts, so the first pool's setting is the one in effect.
        self._context.set_forkserver_preload(["__main__", "factura.renderer.pipeline"])
        self._executor = self._new_executor()
        self._ready = False  # the current executor has been warmed
        self._starting: asyncio.Task[ProcessPoolExecutor] | None = None
        self._closed = False

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self._context,
            initializer=_exit_with_owner,
            initargs=(os.getpid(),),
        )

    async def warm_up(self) -> None:
        """Start and warm every worker; returns when the pool can take jobs."""
        await self._current()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker; :class:`DependencyDown` if the pool broke under this job."""
        executor = await self._current()
        try:
            return await asyncio.wrap_future(executor.submit(fn, *args))
        except BrokenProcessPool as e:
            if executor is self._executor:
                self._replace_soon()  # so the retry, and readiness, find a fresh pool sooner
            raise WorkerDied from e

    async def check(self) -> None:
        """Readiness: raises while the pool is starting, broken or being replaced.

        A broken pool seen here is replaced right away, so it heals even when no invoice arrives.
        """
        if self._closed:
            raise DependencyDown(DEPENDENCY, "closed")
        if _is_broken(self._executor):
            self._replace_soon()
            raise DependencyDown(DEPENDENCY, "a render worker died; the pool is being replaced")
        if not self._ready:
            raise DependencyDown(DEPENDENCY, "render workers are starting")

    def pids(self) -> list[int]:
        """Process ids of the current executor's workers."""
        return list(self._executor._processes or ())  # private: no public way to list a pool's processes

    def close(self) -> None:
        self._closed = True
        if self._starting is not None:
            self._starting.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _current(self) -> ProcessPoolExecutor:
        """The warmed executor; waits for the one start or replacement in progress, if any."""
        if self._closed:
            raise RuntimeError("render pool is closed")
        if self._ready and not _is_broken(self._executor):
            return self._executor
        starting = self._replace_soon()
        try:
            # shielded: a caller that gives up (handler timeout) must not cancel the others' pool
            return await asyncio.shield(starting)
        except (BrokenProcessPool, OSError) as e:
            raise DependencyDown(DEPENDENCY, f"render workers could not start: {type(e).__name__}") from e

    def _replace_soon(self) -> asyncio.Task[ProcessPoolExecutor]:
        """The task that starts (or replaces) the executor: one at a time, shared by every caller."""
        if self._starting is None:
            self._starting = asyncio.create_task(self._start(), name="render-pool-start")
            self._starting.add_done_callback(_retrieve)
        return self._starting

    async def _start(self) -> ProcessPoolExecutor:
        try:
            self._ready = False
            if _is_broken(self._executor):
                log.warning("a render worker died; replacing the render pool")
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._new_executor()
                self.replacements += 1
                REPLACEMENTS.inc()
            executor = self._executor
            # one job per worker: each submit beyond the idle ones spawns the next process
            await asyncio.gather(*(asyncio.wrap_future(executor.submit(self._warm)) for _ in range(self.workers)))
            self._ready = executor is self._executor and not _is_broken(executor)
            if not self._ready:
                raise BrokenProcessPool("a render worker died while the pool was warming up")
            return executor
        finally:
            self._starting = None


def _retrieve(task: asyncio.Task[ProcessPoolExecutor]) -> None:
    """Mark a failed start as seen: its callers got the error, or all of them gave up waiting."""
    if not task.cancelled():
        task.exception()
