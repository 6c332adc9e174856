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
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from factura.common.errors import DependencyDown
from factura.renderer.pipeline import Produced, produce, warm_up_job
from factura.renderer.pool import RenderPool

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
    print(json.dumps({"workers": pool.pids(), "forkserver": server}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_no_render_process_outlives_a_sigkilled_owner() -> None:
    """``kill -9`` of the renderer: its workers and its forkserver exit by themselves."""
    # subprocess, not asyncio: the workers inherit the owner's stdout, and asyncio's wait() would
    # wait for that pipe to close, i.e. for the very processes this test is about
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE)
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
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()
        for pid in lingering:  # a failed run must not leave its processes behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
