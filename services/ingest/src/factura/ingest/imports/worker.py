"""The import worker: claims queued imports and loads them, one at a time per process.

A run holds a lease on its import (:class:`~factura.ingest.imports.store.ImportStore`), renewed
every third of ``lease_s`` together with the progress, and more often while invoices flow
(every ``progress_every``). What ends a run:

* the load finished → the report goes to S3, then the import is ``succeeded``, or ``failed`` when
  the file as a whole was refused (mapping, header, format: the message is kept);
* an outage (Kafka, S3, MongoDB) → back to ``queued``, retried after a growing delay: an outage
  is not the file's fault. The rerun loads the whole file again; ingest deduplicates the
  invoices the first run already published;
* the service stops → the load stops at the next invoice and the import goes back to the queue
  at once, for whichever worker comes first;
* the lease is lost (another worker took over after a pause longer than the lease, or MongoDB
  could not confirm it in time) → the load stops, and the import is left to its new holder;
* the process dies → the import stays ``running`` until its lease ends, then is taken over.

The load itself (:func:`~factura.ingest.bulk.load.load`, the CLI's) runs in a thread with an
event loop of its own: parsing a 100 k-row file takes seconds of CPU the service's event loop
must not wait on (its HTTP API, its consumer's heartbeats). Its sends are handed to the service's
publisher on the main loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import tempfile
from pathlib import Path

from factura.common.errors import ErrorKind, classify
from factura.common.kafka.producer import Headers
from factura.common.metrics import counter
from factura.common.mongo import process_owner
from factura.common.runtime import BackgroundTask
from factura.ingest.bulk.load import Sender, load
from factura.ingest.bulk.mapping import DEFAULT_MAPPING, MappingError
from factura.ingest.bulk.read import BulkFileError
from factura.ingest.bulk.report import ReportRow, ReportWriter
from factura.ingest.imports.files import REPORT_TYPE, ImportFiles
from factura.ingest.imports.form import read_mapping
from factura.ingest.imports.settings import ImportSettings
from factura.ingest.imports.store import ImportRecord, ImportStore, Progress, Summary, now_ms

log = logging.getLogger(__name__)
FINISHED = counter("ingest_imports_finished_total", "Imports finished, by final state.", ("state",))
REQUEUED = counter("ingest_imports_requeued_total", "Import runs stopped by an outage and queued again.")
#: Heartbeats per lease term.
BEATS_PER_LEASE = 3


#: A run's load: its summary, or why the file was refused as a whole.
_Work = asyncio.Task[tuple[Summary | None, str | None]]


class _Stopped(Exception):
    """Raised inside the load's thread to stop it between two invoices."""


class _MainLoopSender:
    """The load thread's sender: each send runs on the service's loop, through its publisher."""

    def __init__(self, sender: Sender, loop: asyncio.AbstractEventLoop) -> None:
        self._sender, self._loop = sender, loop
        self._pending: set[concurrent.futures.Future[None]] = set()

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Headers) -> None:
        future = asyncio.run_coroutine_threadsafe(self._sender.send(topic, value, key=key, headers=headers), self._loop)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        await asyncio.wrap_future(future)

    def cancel(self) -> None:
        for future in list(self._pending):
            future.cancel()


