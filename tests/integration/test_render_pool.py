"""The render pool under the death of its processes: real worker processes, real SIGKILLs.

No servers are needed; these are integration tests because they start and kill real processes.
Every wait below ends on a positive signal (a pidfd turning readable, a check changing state)
or fails at its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from factura.common.errors import DependencyDown
from factura.renderer.pipeline import Produced, produce, warm_up_job
from factura.renderer.pool import RenderPool
from factura.renderer.scratch import PREFIX, Scratch

pytestmark = pytest.mark.integration

DEADLINE_S = 60.0


@pytest.fixture
async def pool() -> AsyncIterator[RenderPool]:
    """Two real, warmed workers (the example Factur-X render), as the service starts them."""
    render_pool = RenderPool(2)
    try:
        await render_pool.warm_up()
        yield render_pool
    finally:
        render_pool.close()


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_S} s: {what}")
        await asyncio.sleep(0.01)


async def ready(pool: RenderPool) -> bool:
    try:
        await pool.check()
    except DependencyDown:
        return False
    return True


def wait_exited(pids: list[int], timeout_s: float = DEADLINE_S) -> list[int]:
    """Block until every pid has exited (its pidfd turns readable); return those still running."""
    fds = {}
    for pid in pids:
        try:
            fds[pid] = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # already gone
    deadline = time.monotonic() + timeout_s
    try:
        while fds and time.monotonic() < deadline:
            readable, _, _ = select.select(list(fds.values()), [], [], deadline - time.monotonic())
            for pid, fd in list(fds.items()):
                if fd in readable:
                    os.close(fds.pop(pid))
        return sorted(fds)
    finally:
        for fd in fds.values():
            os.close(fd)


async def render_until_done(pool: RenderPool) -> Produced:
    """What the consumer loop does with an invoice: retry while the pool reports itself down."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            return await pool.run(produce, *warm_up_job())
        except DependencyDown:
            if time.monotonic() > deadline:
                raise


async def test_a_killed_worker_fails_its_job_as_transient_and_the_next_renders_succeed(pool: RenderPool) -> None:
    old = pool.pids()
    assert len(old) == 2
    in_flight = asyncio.ensure_future(pool.run(time.sleep, 600))

    os.kill(old[0], signal.SIGKILL)

    with pytest.raises(DependencyDown) as lost:
        await in_flight  # never a BrokenProcessPool: the loop retries this invoice, never dead-letters it
    assert lost.value.dependency == "render-pool"
    # several invoices at once, as a consumer with many partitions sends them: all render, on one new pool
    produced = await asyncio.gather(*(pool.run(produce, *warm_up_job()) for _ in range(4)))
    assert all(p.pdf.startswith(b"%PDF-") and p.xml for p in produced)
    assert pool.replacements == 1
    assert set(pool.pids()).isdisjoint(old)
    assert wait_exited(old) == []  # the surviving worker of the broken pool was stopped too
    await pool.check()


#: How much of a message a worker killed mid-message has written to its pipe.
HALF_SENT_BYTES = 512


def dies_mid_message(size: int) -> bytes:
    """Job: a PDF-sized result, from a worker that SIGKILLs itself in its next write to a pipe (its
    reply), after at most :data:`HALF_SENT_BYTES` of it, as a kill can land mid-write. A reply the
    executor sends in pieces (a long one: a 4-byte header, then the body) is cut after the header;
    one that fits (a path) arrives whole."""
    send = Connection._send  # type: ignore[attr-defined]  # private: the one call every write goes through

    def send_then_die(self: Connection, buf: bytes, *args: object) -> None:
        send(self, bytes(buf[:HALF_SENT_BYTES]), *args)
        os.kill(os.getpid(), signal.SIGKILL)

    Connection._send = send_then_die  # type: ignore[attr-defined]
    return b"%PDF-" + bytes(size)


async def test_a_worker_killed_while_sending_its_outcome_never_hangs_the_pool(pool: RenderPool) -> None:
    """The chaos run's wedge: a worker killed half-way through sending a PDF back left CPython's
    executor thread waiting in ``recv()`` for the rest, for ever, the pool never marked broken.
    Outcomes now travel as files and the pipe carries only a path: one write, shorter than
    :data:`HALF_SENT_BYTES` (so whole here) and than ``PIPE_BUF`` (so whole or nothing anywhere)."""
    old = pool.pids()

    try:  # the outcome is complete in the pipe before the worker dies, or the job is lost with it
        result = await asyncio.wait_for(pool.run(dies_mid_message, 2_000_000), DEADLINE_S)
        assert result == b"%PDF-" + bytes(2_000_000)
    except DependencyDown as lost:
        assert lost.dependency == "render-pool"

    produced = await render_until_done(pool)
    assert produced.pdf.startswith(b"%PDF-")
    assert pool.replacements == 1
    assert set(pool.pids()).isdisjoint(old)


