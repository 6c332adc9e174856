"""The render pool's scratch folder: where its workers leave their results and Typst projects.

A render worker cannot clean up after itself: it ends by ``os._exit`` (the owner watch, the pool's
shutdown) or by SIGKILL, so no ``atexit`` handler runs and a ``TemporaryDirectory`` it made stays
behind. Nor can a SIGKILLed renderer. So every pool gets one folder, ``factura-render-*`` under the
system temp dir, with an exclusive ``flock`` held for as long as the pool's process lives (the
kernel releases it when that process dies, however it dies); each set of workers gets an empty
sub-folder of it, removed at the replacement after the one that retired it (not at once: a job
that finished just before its set broke may not have been read yet); and each pool that starts
removes the folders whose lock nobody holds any more, i.e. those of pools that died without closing.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "factura-render-"
#: The file in each scratch folder whose lock says its pool is alive.
LOCK = ".owner"
log = logging.getLogger(__name__)


class Scratch:
    """One pool's scratch folder (created and locked here) and its current workers' sub-folder."""

    def __init__(self, parent: Path | None = None) -> None:
        base = parent or Path(tempfile.gettempdir())
        if swept := sweep(base):
            log.info("removed the scratch folders of render pools that died", extra={"folders": len(swept)})
        # locked under a name the sweep does not match, then renamed: a pool that starts now
        # must not find this folder between its creation and its lock, and remove it
        staging = Path(tempfile.mkdtemp(prefix="." + PREFIX, dir=base))
        self._lock = os.open(staging / LOCK, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.path = staging.with_name(staging.name.removeprefix("."))
        staging.rename(self.path)
        self._generation = 0
        self.current = self._make(0)
        self._retired: Path | None = None
        self._closed = False

    def renew(self) -> Path:
        """An empty sub-folder for a new set of workers. The set before the replaced one has its
        sub-folder removed now: what is left there (outcomes nobody will read, dead workers'
        projects) is garbage by then."""
        if self._retired is not None:
            shutil.rmtree(self._retired, ignore_errors=True)
        self._retired = self.current
        self._generation += 1
        self.current = self._make(self._generation)
        return self.current

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock)

    def _make(self, generation: int) -> Path:
        folder = self.path / str(generation)
        folder.mkdir(mode=0o700)
        return folder


def sweep(base: Path) -> list[Path]:
    """Remove the scratch folders under ``base`` whose pool is gone (nobody holds their lock)."""
    removed = []
    for folder in base.glob(PREFIX + "*"):
        try:
            fd = os.open(folder / LOCK, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue  # not a scratch folder (or already removed by another sweep)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its pool is alive
        else:
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
        finally:
            os.close(fd)
    return removed
