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

A job's outcome (the PDF, or the exception) does not come back through the executor's result pipe
but through a file in the pool's scratch folder (:mod:`factura.renderer.scratch`); the pipe only
carries the file's path. A message longer than the pipe's atomic write (``PIPE_BUF``, 4 KiB; a PDF
is far longer) is written in several pieces, and a worker SIGKILLed between two of them leaves half
a message, which CPython's executor thread then waits for in ``recv()`` for ever. Blocked there, it
never sees the death either: the pool hangs without ever being marked broken, and nothing replaces
it. A path is one short write, all or nothing.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import pickle
import select
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar, cast

from factura.common.errors import DependencyDown
from factura.common.metrics import counter
from factura.renderer.pipeline import ENGINES, produce, warm_up_job
from factura.renderer.scratch import Scratch

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


def _init_worker(owner: int, scratch: str) -> None:
    """Worker initializer: temporary files (outcomes, Typst projects) go to the pool's scratch
    folder, and a thread ends this worker as soon as ``owner`` has exited."""
    tempfile.tempdir = scratch
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


def _spooled(fn: Callable[..., object], args: tuple[object, ...]) -> str:
    """In a worker: ``fn(*args)``, its outcome pickled to a file in the scratch folder; returns the
    file's path (see the module docstring for why not the result itself)."""
    outcome: tuple[bool, object, str]
    try:
        outcome = (True, fn(*args), "")
    except BaseException as e:  # noqa: BLE001 - re-raised in the caller, as the executor would
        outcome = (False, e, traceback.format_exc())
    try:
        data = pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # noqa: BLE001 - say so, rather than lose the outcome
        failure = RuntimeError(f"a render worker could not send back its {type(outcome[1]).__name__}: {e!r}")
        data = pickle.dumps((False, failure, outcome[2]), pickle.HIGHEST_PROTOCOL)
    path = ""
    try:
        folder = Path(tempfile.gettempdir())
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # made again if removed under the pool
        fd, path = tempfile.mkstemp(prefix="outcome-", dir=folder)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
    except OSError as e:  # a full disk is an outage: the invoice waits, it is not failed
        if path:
            Path(path).unlink(missing_ok=True)
        raise ScratchUnwritable(f"{type(e).__name__}: {e}") from None
    return path


class ScratchUnwritable(Exception):
    """A worker could not write its outcome to the scratch folder (disk full)."""


class RemoteTraceback(Exception):
    """The worker's traceback of an exception raised in a render worker: set as its ``__cause__``."""

    def __str__(self) -> str:
        return str(self.args[0])


async def _call(executor: ProcessPoolExecutor, fn: Callable[..., object], *args: object) -> object:
    """``fn(*args)`` in one of the executor's workers, its outcome read back from the scratch folder."""
    future = executor.submit(_spooled, fn, args)
    try:
        path = await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        future.add_done_callback(_discard)  # the caller gave up, the worker may still finish
        raise
    except ScratchUnwritable as e:
        raise DependencyDown(DEPENDENCY, f"the scratch folder cannot be written: {e}") from e
    return _outcome(Path(path))


def _outcome(path: Path) -> object:
    """The value a worker left in ``path`` (removed once read), or its exception raised here.

    Not worth a thread: the file was written a moment ago and is read from the page cache."""
    try:
        ok, value, remote = pickle.loads(path.read_bytes())
    except FileNotFoundError as e:  # removed under the pool: nobody died, the invoice is simply retried
        raise DependencyDown(DEPENDENCY, "a render outcome was removed before it was read") from e
    except Exception as e:  # as when the executor cannot read a result: that worker is suspect
        raise WorkerDied from e
    finally:
        path.unlink(missing_ok=True)
    if ok:
        return value
    error = cast(BaseException, value)
    error.__cause__ = RemoteTraceback(remote)
    raise error


def _discard(future: Future[str]) -> None:
    if not future.cancelled() and future.exception() is None:
        Path(future.result()).unlink(missing_ok=True)


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
        self._scratch = Scratch()
        self._executor = self._new_executor()
        self._ready = False  # the current executor has been warmed
        self._starting: asyncio.Task[ProcessPoolExecutor] | None = None
        self._closed = False

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self._context,
            initializer=_init_worker,
            initargs=(os.getpid(), str(self._scratch.current)),
        )

    async def warm_up(self) -> None:
        """Start and warm every worker; returns when the pool can take jobs."""
        await self._current()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker; :class:`DependencyDown` if the pool broke under this job."""
        executor = await self._current()
        try:
            return cast(T, await _call(executor, fn, *args))
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

    @property
    def scratch(self) -> Path:
        """The folder of the current workers' temporary files (removed one replacement after theirs)."""
        return self._scratch.current

    def pids(self) -> list[int]:
        """Process ids of the current executor's workers."""
        return list(self._executor._processes or ())  # private: no public way to list a pool's processes

    def close(self) -> None:
        self._closed = True
        if self._starting is not None:
            self._starting.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._scratch.close()

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
                self._scratch.renew()
                self._executor = self._new_executor()
                self.replacements += 1
                REPLACEMENTS.inc()
            executor = self._executor
            # one job per worker: each submit beyond the idle ones spawns the next process
            await asyncio.gather(*(_call(executor, self._warm) for _ in range(self.workers)))
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