async def test_outcomes_and_temporary_files_stay_in_the_scratch_folder_of_the_current_workers(pool: RenderPool) -> None:
    first = pool.scratch
    assert Path(await pool.run(tempfile.gettempdir)) == first
    await pool.run(produce, *warm_up_job())
    assert {p.name.rsplit("-", 1)[0] for p in first.iterdir()} == {"factura-typst", "factura-typst-packages"}
    # (the warm-up's Typst projects: the outcome files are removed once read)

    os.kill(pool.pids()[0], signal.SIGKILL)
    await eventually(lambda: replaced(pool), "the pool is replaced")

    assert pool.scratch != first
    assert Path(await pool.run(tempfile.gettempdir)) == pool.scratch
    # the dead set's folder goes at the next replacement (an outcome in it may not have been read)
    os.kill(pool.pids()[0], signal.SIGKILL)
    await eventually(lambda: replaced(pool, 2), "the pool is replaced again")
    assert not first.exists()


async def test_a_scratch_folder_that_cannot_be_written_is_an_outage_that_ends_by_itself() -> None:
    """Disk full (here: a file where the folder should be), the invoice waits (the consumer loop
    pauses on DependencyDown), it is never failed; and a folder removed under the pool, as a /tmp
    cleaner would, is made again."""
    pool = RenderPool(1, warm=os.getpid)
    try:
        await pool.warm_up()
        shutil.rmtree(pool.scratch)
        pool.scratch.write_bytes(b"")
        with pytest.raises(DependencyDown, match="scratch folder cannot be written") as down:
            await pool.run(os.getpid)
        assert down.value.dependency == "render-pool"

        pool.scratch.unlink()
        assert await pool.run(os.getpid) in pool.pids()
        assert pool.scratch.is_dir()
    finally:
        pool.close()


async def test_readiness_fails_while_the_pool_is_broken_and_recovers_without_traffic() -> None:
    pool = RenderPool(1, warm=os.getpid)
    try:
        with pytest.raises(DependencyDown, match="starting"):
            await pool.check()
        await pool.warm_up()
        await pool.check()
        [old] = pool.pids()

        os.kill(old, signal.SIGKILL)

        # only the probe runs: it sees the broken pool, reports it, and starts the replacement
        await eventually(lambda: _not(ready(pool)), "readiness reports the dead worker")
        await eventually(lambda: ready(pool), "readiness recovers")
        assert pool.replacements == 1
        assert pool.pids() != [old]
        assert await pool.run(os.getpid) in pool.pids()
    finally:
        pool.close()


async def test_many_callers_on_a_broken_pool_start_one_replacement() -> None:
    pool = RenderPool(2, warm=os.getpid)
    try:
        await pool.warm_up()
        old = pool.pids()
        os.kill(old[0], signal.SIGKILL)
        assert wait_exited([old[0]]) == []

        pids = await asyncio.gather(*(_retrying(pool) for _ in range(16)))

        assert pool.replacements == 1
        assert set(pids) <= set(pool.pids())
        assert set(pool.pids()).isdisjoint(old)
    finally:
        pool.close()


async def _retrying(pool: RenderPool) -> int:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            return await pool.run(os.getpid)
        except DependencyDown:
            if time.monotonic() > deadline:
                raise


async def replaced(pool: RenderPool, times: int = 1) -> bool:
    """Probes readiness (which starts the replacement of a broken pool) until one is ready."""
    return await ready(pool) and pool.replacements == times


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


OWNER = """
import asyncio, json, os
from multiprocessing import forkserver
from factura.renderer.pool import RenderPool

async def main():
    pool = RenderPool(2, warm=os.getpid)
    await pool.warm_up()
    server = forkserver._forkserver._forkserver_pid
    scratch = str(pool.scratch.parent)
    print(json.dumps({"workers": pool.pids(), "forkserver": server, "scratch": scratch}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_no_render_process_outlives_a_sigkilled_owner(tmp_path: Path) -> None:
    """``kill -9`` of the renderer: its workers and its forkserver exit by themselves, and the next
    pool to start removes the scratch folder it could not."""
    # subprocess, not asyncio: the workers inherit the owner's stdout, and asyncio's wait() would
    # wait for that pipe to close, i.e. for the very processes this test is about
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # its own temp dir: no other pool sweeps it meanwhile
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, env=env)
    assert owner.stdout is not None
    lingering: list[int] = []
    try:
        readable, _, _ = select.select([owner.stdout], [], [], DEADLINE_S)
        assert readable, "the owner did not start its pool"
        started = json.loads(owner.stdout.readline())
        assert len(started["workers"]) == 2

        owner.kill()
        owner.wait()

        lingering = wait_exited([*started["workers"], started["forkserver"]])
        assert lingering == []
        scratch = Path(started["scratch"])
        assert scratch.parent == tmp_path
        assert scratch.name.startswith(PREFIX)
        assert scratch.exists()
        Scratch(tmp_path).close()  # what a pool does when it starts
        assert not scratch.exists()
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()
        for pid in lingering:  # a failed run must not leave its processes behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
