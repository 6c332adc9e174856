"""Every tenant's chain verified in the background, so tampering pages someone instead of waiting
for an auditor to ask.

**What a run does.** At start and then every ``interval_s``, each chain is walked from the last
signed checkpoint an earlier run found it to match (:func:`~factura.audit.verify.verify_chain`
with ``since``): the cost is the records written since, not the chain. A full walk costs about
70 s of one core per million records (``verify_chain`` checked 14 000 records/s against the
local MongoDB-wire server: 50 000 in 3.6 s), too much every hour for large tenants, yet it is the
only walk that sees a change made *before* the anchor. So a chain is walked whole every
``full_interval_s`` (default a day), on this process's first run (anchors live in memory), and on
every run after a break until a full walk finds it whole again (an incremental walk from an
anchor after the damage would otherwise clear the alert while the damage is still there).

**Tenants:** every tenant with records or checkpoints (a chain whose records were all deleted
still has signed checkpoints, and fails), plus every tenant this process has verified before.

**Metrics:** ``factura_audit_chain_verifications_total{outcome}`` (one per chain walked),
``factura_audit_chain_broken`` (chains that failed in the last completed run) and
``factura_audit_chain_verified_timestamp_seconds`` (when that run ended; 0 before the first). A
run that MongoDB interrupts updates neither gauge and is retried after ``retry_s``, so an outage
shows as a stale timestamp, never as a broken chain. Each break is logged at ERROR with its
tenant, position, record id and problem.

**Several replicas:** the service passes a MongoDB lease (:mod:`factura.common.lease`), so only
its holder verifies; a replica that stops renewing is replaced after the lease's term. Replicas
without the lease leave their gauges as they were: query them with ``max()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from prometheus_client import Gauge
from pymongo.errors import PyMongoError

from factura.audit.checkpoints import Keyring
from factura.audit.store import AuditDb
from factura.audit.verify import Anchor, Verification, verify_chain
from factura.common.logging import log_context
from factura.common.metrics import PREFIX, counter

log = logging.getLogger(__name__)
T = TypeVar("T")

VERIFICATIONS = counter(
    "audit_chain_verifications_total", "Chains walked by the periodic verifier, by outcome.", ("outcome",)
)
CHAIN_BROKEN = Gauge(f"{PREFIX}audit_chain_broken", "Tenants whose chain failed the last periodic verification.")
VERIFIED_AT = Gauge(
    f"{PREFIX}audit_chain_verified_timestamp_seconds",
    "Unix time the last periodic verification of every chain ended (0 before the first).",
)
OUTCOMES = ("ok", "broken")


class Lease(Protocol):
    """One replica at a time (``factura.common.lease.Lease`` has this shape)."""

    async def acquire(self) -> bool: ...

    async def keep(self) -> bool: ...

    async def release(self) -> None: ...


@dataclass
class ChainWatch:
    db: AuditDb
    keys: Keyring
    interval_s: float = 3600.0
    full_interval_s: float = 86400.0
    lease: Lease | None = None
    retry_s: float = 60.0
    #: tenant → the signed checkpoint the next incremental walk starts from.
    _anchors: dict[str, Anchor] = field(default_factory=dict, init=False)
    #: tenant → monotonic time of its last full walk that found the chain whole.
    _full_at: dict[str, float] = field(default_factory=dict, init=False)
    _tenants: set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        for outcome in OUTCOMES:  # both series exist from the start, so increase() sees the first one
            VERIFICATIONS.labels(outcome=outcome)

    async def run(self, stopping: asyncio.Event) -> None:
        """Verify at start and every ``interval_s`` (while holding the lease) until ``stopping``."""
        done_at: float | None = None
        try:
            while not stopping.is_set():
                try:
                    due = done_at is None or time.monotonic() - done_at >= self.interval_s
                    if await self._mine() and due and await self.verify_all(stopping) is not None:
                        done_at = time.monotonic()
                except PyMongoError as e:  # MongoDB down: the gauges go stale, the next turn retries
                    log.warning("chain verification interrupted; retrying", extra={"error": repr(e)[:300]})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), min(self.interval_s, self.retry_s))
        finally:
            if self.lease is not None:
                with contextlib.suppress(PyMongoError):
                    await self.lease.release()

    async def verify_all(self, stopping: asyncio.Event | None = None) -> list[Verification] | None:
        """Verify every chain once and set the gauges; None (gauges untouched) when ``stopping`` was
        set or the lease was lost part way."""
        self._tenants |= {str(t) for t in await self.db.records.distinct("tenant_id")}
        self._tenants |= {str(t) for t in await self.db.checkpoints.distinct("tenant_id")}
        results = []
        for tenant in sorted(self._tenants):
            if self.lease is not None and not await self.lease.keep():
                return None
            result = await self.verify(tenant) if stopping is None else await _unless(stopping, self.verify(tenant))
            if result is None:
                return None
            results.append(result)
        CHAIN_BROKEN.set(sum(not r.ok for r in results))
        VERIFIED_AT.set(time.time())
        return results

    async def verify(self, tenant: str) -> Verification:
        """One chain: incremental from its anchor, or whole when a full walk is due (module docstring)."""
        started = time.monotonic()
        full_due = started - self._full_at.get(tenant, -float("inf")) >= self.full_interval_s
        result = await verify_chain(self.db, tenant, self.keys, None if full_due else self._anchors.get(tenant))
        VERIFICATIONS.labels(outcome="ok" if result.ok else "broken").inc()
        if not result.ok:
            self._anchors.pop(tenant, None)
            self._full_at.pop(tenant, None)
            brk = result.first_break
            assert brk is not None
            with log_context(None, tenant):
                log.error(
                    "audit chain of %s broken at position %d (record %s): %s",
                    tenant,
                    brk.seq,
                    brk.record_id,
                    brk.problem,
                    extra={"seq": brk.seq, "record_id": brk.record_id, "problem": brk.problem},
                )
            return result
        if result.from_seq == 1:
            self._full_at[tenant] = started
        if result.last_checkpoint_seq:
            self._anchors[tenant] = Anchor(result.last_checkpoint_seq, result.last_checkpoint_hash)
        return result

    async def _mine(self) -> bool:
        return self.lease is None or await self.lease.acquire()


async def _unless(stopping: asyncio.Event, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None once ``stopping`` is set first (a long walk must not hold up a
    shutdown)."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(stopping.wait())
    await asyncio.wait((task, stop), return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None