class _Run:
    """One run's shared state between the load thread and the main loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, progress_every: int) -> None:
        self._loop, self._every = loop, progress_every
        self.invoices = self.problems = 0
        self.percent: float | None = None
        self.flush = asyncio.Event()
        self.sender: _MainLoopSender | None = None
        self._stopped = False

    def progress(self) -> Progress:
        return Progress(invoices=self.invoices, problems=self.problems, percent=self.percent)

    def advance(self, done: int, total: int) -> None:
        """After each invoice (load thread): count it, and stop here if asked to."""
        if self._stopped:
            raise _Stopped
        self.invoices += 1
        self.percent = round(100 * done / total, 1) if total else None
        if self.invoices % self._every == 0:
            self._loop.call_soon_threadsafe(self.flush.set)

    def stop(self) -> None:
        self._stopped = True
        if self.sender is not None:
            self.sender.cancel()


def import_worker(
    store: ImportStore,
    files: ImportFiles,
    sender: Sender,
    *,
    topic: str,
    settings: ImportSettings,
    allow_test_domains: bool = False,
    owner: str | None = None,
) -> BackgroundTask:
    """The background task (``Wiring.tasks``) that loads uploaded imports into ``topic``."""
    return ImportWorker(
        store, files, sender, topic=topic, settings=settings, allow_test_domains=allow_test_domains, owner=owner
    ).run


class ImportWorker:
    def __init__(
        self,
        store: ImportStore,
        files: ImportFiles,
        sender: Sender,
        *,
        topic: str,
        settings: ImportSettings,
        allow_test_domains: bool = False,
        owner: str | None = None,
    ) -> None:
        self._store, self._files, self._sender = store, files, sender
        self._topic, self._settings, self._allow_test = topic, settings, allow_test_domains
        self.owner = owner or process_owner()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                record = await self._store.claim(self.owner, self._settings.lease_s)
            except Exception as e:  # noqa: BLE001 - one bad claim must not stop the service
                _log_failure("cannot claim an import", e)
                record = None
            if record is None:
                await _wait(stopping, self._settings.poll_s)
                continue
            log.info("import claimed", extra={"import_id": record.import_id, "attempt": record.attempts})
            await self._process(record, stopping)

    async def _process(self, record: ImportRecord, stopping: asyncio.Event) -> None:
        run = _Run(asyncio.get_running_loop(), self._settings.progress_every)
        work = asyncio.create_task(self._execute(record, run))
        lease = asyncio.create_task(self._keep_lease(record, run))
        stop = asyncio.create_task(stopping.wait())
        try:
            done, _ = await asyncio.wait({work, lease, stop}, return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                await self._conclude(record, run, work)
            elif lease in done:
                log.warning("lost the lease on an import; leaving it", extra={"import_id": record.import_id})
            else:
                await self._release(record, run, work)
        except asyncio.CancelledError:
            await self._release(record, run, work)
            raise
        finally:
            for task in (work, lease, stop):
                task.cancel()
            await asyncio.gather(work, lease, stop, return_exceptions=True)

    async def _release(self, record: ImportRecord, run: _Run, work: _Work) -> None:
        """Stop the load (and wait for its thread), then hand the import back to the queue."""
        run.stop()
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        try:
            await self._store.requeue(record.import_id, self.owner, retry_in_s=0, outage=None)
        except Exception as e:  # noqa: BLE001 - the lease then simply runs out
            _log_failure("could not hand an import back", e)

    async def _execute(self, record: ImportRecord, run: _Run) -> tuple[Summary | None, str | None]:
        """Download, load (in a thread), upload the report: the summary, or the file's refusal."""
        with tempfile.TemporaryDirectory(prefix="factura-import-") as tmp:
            source, report = Path(tmp) / f"source.{record.format}", Path(tmp) / "report.csv"
            await self._files.download(record.source_key, source)
            if not record.dry_run:
                run.sender = _MainLoopSender(self._sender, asyncio.get_running_loop())
            thread = asyncio.ensure_future(asyncio.to_thread(self._load, record, source, report, run))
            try:
                outcome = await asyncio.shield(thread)
            except asyncio.CancelledError:
                run.stop()
                await asyncio.gather(thread, return_exceptions=True)  # the thread reads the files in tmp
                raise
            await self._files.upload(record.report_key, report, content_type=REPORT_TYPE)
        return outcome

    def _load(self, record: ImportRecord, source: Path, report: Path, run: _Run) -> tuple[Summary | None, str | None]:
        """The load thread."""
        with report.open("w", encoding="utf-8-sig", newline="") as out:
            writer = ReportWriter(out)

            def problem(row: ReportRow) -> None:
                writer.write(row)
                run.problems += 1

            try:
                mapping = (
                    DEFAULT_MAPPING
                    if record.mapping is None
                    else read_mapping(record.mapping.encode(), record.tenant_id)
                )
                summary = asyncio.run(
                    load(
                        source,
                        tenant_id=record.tenant_id,
                        mapping=mapping,
                        sender=run.sender,
                        topic=self._topic,
                        report=problem,
                        allow_test_domains=self._allow_test,
                        progress=run.advance,
                    )
                )
            except (MappingError, BulkFileError) as e:
                return None, str(e)
        return Summary(**dataclasses.asdict(summary)), None

    async def _keep_lease(self, record: ImportRecord, run: _Run) -> None:
        """Renew the lease (with the progress) until it is lost or cannot be confirmed in time."""
        expires = record.lease_expires_ms
        every = self._settings.lease_s / BEATS_PER_LEASE
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.flush.wait(), every)
            run.flush.clear()
            try:
                progress = run.progress()
                renewed = await self._store.heartbeat(record.import_id, self.owner, self._settings.lease_s, progress)
            except Exception as e:  # noqa: BLE001 - retried at the next beat while the lease lasts
                _log_failure("cannot renew an import's lease", e)
                if now_ms() + every * 1000 >= expires:
                    return
                continue
            if renewed is None:
                return
            expires = renewed

    async def _conclude(self, record: ImportRecord, run: _Run, work: _Work) -> None:
        error = work.exception()
        try:
            if error is None:
                summary, refusal = work.result()
                if await self._store.finish(
                    record.import_id, self.owner, summary=summary, error=refusal, progress=run.progress()
                ):
                    FINISHED.labels("failed" if refusal else "succeeded").inc()
                    log.info("import finished", extra={"import_id": record.import_id, "refused": refusal})
            elif classify(error)[0] is ErrorKind.TRANSIENT:
                backoff = self._settings.retry_initial_s * 2 ** max(record.attempts - 1, 0)
                delay = min(backoff, self._settings.retry_max_s)
                log.warning(
                    "import stopped by an outage; queued again",
                    extra={"import_id": record.import_id, "error": str(error), "retry_in_s": delay},
                )
                await self._store.requeue(record.import_id, self.owner, retry_in_s=delay, outage=str(error)[:500])
                REQUEUED.inc()
            else:
                log.error("import failed unexpectedly", exc_info=error, extra={"import_id": record.import_id})
                message = f"internal error: {type(error).__name__}: {error}"[:500]
                if await self._store.finish(
                    record.import_id, self.owner, summary=None, error=message, progress=run.progress()
                ):
                    FINISHED.labels("failed").inc()
        except Exception as e:  # noqa: BLE001 - MongoDB down: the lease runs out and the import is rerun
            _log_failure("could not record an import's outcome", e)


def _log_failure(what: str, error: Exception) -> None:
    if classify(error)[0] is ErrorKind.TRANSIENT:
        log.warning("%s: %s", what, error)
    else:
        log.error("%s", what, exc_info=error)


async def _wait(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
