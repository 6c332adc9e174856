"""Scheduler benchmark: memory per open invoice, the idle tick at 10 k and 100 k open invoices, and
the tick that finds and emits 10 000 reminders.

Run with ``python -m benchmarks.bench_scheduler`` (``make bench-scheduler``). On the local stack's
broker (Tansu) and MongoDB-wire server (nx-27017), started for the run, the scheduler runs **in
this process**, wired as ``factura.scheduler.bootstrap`` wires it (``schedules`` collection with its
``next_due_ms`` index, channel credits, the sweep lease with the default term, the devstack
tenants' reminder plans), except that the handlers' clock is injected (the lease keeps the real one).

* **load**: ``BENCH_INVOICES`` (default 100 000) open invoices go through the real handler path:
  ``invoice.created`` envelopes, as JSON, decoded by the consumer loop's ``decode`` and handed to
  ``on_invoice_created``, ``invoice.created``'s partition count (4) at a time, as the consumer
  loop runs one handler per partition. Four tenants (four time zones, always-open windows, the
  default plan: 5 days before, on the day, 3 and 10 days after, weekly repeats). Every invoice's
  first step (5 days before its due date) lies after the measured "now", so nothing is due.
  Every ``BENCH_INVOICES / BENCH_DUE``-th invoice (10 000) has its first step within the next day;
  the others' first steps are spread over 90 days from the third day on.
* **memory**: resident memory (``VmRSS``) of this process after ``gc.collect()``, once loaded and
  after a few idle ticks, beyond the baseline taken after a warm-up (the same code paths run on
  a separate collection, then ``gc.collect()``), divided by the open invoices. It counts what the
  scheduler process holds (Python heap, allocator slack left by the load, client buffers); the
  state itself lives in MongoDB (the server's file size is printed for context, not counted).
* **idle tick**: ``tick()`` (lease renewal and the sweep's due query) with nothing due, median of
  ``BENCH_TICKS`` (50) after 10 000 and after every invoice is loaded.
* **due tick**: the injected clock moves one day on, so exactly the 10 000 are due; one
  ``tick()`` finds them, publishes each ``reminder.due`` to the broker (acked) and moves each
  timer. Checked: the keys it returns and the records on ``reminder.due`` both number 10 000.

The last line is ``RESULT bytes_per_invoice=... idle_tick_ms_10k=... idle_tick_ms_100k=...
due_tick_ms=... reminders_per_s=...``.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr
from pymongo.asynchronous.database import AsyncDatabase

from factura.common.delivery.effectiveness import ChannelEffectiveness
from factura.common.kafka.consumer import Message
from factura.common.kafka.partition import decode
from factura.common.kafka.producer import Publisher
from factura.common.lease import Lease
from factura.common.mongo import Document, create_client, database, process_owner
from factura.common.pii import COLLECTION as CUSTOMER_KEYS
from factura.common.pii import field_cipher
from factura.common.schemas import EXAMPLES_DIR
from factura.common.settings import KafkaSettings, MongoSettings, PiiSettings
from factura.common.tenants import TenantDirectory
from factura.common.topics import INVOICE_CREATED, REMINDER_DUE
from factura.devstack.config import StackConfig
from factura.devstack.stack import Stack
from factura.scheduler.bootstrap import SWEEP_LEASE
from factura.scheduler.handlers import SchedulerHandlers
from factura.scheduler.schedule import Schedules
from factura.scheduler.settings import Settings

INVOICES = int(os.environ.get("BENCH_INVOICES", "100000"))
CHECKPOINT = min(INVOICES, int(os.environ.get("BENCH_CHECKPOINT", "10000")))
DUE = min(INVOICES, int(os.environ.get("BENCH_DUE", "10000")))
TICKS = int(os.environ.get("BENCH_TICKS", "50"))
WARMUP = 500
PROGRESS = 30_000
#: devstack tenants: four time zones, always-open send windows, the default steps.
TENANTS = ("harinas-sur", "lisboa-tech", "carpati-energie", "sampa-logistica")
#: The measured "now" (a Monday noon UTC); the due tick runs one day later.
NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)
TARGETS = {"bytes_per_invoice": 1024.0, "idle_tick_ms": 5.0}
_EXAMPLE: dict[str, Any] = json.loads((EXAMPLES_DIR / "invoice.created.v1.json").read_text(encoding="utf-8"))


class Clock:
    """The handlers' clock: the benchmark moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def due_date(i: int) -> date:
    """Every ``INVOICES // DUE``-th invoice is due in 6 days (its first step, 5 days before, falls
    within the next day in every tenant's zone); the rest from 8 days on, over 90 days."""
    if i % (INVOICES // DUE) == 0:
        return NOW.date() + timedelta(days=6)
    return NOW.date() + timedelta(days=8 + i % 90)


def created(i: int, run: str) -> Message[Any]:
    """``invoice.created`` number ``i`` as the consumer loop hands it over: JSON, decoded."""
    number = f"B-{run}-{i:06d}"
    event_id = str(uuid.uuid4())
    tenant = TENANTS[i % len(TENANTS)]
    data = _EXAMPLE["data"] | {
        "invoice_number": number,
        "issue_date": NOW.date().isoformat(),
        "due_date": due_date(i).isoformat(),
    }
    raw = json.dumps(
        _EXAMPLE
        | {"event_id": event_id, "correlation_id": event_id, "tenant_id": tenant, "invoice_id": number, "data": data}
    ).encode()
    event = decode(INVOICE_CREATED, raw)
    return Message(INVOICE_CREATED, 0, i, f"{tenant}/{number}".encode(), {}, raw, event)


async def load(handlers: SchedulerHandlers, numbers: Iterator[int], run: str) -> float:
    """``on_invoice_created`` for each number, one per partition at a time; seconds taken."""
    started = time.perf_counter()

    async def partition() -> None:
        for i in numbers:  # the shared iterator hands each number to one worker
            await handlers.on_invoice_created(created(i, run))

    await asyncio.gather(*(partition() for _ in range(INVOICE_CREATED.partitions)))
    return time.perf_counter() - started


def rss_bytes() -> int:
    """Resident memory of this process after a full collection (``VmRSS``)."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def idle_ticks(handlers: SchedulerHandlers) -> list[float]:
    """``TICKS`` ticks with nothing due, each in ms (each must sweep and find nothing)."""
    times = []
    for _ in range(TICKS):
        started = time.perf_counter()
        swept = await handlers.tick()
        times.append((time.perf_counter() - started) * 1000)
        if swept != []:
            raise RuntimeError(f"an idle tick swept {swept if swept is None else len(swept)}: expected nothing due")
    return times


async def records(kafka: KafkaSettings, logical: str) -> int:
    """Records on a topic, counted by reading them: the local broker (Tansu) reports too low an end
    offset after a produce request that carried several records for one partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        topic = f"{kafka.topic_prefix}{logical}"
        parts = [TopicPartition(topic, p) for p in range(REMINDER_DUE.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        count = 0
        while batch := await consumer.getmany(*parts, timeout_ms=500, max_records=10_000):
            count += sum(len(items) for items in batch.values())
        return count
    finally:
        await consumer.stop()


def wire(
    settings: Settings, db: AsyncDatabase[Document], publisher: Publisher, clock: Clock, collection: str
) -> tuple[SchedulerHandlers, Schedules, Lease]:
    """What ``bootstrap`` builds, on ``collection``, with the injected clock."""
    schedules = Schedules(db[collection], field_cipher(db[CUSTOMER_KEYS], settings.pii))
    lease = Lease(db["leases"], SWEEP_LEASE, owner=process_owner(), ttl=settings.lease_ttl)
    handlers = SchedulerHandlers(
        publisher,
        schedules,
        lease,
        effectiveness=ChannelEffectiveness.in_database(db),
        tenants=TenantDirectory(settings.tenants_dir),
        clock=clock,
        unknown_invoice_grace=timedelta(seconds=settings.unknown_invoice_grace_s),
    )
    return handlers, schedules, lease


def row(what: str, value: float, unit: str, target: str) -> None:
    print(f"  {what:<46} {value:>10.2f} {unit:<6} {target}")


async def measure(cfg: StackConfig, run: str) -> dict[str, float]:
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=cfg.kafka_bootstrap, topic_prefix=cfg.topic_prefix, idempotence=False),
        mongo=MongoSettings(url=cfg.mongo_url, database=cfg.mongo_database),
        tenants_dir=cfg.tenants_dir,
        pii=PiiSettings(secret=SecretStr(cfg.pii_secret)),
    )
    clock = Clock(NOW)
    async with AsyncExitStack() as stack:
        mongo = create_client(settings.mongo)
        stack.push_async_callback(mongo.close)
        db = database(mongo, settings.mongo)
        publisher = Publisher(settings.kafka, client_id="scheduler")
        await publisher.start()
        stack.push_async_callback(publisher.stop)
        await ChannelEffectiveness.in_database(db).ensure_indexes()

        # Warm-up on a collection of its own: imports, plans, clients and caches go into the baseline.
        warm, warm_schedules, warm_lease = wire(settings, db, publisher, clock, "schedules_warmup")
        await warm_schedules.ensure_indexes()
        await load(warm, iter(range(WARMUP)), f"{run}w")
        await idle_ticks(warm)
        await warm_lease.release()  # the measured handlers take the lease at once
        handlers, schedules, _ = wire(settings, db, publisher, clock, "schedules")
        await schedules.ensure_indexes()
        baseline = rss_bytes()

        numbers = iter(range(INVOICES))
        first_s = await load(handlers, itertools.islice(numbers, CHECKPOINT), run)
        print(f"loaded {CHECKPOINT} invoices in {first_s:.1f} s ({CHECKPOINT / first_s:.0f}/s)", flush=True)
        idle_10k = await idle_ticks(handlers)
        rss_10k = rss_bytes()
        rest_s = 0.0
        for loaded in range(CHECKPOINT, INVOICES, PROGRESS):
            rest_s += await load(handlers, itertools.islice(numbers, PROGRESS), run)
            done = min(INVOICES, loaded + PROGRESS)
            rate = (done - CHECKPOINT) / rest_s
            print(f"loaded {done} invoices, the last {done - CHECKPOINT} at {rate:.0f}/s", flush=True)
        idle_100k = await idle_ticks(handlers)
        rss_100k = rss_bytes()
        db_bytes = sum(f.stat().st_size for f in cfg.mongo_dir.rglob("*") if f.is_file())

        clock.now = NOW + timedelta(days=1)
        started = time.perf_counter()
        swept = await handlers.tick()
        due_s = time.perf_counter() - started
        emitted = await records(settings.kafka, REMINDER_DUE.name)
    expected = sum(1 for i in range(INVOICES) if due_date(i) == due_date(0))
    if swept is None or len(swept) != expected or emitted != expected:
        raise RuntimeError(f"due tick: {expected} expected, {len(swept or [])} swept, {emitted} on reminder.due")
    return {
        "baseline_mb": baseline / 2**20,
        "load_per_s": (INVOICES - CHECKPOINT) / rest_s,
        "bytes_10k": (rss_10k - baseline) / CHECKPOINT,
        "bytes_per_invoice": (rss_100k - baseline) / INVOICES,
        "slope": (rss_100k - rss_10k) / max(1, INVOICES - CHECKPOINT),
        "db_per_invoice": db_bytes / (INVOICES + WARMUP),
        "idle_10k": statistics.median(idle_10k),
        "idle_10k_p95": statistics.quantiles(idle_10k, n=20)[-1],
        "idle_100k": statistics.median(idle_100k),
        "idle_100k_p95": statistics.quantiles(idle_100k, n=20)[-1],
        "due": expected,
        "due_ms": due_s * 1000,
        "per_s": expected / due_s,
    }


async def main() -> None:
    run = uuid.uuid4().hex[:6]
    load_avg = os.getloadavg()[0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = StackConfig.free_ports(Path(tmp), topic_prefix=f"sched{run}.", mongo_database=f"sched{run}")
        with Stack(cfg) as stack:
            stack.start_services(["kafka", "mongo"])
            r = await measure(cfg, run)
    k, n = f"{CHECKPOINT // 1000}k", f"{INVOICES // 1000}k"
    print()
    print(
        f"machine: {os.cpu_count()} cores, load average {load_avg:.1f} before the run; scheduler in this process"
        f" on nx-27017 and Tansu; run took {time.monotonic() - started:.0f} s"
    )
    print(
        f"load: {INVOICES} invoice.created through on_invoice_created ({INVOICE_CREATED.partitions} at a time),"
        f" {r['load_per_s']:.0f}/s; {len(TENANTS)} tenants; baseline RSS {r['baseline_mb']:.0f} MB"
    )
    print(f"  {'':<46} {'measured':>10} {'':<6} target")
    row(f"RSS beyond baseline per open invoice at {n}", r["bytes_per_invoice"], "B", "<= 1024")
    row(f"  same at {k}", r["bytes_10k"], "B", "")
    row(f"  RSS growth {k} → {n} per invoice", r["slope"], "B", "")
    row("  MongoDB file per invoice (not counted)", r["db_per_invoice"], "B", "")
    row(f"idle tick at {k}, median", r["idle_10k"], "ms", "<= 5")
    row(f"idle tick at {k}, p95", r["idle_10k_p95"], "ms", "")
    row(f"idle tick at {n}, median", r["idle_100k"], "ms", f"<= 5, about the {k} figure")
    row(f"idle tick at {n}, p95", r["idle_100k_p95"], "ms", "")
    row(f"due tick: {r['due']:.0f} reminder.due found and emitted", r["due_ms"], "ms", "")
    row("  reminders per second", r["per_s"], "/s", "")
    print(
        f"RESULT bytes_per_invoice={r['bytes_per_invoice']:.0f} idle_tick_ms_10k={r['idle_10k']:.2f}"
        f" idle_tick_ms_100k={r['idle_100k']:.2f} due_tick_ms={r['due_ms']:.0f} reminders_per_s={r['per_s']:.0f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
