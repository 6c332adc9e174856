"""Audit benchmark: the chained consumer against a bare ``insert_many``, queries and verification at 1 M.

Run with ``python -m benchmarks.bench_audit`` (``make bench-audit``). On the local broker (Tansu)
and MongoDB-wire server (nx-27017), started for the run, in one run:

* **raw**: ``--events`` (50 000) ready-made documents, exactly the chained records audit stores
  (real envelopes built from the checked-in examples, through ``records.from_event`` and
  ``chain.chained``), inserted with ``insert_many(ordered=False)`` 1 000 at a time into a fresh
  collection with audit's indexes (``AuditDb.ensure_indexes``). Building them is not timed.
* **consumer**: the same number of events (invoice.created, invoice.rendered, delivery.failed,
  delivery.succeeded, delivery.opened, payment.received; 4 tenants, 50 customers each) published
  to their topics first, then audit's real wiring: ``bootstrap()`` with the devstack's settings
  for the audit service and a fresh signing key, its routes in a :class:`ConsumerLoop`, its
  checkpoint task beside it. The rate runs from the first batch handed to a handler until the
  handlers have stored all of them (group joins are not counted; the figure from the loop's start
  is printed too); the stored count is then checked in MongoDB and every chain verified.
  ``ratio_vs_raw`` = consumer / raw (target >= 0.7).
* **where a consumer's time goes**: the per-event CPU parts (pydantic decode, record building,
  canonical JSON, sha256) timed on the same events, and the per-batch MongoDB parts (the duplicate
  lookup, the chain-head lookup and the same as ``$eq``, ordered vs unordered insert) timed on the
  server, beside the measured per-event cost. ``--profile FILE`` also cProfiles the consumer run.
* **queries at 1 M**: one tenant's chain filled to ``--stored`` (1 000 000) records, built as for
  raw and inserted the same way (``--invoices`` 1 000 invoices of 50 customers, a mix of event
  types), then ``--queries`` (200) random invoice timelines (first page of 100, chain order) and
  searches (one customer's failed deliveries, newest first, 50) through ``AuditQueries``: p50/p95
  (target timeline p95 <= 50 ms). Beside each, the same filter written with ``$eq`` (see
  :func:`as_eq`). Past ``--query-budget-s`` (120 s) the queries stop early, after 10 rounds:
  a query nx-27017 answers by scanning 1 M records takes seconds.
* **verify**: ``verify_chain`` over that chain (with a signed head checkpoint): records/s.

On this 2-core machine the run takes about 16 minutes at 1 M, most of it filling the chain
(nx-27017 stores 1 500-3 000 records/s) and verifying it; ``--stored 200000`` takes about 6.

The last line is ``RESULT raw_insert_per_s=... consumer_per_s=... ratio_vs_raw=... timeline_p95_ms=...
search_p95_ms=... verify_per_s=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import cProfile
import json
import os
import pstats
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from factura.audit import chain, records
from factura.audit.bootstrap import bootstrap
from factura.audit.checkpoints import Signer, generate_key
from factura.audit.queries import AuditQueries, RecordFilter, Status
from factura.audit.settings import Settings
from factura.audit.store import AuditDb
from factura.audit.verify import verify_chain
from factura.common.envelope import Envelope
from factura.common.kafka.consumer import Batched, BatchHandler, ConsumerLoop, Message, Route
from factura.common.kafka.partition import decode
from factura.common.kafka.producer import Publisher
from factura.common.mongo import Document, create_client, database
from factura.common.schemas import EXAMPLES_DIR
from factura.common.settings import MongoSettings
from factura.common.topics import Topic, topic_for_event
from factura.devstack.config import StackConfig, service_env
from factura.devstack.stack import Stack

BATCH = 1000
TENANTS = ("harinas-sur", "lisboa-tech", "carpati-energie", "sampa-logistica")
#: The tenant whose chain is filled to ``--stored`` records for the queries and the verification.
STORED_TENANT = "volumen-norte"
#: One invoice's life in the consumer's events: issued, rendered, the email bounced, the SMS went
#: through, the customer opened it, and paid.
LIFE = (
    "invoice.created",
    "invoice.rendered",
    "delivery.failed",
    "delivery.succeeded",
    "delivery.opened",
    "payment.received",
)
#: The stored chain's mix (10 records per turn): 20 % failed deliveries, 30 % delivered.
MIX = (
    "delivery.succeeded",
    "delivery.opened",
    "delivery.failed",
    "delivery.succeeded",
    "invoice.rendered",
    "delivery.opened",
    "delivery.failed",
    "delivery.succeeded",
    "payment.received",
    "invoice.created",
)
EXAMPLE_FILES = {
    "invoice.created": "invoice.created.v1.json",
    "invoice.rendered": "invoice.rendered.v1.json",
    "delivery.failed": "delivery.failed.v2.json",
    "delivery.succeeded": "delivery.succeeded.v2.json",
    "delivery.opened": "delivery.opened.v1.json",
    "payment.received": "payment.received.v1.json",
}
EPOCH = datetime(2026, 11, 2, 8, tzinfo=UTC)
TARGETS = {"ratio_vs_raw": 0.7, "timeline_p95_ms": 50.0}
#: Query rounds taken even when the time budget is spent (a full scan per query at 1 M takes seconds).
MIN_ROUNDS = 10


# --- events -----------------------------------------------------------------------------------


def _examples() -> dict[str, dict[str, Any]]:
    return {kind: json.loads((EXAMPLES_DIR / name).read_text(encoding="utf-8")) for kind, name in EXAMPLE_FILES.items()}


EXAMPLES = _examples()


def envelope(kind: str, tenant: str, invoice: str, customer: str, at: datetime) -> bytes:
    """An example event of ``kind`` made about another invoice, customer and moment, as producers
    serialise it (compact JSON, UTF-8), with a fresh event id."""
    value = copy.deepcopy(EXAMPLES[kind])
    event_id = str(uuid.uuid4())
    value |= {"event_id": event_id, "tenant_id": tenant, "invoice_id": invoice, "occurred_at": at.isoformat()}
    if value["correlation_id"] == EXAMPLES[kind]["event_id"]:
        value["correlation_id"] = event_id
    data = value["data"]
    summary = data.get("invoice") or data.get("notice", {}).get("invoice") or data
    if "invoice_number" in summary:
        summary["invoice_number"] = invoice
    if "customer" in summary:
        summary["customer"]["customer_id"] = customer
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Event:
    topic: Topic
    key: bytes
    raw: bytes


def consumer_events(count: int, run: str) -> list[Event]:
    """``count`` events: invoices spread over the tenants and 50 customers each, each living
    through :data:`LIFE` (the last invoice's life may be cut short)."""
    out = []
    for i in range(count):
        number, step = divmod(i, len(LIFE))
        tenant = TENANTS[number % len(TENANTS)]
        invoice = f"A-{run}-{number:06d}"
        kind = LIFE[step]
        at = EPOCH + timedelta(minutes=number, seconds=step)
        raw = envelope(kind, tenant, invoice, f"C-{number // len(TENANTS) % 50:03d}", at)
        out.append(Event(topic_for_event(kind), f"{tenant}/{invoice}".encode(), raw))
    return out


def message(event: Event, offset: int) -> Message[Envelope[Any]]:
    """The event as the consumer loop hands it to audit (its partition is not known here)."""
    value = decode(event.topic, event.raw)
    assert isinstance(value, Envelope)
    return Message(event.topic, 0, offset, event.key, {}, event.raw, value)


class Chains:
    """Chains records the way the writer does, per tenant, from the genesis."""

    def __init__(self) -> None:
        self._heads: dict[str, chain.Head] = {}

    def doc(self, new: records.NewRecord) -> Document:
        doc = chain.chained(new, self._heads.get(new.tenant_id, chain.Head(0, records.GENESIS)))
        self._heads[new.tenant_id] = chain.Head(doc["seq"], doc["hash"])
        return doc


# --- raw ----------------------------------------------------------------------------------------


async def raw_insert(db: AsyncDatabase[Document], messages: Sequence[Message[Envelope[Any]]]) -> float:
    audit = AuditDb.of(db)
    await audit.ensure_indexes()
    chains = Chains()
    docs = [chains.doc(records.from_event(m)) for m in messages]
    started = time.perf_counter()
    for start in range(0, len(docs), BATCH):
        await audit.records.insert_many(docs[start : start + BATCH], ordered=False)
    return len(docs) / (time.perf_counter() - started)


# --- consumer -----------------------------------------------------------------------------------


async def publish(bootstrap_servers: str, prefix: str, events: Sequence[Event]) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for event in events:
            pending.append(await producer.send(event.topic.physical(prefix), event.raw, key=event.key))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return len(events) / (time.perf_counter() - started)


@dataclass
class Meter:
    """Wraps audit's batch handlers: when the first batch arrived, when ``target`` were stored."""

    target: int
    handled: int = 0
    batches: int = 0
    first: float = 0.0
    last: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def wrap(self, handler: BatchHandler) -> BatchHandler:
        async def timed(messages: Sequence[Message[Any]]) -> None:
            started = time.perf_counter()
            if not self.first:
                self.first = started
            await handler(messages)
            now = time.perf_counter()
            self.handled += len(messages)
            self.batches += 1
            if self.handled >= self.target and not self.done.is_set():
                self.last = now
                self.done.set()

        return timed

    @property
    def per_s(self) -> float:
        return self.handled / (self.last - self.first)


@dataclass(frozen=True)
class ConsumerRun:
    per_s: float
    from_start_per_s: float
    batch_mean: float
    max_poll_records: int
    stored: int
    chains_ok: bool


async def consume(cfg: StackConfig, key_file: Path, count: int, profile: Path | None) -> ConsumerRun:
    """Audit as ``python -m factura.audit`` runs it under the devstack, until ``count`` are stored."""
    env = service_env("audit", cfg) | {"FACTURA_AUDIT_SIGNING_KEY_FILE": str(key_file)}
    with mock.patch.dict(os.environ, env):
        settings = Settings()
    meter = Meter(count)
    stopping = asyncio.Event()
    profiler = cProfile.Profile() if profile else None
    async with AsyncExitStack() as stack:
        publisher = Publisher(settings.kafka, client_id="audit")
        await publisher.start()
        stack.push_async_callback(publisher.stop)
        wiring = await bootstrap(settings, publisher, stack)
        routes: dict[str, Route] = {
            name: Batched(meter.wrap(route.handler), route.max_records) if isinstance(route, Batched) else route
            for name, route in wiring.routes.items()
        }
        loop = ConsumerLoop(
            settings=settings.kafka, group_id="factura-audit", routes=routes, publisher=publisher, service="audit"
        )
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        running = [asyncio.create_task(loop.run()), *(asyncio.create_task(task(stopping)) for task in wiring.tasks)]
        finished = asyncio.create_task(meter.done.wait())
        await asyncio.wait([finished, *running], timeout=600, return_when=asyncio.FIRST_COMPLETED)
        if profiler:
            profiler.disable()
        loop.stop()
        stopping.set()
        finished.cancel()
        await asyncio.gather(*running)  # raises what ended the loop early, if anything did
        if not meter.done.is_set():
            raise RuntimeError(f"the consumer stored {meter.handled} of {count} events within 600 s")
        client = create_client(settings.mongo)
        stack.push_async_callback(client.close)
        audit = AuditDb.of(database(client, settings.mongo))
        stored = await audit.records.count_documents({})
        signer = Signer.from_file(key_file)
        checks = [await verify_chain(audit, tenant, signer.public) for tenant in TENANTS]
    if profiler and profile:
        profiler.dump_stats(profile)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return ConsumerRun(
        per_s=meter.per_s,
        from_start_per_s=count / (meter.last - started),
        batch_mean=meter.handled / meter.batches,
        max_poll_records=settings.kafka.max_poll_records,
        stored=stored,
        chains_ok=all(c.ok for c in checks) and sum(c.records for c in checks) == stored,
    )


# --- where the time goes ------------------------------------------------------------------------


def per_event_us(items: Sequence[Any], work: Callable[[Any], object]) -> float:
    started = time.perf_counter()
    for item in items:
        work(item)
    return (time.perf_counter() - started) / len(items) * 1e6


async def per_batch_ms(work: Callable[[], Awaitable[object]], rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def breakdown(db: AsyncDatabase[Document], events: Sequence[Event]) -> dict[str, float]:
    """The parts of storing one event, CPU per event (µs) and MongoDB per 1 000-record batch (ms)."""
    sample = list(events[: min(len(events), 5000)])
    messages = [message(e, i) for i, e in enumerate(sample)]
    new = [records.from_event(m) for m in messages]
    jsons = [chain.record_json(r, i + 1) for i, r in enumerate(new)]
    chains = Chains()
    cpu = {
        "decode (pydantic parse_event)": per_event_us(sample, lambda e: decode(e.topic, e.raw)),
        "records.from_event": per_event_us(messages, records.from_event),
        "canonical JSON (record_json)": per_event_us(list(enumerate(new)), lambda p: chain.record_json(p[1], p[0])),
        "sha256 link": per_event_us(jsons, lambda j: chain.link(records.GENESIS, j)),
        "chained (all of the above's chaining)": per_event_us(new, chains.doc),
    }
    fresh = Chains()
    docs = [fresh.doc(r) for r in new[:BATCH]]
    existing = AuditDb.of(db)  # the raw phase's full collection
    fresh_ids = [str(uuid.uuid4()) for _ in range(BATCH)]
    stored_ids = [d["_id"] async for d in existing.records.find({}, {"_id": 1}).limit(BATCH)]
    mongo = {
        "duplicate lookup, 1 000 new ids": await per_batch_ms(
            lambda: existing.records.find({"_id": {"$in": fresh_ids}}, {"_id": 1}).to_list()
        ),
        "duplicate lookup, 1 000 stored ids": await per_batch_ms(
            lambda: existing.records.find({"_id": {"$in": stored_ids}}, {"_id": 1}).to_list()
        ),
        "chain.load_head": await per_batch_ms(
            lambda: chain.load_head(existing.records, existing.tombstones, TENANTS[0])
        ),
        "the same head as {$eq: tenant}": await per_batch_ms(
            lambda: (
                existing.records.find({"tenant_id": {"$eq": TENANTS[0]}}, {"seq": 1, "hash": 1})
                .sort("seq", -1)
                .limit(1)
                .to_list()
            )
        ),
    }
    for ordered in (True, False):
        times = []
        for turn in range(3):  # each into a fresh collection with audit's indexes
            scratch = AuditDb.of(db, prefix=f"scratch{turn}_")
            await scratch.ensure_indexes()
            started = time.perf_counter()
            await scratch.records.insert_many(docs, ordered=ordered)
            times.append(time.perf_counter() - started)
            await scratch.records.drop()
        mongo[f"insert_many of 1 000, ordered={ordered}"] = statistics.median(times) * 1000
    return {**{f"cpu {k}": v for k, v in cpu.items()}, **{f"mongo {k}": v for k, v in mongo.items()}}


# --- 1 M stored ---------------------------------------------------------------------------------


class Filler:
    """One tenant's chain, built in batches: ``invoices`` invoices of ``customers`` customers, each
    receiving records in the :data:`MIX` order. Each record is a real event through
    ``from_event`` and ``chained``; only the decode is shared (one per invoice and type, the
    event id then swapped in the model and in the raw bytes)."""

    def __init__(self, invoices: int, customers: int, run: str) -> None:
        self._templates: list[dict[str, tuple[Message[Envelope[Any]], bytes]]] = []
        for number in range(invoices):
            invoice = f"S-{run}-{number:05d}"
            at = EPOCH + timedelta(minutes=number)
            forms = {}
            for kind in EXAMPLE_FILES:
                raw = envelope(kind, STORED_TENANT, invoice, f"C-{number % customers:03d}", at)
                event = Event(topic_for_event(kind), f"{STORED_TENANT}/{invoice}".encode(), raw)
                msg = message(event, 0)
                forms[kind] = (msg, str(msg.value.event_id).encode())
            self._templates.append(forms)
        self.invoice_ids = [f"S-{run}-{number:05d}" for number in range(invoices)]
        self._chains = Chains()
        self.made = 0

    def batch(self, size: int) -> list[Document]:
        docs = []
        invoices = len(self._templates)
        for k in range(self.made, self.made + size):
            turn, number = divmod(k, invoices)
            template, template_id = self._templates[number][MIX[turn % len(MIX)]]
            event_id = uuid.uuid4()
            value = template.value.model_copy(update={"event_id": event_id})
            raw = template.raw.replace(template_id, str(event_id).encode())
            msg = template._replace(offset=k, raw=raw, value=value)
            docs.append(self._chains.doc(records.from_event(msg)))
        self.made += size
        return docs


async def fill(audit: AuditDb, filler: Filler, total: int) -> float:
    """Insert ``total`` records, building the next batch (in a thread) while the last one is stored."""
    started = time.perf_counter()
    report, reported = started, 0
    docs = await asyncio.to_thread(filler.batch, min(BATCH, total))
    while docs:
        size = min(BATCH, total - filler.made)
        following = asyncio.to_thread(filler.batch, size) if size > 0 else asyncio.sleep(0, [])
        _, docs = await asyncio.gather(audit.records.insert_many(docs, ordered=False), following)
        now = time.perf_counter()
        if now - report > 30:
            stored = filler.made - len(docs)
            rate = (stored - reported) / (now - report)
            print(f"  filled {stored:>9} records, the last {stored - reported} at {rate:.0f}/s", flush=True)
            report, reported = now, stored
    return total / (time.perf_counter() - started)


def percentiles(times: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(times, n=20)
    return statistics.median(times) * 1000, cuts[-1] * 1000


def as_eq(query: Document) -> Document:
    """The same filter with every plain equality written ``{"$eq": value}``: identical in meaning
    (and plan) on MongoDB, but nx-27017 answers a plain string equality by scanning the whole
    collection (it also tests array containment, which no index covers) and ``$eq`` from the index."""
    return {name: {"$eq": value} if isinstance(value, str) else value for name, value in query.items()}


async def timed(call: Awaitable[list[Document]]) -> tuple[float, int]:
    started = time.perf_counter()
    rows = await call
    return time.perf_counter() - started, len(rows)


async def queries(audit: AuditDb, filler: Filler, customers: int, rounds: int, budget_s: float) -> dict[str, float]:
    """``rounds`` random timelines and searches through ``AuditQueries``, and the same filters as
    ``$eq`` (see :func:`as_eq`); stops early, after :data:`MIN_ROUNDS`, once ``budget_s`` is spent."""
    reads = AuditQueries(audit.records)
    rng = random.Random(7)
    names = ("timeline", "search", "timeline_eq", "search_eq")
    samples: dict[str, list[float]] = {name: [] for name in names}
    rows = dict.fromkeys(names, 0)
    warm = 2  # the first rounds warm the server's caches and are not counted
    started = time.perf_counter()
    for i in range(rounds + warm):
        invoice = rng.choice(filler.invoice_ids)
        where = RecordFilter(STORED_TENANT, customer_id=f"C-{rng.randrange(customers):03d}", status=Status.FAILED)
        timeline = {"tenant_id": STORED_TENANT, "invoice_id": invoice, "seq": {"$gt": 0}}
        calls = {
            "timeline": reads.timeline(STORED_TENANT, invoice, 0, 100),
            "search": reads.search(where, None, 50),
            "timeline_eq": audit.records.find(as_eq(timeline)).sort("seq", 1).limit(100).to_list(),
            "search_eq": audit.records.find(as_eq(where.query()), {"record": 0}).sort("seq", -1).limit(50).to_list(),
        }
        for name, call in calls.items():
            elapsed, found = await timed(call)
            if i >= warm:
                samples[name].append(elapsed)
                rows[name] += found
        if i >= warm + MIN_ROUNDS and time.perf_counter() - started > budget_s:
            break
    out: dict[str, float] = {"rounds": len(samples["timeline"])}
    for name in names:
        out[f"{name}_p50"], out[f"{name}_p95"] = percentiles(samples[name])
        out[f"{name}_rows"] = rows[name] / len(samples[name])
    return out


async def stored_volume(cfg: StackConfig, key_file: Path, args: argparse.Namespace, run: str) -> dict[str, float]:
    client = create_client_for(cfg)
    try:
        audit = AuditDb.of(client[cfg.mongo_database])  # beside the consumer's records, as in one service
        started = time.perf_counter()
        filler = Filler(args.invoices, args.customers, run)
        print(f"stored chain: {args.invoices} invoices prepared in {time.perf_counter() - started:.1f} s", flush=True)
        fill_per_s = await fill(audit, filler, args.stored)
        print(f"stored chain: {args.stored} records at {fill_per_s:.0f}/s", flush=True)
        found = await queries(audit, filler, args.customers, args.queries, args.query_budget_s)
        signer = Signer.from_file(key_file)
        head = await chain.load_head(audit.records, audit.tombstones, STORED_TENANT)
        await audit.checkpoints.insert_one(signer.checkpoint(STORED_TENANT, head, "head"))
        started = time.perf_counter()
        checked = await verify_chain(audit, STORED_TENANT, signer.public)
        verify_s = time.perf_counter() - started
    finally:
        await client.close()
    if not checked.ok or checked.records != args.stored:
        raise RuntimeError(f"the stored chain did not verify: {checked.as_dict()}")
    return found | {"fill_per_s": fill_per_s, "verify_per_s": checked.records / verify_s, "verify_s": verify_s}


def create_client_for(cfg: StackConfig) -> AsyncMongoClient[Document]:
    return create_client(MongoSettings(url=cfg.mongo_url, database=cfg.mongo_database))


# --- main ---------------------------------------------------------------------------------------


def row(what: str, value: float, unit: str, target: str = "", digits: int = 1) -> None:
    print(f"  {what:<52} {value:>10.{digits}f} {unit:<5} {target}")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_audit", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events for the raw and consumer runs")
    parser.add_argument(
        "--stored", type=int, default=1_000_000, help="records in the chain that is queried and verified"
    )
    parser.add_argument("--invoices", type=int, default=1000, help="invoices in the stored chain")
    parser.add_argument("--customers", type=int, default=50, help="customers of those invoices")
    parser.add_argument("--queries", type=int, default=200, help="timelines and searches measured (each)")
    parser.add_argument(
        "--query-budget-s", type=float, default=120.0, help=f"stop the queries early (after {MIN_ROUNDS}) past this"
    )
    parser.add_argument("--profile", type=Path, help="cProfile the consumer run into this file (slows it down)")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    run = uuid.uuid4().hex[:6]
    load_avg = os.getloadavg()[0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = StackConfig.free_ports(Path(tmp), topic_prefix=f"audit{run}.", mongo_database=f"audit{run}")
        key_file = Path(tmp) / "audit-signing.pem"
        generate_key(key_file)
        with Stack(cfg) as stack:
            stack.start_services(["kafka", "mongo"])
            events = consumer_events(args.events, run)
            client = create_client_for(cfg)
            try:
                raw_db = client[f"{cfg.mongo_database}raw"]
                raw_per_s = await raw_insert(raw_db, [message(e, i) for i, e in enumerate(events)])
                print(f"raw insert_many: {args.events} records at {raw_per_s:.0f}/s", flush=True)
                publish_per_s = await publish(cfg.kafka_bootstrap, cfg.topic_prefix, events)
                print(f"published {args.events} events at {publish_per_s:.0f}/s", flush=True)
                consumer = await consume(cfg, key_file, args.events, args.profile)
                print(f"consumer: {consumer.stored} stored at {consumer.per_s:.0f}/s", flush=True)
                parts = await breakdown(raw_db, events)
            finally:
                await client.close()
            if consumer.stored != args.events or not consumer.chains_ok:
                raise RuntimeError(
                    f"consumer stored {consumer.stored} of {args.events}, chains ok: {consumer.chains_ok}"
                )
            volume = await stored_volume(cfg, key_file, args, run)
    print()
    print(
        f"machine: {os.cpu_count()} cores, load average {load_avg:.1f} before the run; audit in this process"
        f" on nx-27017 and Tansu; run took {time.monotonic() - started:.0f} s"
    )
    report(args, raw_per_s, consumer, parts, volume)


def report(
    args: argparse.Namespace, raw_per_s: float, consumer: ConsumerRun, parts: dict[str, float], volume: dict[str, float]
) -> None:
    ratio = consumer.per_s / raw_per_s
    size = f"{args.stored / 1e6:g} M" if args.stored >= 1e6 else f"{args.stored // 1000} k"
    print(f"  {'':<52} {'measured':>10} {'':<5} target")
    row(f"raw insert_many(ordered=False) x {BATCH}", raw_per_s, "/s")
    row("audit consumer, Kafka to chained records", consumer.per_s, "/s", f">= {TARGETS['ratio_vs_raw']} x raw")
    row("  ratio to raw", ratio, "", f">= {TARGETS['ratio_vs_raw']}", digits=2)
    row("  from the loop's start (group join included)", consumer.from_start_per_s, "/s")
    row(f"  records per handler call (max_poll_records={consumer.max_poll_records})", consumer.batch_mean, "")
    row("  per event, consumer", 1e6 / consumer.per_s, "us")
    row("  per event, raw insert", 1e6 / raw_per_s, "us")
    for name, value in parts.items():
        row(f"  {name}", value, "us" if name.startswith("cpu") else "ms")
    row(f"stored chain filled ({size} records, insert_many)", volume["fill_per_s"], "/s")
    rounds = f"{volume['rounds']:.0f} rounds"
    row(f"timeline p50 at {size} ({volume['timeline_rows']:.0f} rows, {rounds})", volume["timeline_p50"], "ms")
    row(f"timeline p95 at {size}", volume["timeline_p95"], "ms", f"<= {TARGETS['timeline_p95_ms']:.0f}")
    row(f"  the same filter as $eq: p50 ({volume['timeline_eq_rows']:.0f} rows)", volume["timeline_eq_p50"], "ms")
    row("  the same filter as $eq: p95", volume["timeline_eq_p95"], "ms")
    row(f"search p50 at {size} (customer, failed; {volume['search_rows']:.0f} rows)", volume["search_p50"], "ms")
    row(f"search p95 at {size}", volume["search_p95"], "ms")
    row(f"  the same filter as $eq: p50 ({volume['search_eq_rows']:.0f} rows)", volume["search_eq_p50"], "ms")
    row("  the same filter as $eq: p95", volume["search_eq_p95"], "ms")
    row(f"verify_chain over {size} ({volume['verify_s']:.0f} s)", volume["verify_per_s"], "/s")
    print(
        f"RESULT raw_insert_per_s={raw_per_s:.0f} consumer_per_s={consumer.per_s:.0f} ratio_vs_raw={ratio:.2f}"
        f" timeline_p95_ms={volume['timeline_p95']:.1f} search_p95_ms={volume['search_p95']:.1f}"
        f" verify_per_s={volume['verify_per_s']:.0f}"
    )


if __name__ == "__main__":
    asyncio.run(main(_args()))
