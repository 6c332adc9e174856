"""Which dropped files to take, and when: one at a time, each only once it is complete.

A file is offered when its SFTP upload is closed (or it is renamed to its final name), and by a
periodic scan of every inbox, which finds what a restart or an outage left behind. A file still
open for writing is never taken, and a file being taken cannot be written, renamed or removed
over SFTP (:meth:`Inbox.busy`).

A dependency outage pauses the work: the files waiting are dropped from the queue (they stay in
their inboxes) and the next scan offers them again, so an outage is retried at the scan's pace
without parking any file in ``failed/``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from contextlib import suppress
from pathlib import Path

from factura.ingest.sftp.drop import Drop, Outcome
from factura.ingest.sftp.layout import Layout, ignored

log = logging.getLogger(__name__)


class Inbox:
    def __init__(self, drop: Drop, layout: Layout, *, scan_interval_s: float) -> None:
        self.drop, self.layout, self.scan_interval_s = drop, layout, scan_interval_s
        self._queue: asyncio.Queue[tuple[str, Path]] = asyncio.Queue()
        self._queued: set[Path] = set()
        self._writing: Counter[Path] = Counter()
        self._taking: Path | None = None

    def busy(self, path: Path) -> bool:
        """True while ``path`` is being ingested: SFTP must not change it under the loader."""
        return path == self._taking

    def writing(self, path: Path) -> bool:
        return self._writing[path] > 0

    def opened(self, path: Path) -> None:
        """An SFTP session opened ``path`` for writing."""
        self._writing[path] += 1

    def closed(self, tenant_id: str, path: Path, *, complete: bool = True) -> None:
        """An SFTP session closed its write handle on ``path``: the upload is complete (unless told not)."""
        self._writing[path] -= 1
        if self._writing[path] <= 0:
            del self._writing[path]
            if complete:
                self.offer(tenant_id, path)

    def offer(self, tenant_id: str, path: Path) -> None:
        """Queue ``path`` unless it is a partial upload by name, still open, or queued already."""
        if ignored(path.name) or self.writing(path) or path in self._queued:
            return
        self._queued.add(path)
        self._queue.put_nowait((tenant_id, path))

    def scan(self) -> None:
        """Offer every complete file of every inbox (restart safety, and the retry after an outage)."""
        for tenant_id in self.layout.tenants():
            for path in self.layout.waiting(tenant_id):
                self.offer(tenant_id, path)

    async def run(self, stopping: asyncio.Event) -> None:
        """Scan and take files until ``stopping`` is set; the file in hand is left in its inbox then."""
        worker = asyncio.create_task(self._work(), name="sftp-drop")
        try:
            while not stopping.is_set() and not worker.done():
                try:
                    self.scan()
                except OSError:
                    log.exception("cannot scan the SFTP inboxes")
                with suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self.scan_interval_s)
        finally:
            worker.cancel()
            with suppress(asyncio.CancelledError):
                await worker

    async def _work(self) -> None:
        while True:
            tenant_id, path = await self._queue.get()
            self._queued.discard(path)
            if self.writing(path):
                continue  # opened again since it was offered: offered again when closed
            self._taking = path
            try:
                outcome = await self.drop.process(tenant_id, path)
            except OSError:
                log.exception("cannot move a dropped file; it stays in the inbox", extra={"tenant_id": tenant_id})
                outcome = Outcome.DEFERRED
            finally:
                self._taking = None
            if outcome is Outcome.DEFERRED:
                self._pause()

    def _pause(self) -> None:
        """Forget the queue until the next scan: its files stay in their inboxes."""
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queued.clear()
