"""End-to-end benchmark: ERP inbound topic to SMTP 250 on the whole local stack, per render engine.

Run with ``python -m benchmarks.bench_e2e`` (``make bench``). Per engine (every sample tenant's
folder copied with ``engine = "typst"``, then ``"weasyprint"``), on a stack of its own (six services
as processes, ``factura.devstack.stack.Stack``, renderer with 2 worker processes):

* **throughput**: ``BENCH_INVOICES`` (default ``1000,10000``) one-page invoices over the four sample
  tenants, each with a working address, pushed at once to ``erp.invoices``; the rate runs from the
  first SMTP acceptance to the last (the capture server's Maildir file mtime: written just before it
  answers 250). Per stage, from the topics' record timestamps and events' ``occurred_at``: ingest
  (ERP record → ``invoice.created`` record), render (→ ``invoice.rendered``'s ``occurred_at``, stamped
  before the uploads), store (→ its record: S3 PUTs and manifest), send (→ SMTP 250); audit lag from
  the audit records' ``recorded_at``. CPU seconds per invoice of every process of the stack.
* **latency**: open-loop, paced at 70 % of the largest run's rate for ``BENCH_LATENCY_S`` (30 s):
  ERP record timestamp → SMTP 250, p50/p95/p99.
* **render only**: the same invoices (the ``invoice.created`` events of the largest run, at most
  ``BENCH_RENDER_INVOICES``) through ``RenderPool(2)`` + ``produce`` (with the tenant's signing job,
  as the renderer does) in this process, while the stack idles.
* **scaling**: the renderer restarted with 1, 2 and 4 worker processes, ``BENCH_SCALING_INVOICES``
  (500) invoices each.
* **raw rates** (``BENCH_RAW`` items each, ten times that for Kafka; 0 skips): aiosmtplib to the
  capture server (the emails of this run, as captured), Kafka produce and consume, MongoDB
  ``insert_many`` of audit records, S3 PUTs of 60 KB, with the code of ``bench_delivery``,
  ``bench_audit`` and ``bench_consumer``.

The limiting stage is the one with the most queueing (its time at full load minus at 70 % load);
``limiting_stage_ratio`` = end-to-end rate / that stage's raw rate in invoices/s. The last line is
``RESULT e2e_per_s= render_only_per_s= ratio_vs_render= p50_ms= p99_ms= audit_lag_s= wp_e2e_per_s=
wp_ratio_vs_render= limiting_stage_ratio=`` (Typst; ``wp_``: WeasyPrint).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from unittest import mock

import httpx
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import bench_consumer
from benchmarks.bench_audit import Event, consumer_events, raw_insert
from benchmarks.bench_audit import message as audit_message
from benchmarks.bench_audit import publish as produce_events
from benchmarks.bench_delivery import Tap, bare_smtp, percentile, s3_settings, store_documents
from benchmarks.bench_render import load, warm
from factura.audit.store import AuditDb
from factura.common.events import InvoiceCreatedV1, parse_event
from factura.common.mongo import create_client
from factura.common.settings import KafkaSettings, MongoSettings
from factura.common.storage import DocumentStore
from factura.common.tenants import TenantConfig, TenantDirectory
from factura.common.topics import ERP_INVOICES
from factura.devstack import procs
from factura.devstack.config import TENANTS_DIR, StackConfig, service_env
from factura.devstack.samples import invoice_payload
from factura.devstack.stack import Stack
from factura.renderer.pipeline import produce
from factura.renderer.pool import RenderPool
from factura.renderer.settings import RenderLimits
from factura.renderer.settings import Settings as RendererSettings
from factura.renderer.signing import SigningJobs

SIZES = tuple(int(s) for s in os.environ.get("BENCH_INVOICES", "1000,10000").split(","))
#: WeasyPrint's sizes, when a shorter run must do (e.g. ``1000`` on a busy machine); default the same.
WP_SIZES = tuple(int(s) for s in os.environ.get("BENCH_WP_INVOICES", ",".join(map(str, SIZES))).split(","))
LATENCY_S = float(os.environ.get("BENCH_LATENCY_S", "30"))
RENDER_ONLY_MAX = int(os.environ.get("BENCH_RENDER_INVOICES", "1000"))
SCALING_INVOICES = int(os.environ.get("BENCH_SCALING_INVOICES", "500"))
RAW = int(os.environ.get("BENCH_RAW", "2000"))
ENGINES = tuple(os.environ.get("BENCH_ENGINES", "typst,weasyprint").split(","))
#: Round robin; sampa-logistica signs (PAdES B-T + RFC 3161 token from the local TSA) on either engine.
TENANTS = tuple(os.environ.get("BENCH_TENANTS", "harinas-sur,lisboa-tech,carpati-energie,sampa-logistica").split(","))
WORKERS = 2
#: Partitions per topic: a consumer handles each one message at a time, so at most this many at once.
PARTITIONS = ERP_INVOICES.partitions
#: Services whose route takes one message per call (ingest and audit take batches: their figure is per batch).
PER_MESSAGE = ("renderer", "email-sender")
SCALING = (1, 2, 4)
LOAD = 0.7
WARMUP = 8
#: Topics a flowing invoice crosses (ERP, created, rendered, succeeded), and those audit reads too.
PRODUCED_PER_INVOICE, CONSUMED_PER_INVOICE = 4, 7
#: S3 calls per invoice: the renderer's manifest look-up, PDF, XML and manifest PUTs; the sender's GET.
S3_CALLS_PER_INVOICE = 5
STAGES = ("ingest", "render", "store", "send")
#: The raw rate each stage is held against (its own dependency, on its own).
RAW_OF = {"ingest": "broker", "render": "render", "store": "s3", "send": "smtp", "audit": "mongo"}
TARGETS = {"ratio_vs_render": 0.8, "p99_ms": 500.0, "audit_lag_s": 5.0, "typst_e2e_per_s": 50.0}
STARTED = time.monotonic()


def say(what: str) -> None:
    print(f"  [{time.monotonic() - STARTED:6.0f} s] {what}", flush=True)


def epoch(value: datetime | str) -> float:
    """Seconds since the epoch; nx-27017 may hand a stored datetime back as an ISO string."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def pct(values: Sequence[float], q: float) -> float:
    return percentile(list(values), q) if values else math.nan


# -- the invoices ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inbound:
    tenant_id: str
    number: str
    email: str
    event: Event


@dataclass(frozen=True)
class Trace:
    """One invoice's way through, in epoch seconds: each stage ends where the next begins."""

    erp: float  # ERP record timestamp (handed to the producer)
    created: float  # invoice.created record timestamp (ingest published it)
    rendered: float  # invoice.rendered occurred_at (the PDF is made, uploads not yet)
    stored: float  # invoice.rendered record timestamp (documents and manifest in S3)
    accepted: float  # Maildir file mtime (the capture server answers 250 right after)

    def stages(self) -> dict[str, float]:
        marks = (self.erp, self.created, self.rendered, self.stored, self.accepted)
        return {name: b - a for name, a, b in zip(STAGES, marks, marks[1:], strict=False)}


@dataclass(frozen=True)
class AuditFigures:
    tail_s: float  # last record stored − last SMTP acceptance
    lag_p50_s: float  # recorded_at − occurred_at per event
    lag_p99_s: float
    records_per_invoice: float
    per_s: float


@dataclass
class Run:
    label: str
    traces: list[Trace]
    audit: AuditFigures
    cpu: dict[str, float]  # process → CPU seconds during the run
    handler_ms: dict[str, float]  # "service topic" → mean time to handle one message (its own metric)
    created: list[bytes] = field(default_factory=list, repr=False)  # the invoice.created values

    @property
    def per_s(self) -> float:
        accepted = sorted(t.accepted for t in self.traces)
        return (len(accepted) - 1) / (accepted[-1] - accepted[0])

    @property
    def wall_s(self) -> float:
        return max(t.accepted for t in self.traces) - min(t.erp for t in self.traces)

    def stage(self, name: str, q: float) -> float:
        return pct([t.stages()[name] for t in self.traces], q)

    def latency_ms(self, q: float) -> float:
        return pct([(t.accepted - t.erp) * 1000 for t in self.traces], q)

    def completion_per_s(self) -> dict[str, float]:
        """Per stage, invoices/s from its first completion to its last: upstream of the bottleneck
        they run ahead, from the bottleneck on they all show its rate."""
        ends = {
            "ingest": [t.created for t in self.traces],
            "render": [t.rendered for t in self.traces],
            "store": [t.stored for t in self.traces],
            "send": [t.accepted for t in self.traces],
        }
        return {name: (len(v) - 1) / (max(v) - min(v)) for name, v in ends.items()}


def engine_tenants(root: Path, engine: str) -> Path:
    """Every sample tenant's folder copied with ``engine = "<engine>"`` (as bench_render does for one)."""
    shutil.copytree(TENANTS_DIR, root)
    for toml in root.glob("*/tenant.toml"):
        config = re.sub(r"(?m)^engine\s*=.*\n", "", toml.read_text(encoding="utf-8"))
        toml.write_text(f'engine = "{engine}"\n{config}', encoding="utf-8")
    return root


# -- one engine's stack ---------------------------------------------------------------------------


class Session:
    """One stack, the invoices sent through it so far, and what has been read back."""

    def __init__(self, cfg: StackConfig, stack: Stack) -> None:
        self.cfg, self.stack = cfg, stack
        self.run = uuid.uuid4().hex[:6]
        self.today = datetime.now(UTC).date()
        self.next_n = 1
        self.published = 0
        self.seen_mail: set[str] = set()
        self.bus = KafkaSettings(
            bootstrap_servers=cfg.kafka_bootstrap, topic_prefix=cfg.topic_prefix, idempotence=False
        )
        self.mongo = create_client(MongoSettings(url=cfg.mongo_url, database=cfg.mongo_database))
        self.audit = AuditDb.of(self.mongo[cfg.mongo_database])

    def invoices(self, count: int) -> list[Inbound]:
        batch = []
        for n in range(self.next_n, self.next_n + count):
            tenant = TENANTS[n % len(TENANTS)]
            email = f"e{n}.{self.run}@{tenant}.test"
            payload = invoice_payload(tenant, n, self.today, email=email)
            number = payload["invoice_number"]
            raw = json.dumps(payload, ensure_ascii=False).encode()
            batch.append(Inbound(tenant, number, email, Event(ERP_INVOICES, f"{tenant}/{number}".encode(), raw)))
        self.next_n += count
        return batch

    async def push(self, batch: list[Inbound], rate: float | None = None) -> None:
        """All at once (``rate`` None), or open loop at ``rate`` per second whatever the pipeline does."""
        self.published += len(batch)
        if rate is None:
            await produce_events(self.cfg.kafka_bootstrap, self.cfg.topic_prefix, [b.event for b in batch])
            return
        producer = AIOKafkaProducer(bootstrap_servers=self.cfg.kafka_bootstrap, acks="all", linger_ms=0)
        await producer.start()
        try:
            started, pending = time.monotonic(), []
            for i, b in enumerate(batch):
                await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
                pending.append(
                    await producer.send(b.event.topic.physical(self.cfg.topic_prefix), b.event.raw, key=b.event.key)
                )
            await asyncio.gather(*pending)
        finally:
            await producer.stop()

    async def settle(self, batch: list[Inbound], timeout_s: float) -> dict[str, float]:
        """Wait until the capture server holds a mail for each; recipient → acceptance time."""
        inbox = self.cfg.maildir / "new"
        wanted = len(self.seen_mail) + len(batch)
        deadline = time.monotonic() + timeout_s
        while len(os.listdir(inbox)) < wanted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(os.listdir(inbox))} of {wanted} mails after {timeout_s:.0f} s")
            await asyncio.sleep(0.2)
        return await asyncio.to_thread(read_accepted, inbox, self.seen_mail)

    async def measure(self, label: str, batch: list[Inbound], rate: float | None = None) -> Run:
        before, handled = cpu_seconds(self.cfg.data_dir), await handler_seconds(self.cfg)
        await self.push(batch, rate)
        accepted = await self.settle(batch, timeout_s=max(300.0, len(batch) / 2))
        cpu = {k: v - before.get(k, 0.0) for k, v in cpu_seconds(self.cfg.data_dir).items()}
        after = await handler_seconds(self.cfg)
        handler_ms = {
            k: (total - handled.get(k, (0.0, 0.0))[0]) / (n - handled.get(k, (0.0, 0.0))[1]) * 1000
            for k, (total, n) in after.items()
            if n > handled.get(k, (0.0, 0.0))[1]
        }
        audit = await self.audit_figures(batch, max(accepted.values()))
        traces, created = await self.traces(batch, accepted)
        return Run(label, traces, audit, cpu, handler_ms, created)

    async def traces(self, batch: list[Inbound], accepted: dict[str, float]) -> tuple[list[Trace], list[bytes]]:
        mine = {(b.tenant_id, b.number): b for b in batch}
        async with Tap(self.bus, ["erp.invoices", "invoice.created", "invoice.rendered"]) as tap:
            for topic in ("erp.invoices", "invoice.created", "invoice.rendered"):
                await tap.until(topic, self.published, 60)
            erp = {
                r.key.decode(): r.timestamp / 1000 for r in tap.records[f"{self.cfg.topic_prefix}erp.invoices"] if r.key
            }
            created: dict[tuple[str, str], tuple[float, bytes]] = {}
            for r in tap.records[f"{self.cfg.topic_prefix}invoice.created"]:
                e = parse_event(r.value)
                created.setdefault((e.tenant_id, e.invoice_id or ""), (r.timestamp / 1000, r.value))
            rendered: dict[tuple[str, str], tuple[float, float]] = {}
            for r in tap.records[f"{self.cfg.topic_prefix}invoice.rendered"]:
                e = parse_event(r.value)
                rendered.setdefault((e.tenant_id, e.invoice_id or ""), (e.occurred_at.timestamp(), r.timestamp / 1000))
        traces = [
            Trace(erp[f"{t}/{n}"], created[t, n][0], *rendered[t, n], accepted[b.email]) for (t, n), b in mine.items()
        ]
        return traces, [created[key][1] for key in mine]

    async def audit_figures(self, batch: list[Inbound], last_accepted: float) -> AuditFigures:
        """Wait until audit stored the run's events (every type flowing through, once per invoice)."""
        flow = ("invoice.created", "invoice.rendered", "delivery.succeeded")
        deadline = time.monotonic() + 120
        while True:
            counts = {
                d["_id"]: d["n"]
                async for d in await self.audit.records.aggregate([{"$group": {"_id": "$type", "n": {"$sum": 1}}}])
            }
            if all(counts.get(t, 0) >= self.published for t in flow) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        numbers = {b.number for b in batch}
        fields = {"invoice_id": 1, "occurred_at": 1, "recorded_at": 1, "_id": 0}
        records = [
            r async for r in self.audit.records.find({"kind": "event"}, fields) if r.get("invoice_id") in numbers
        ]
        recorded = [epoch(r["recorded_at"]) for r in records]
        lags = [epoch(r["recorded_at"]) - epoch(r["occurred_at"]) for r in records]
        return AuditFigures(
            tail_s=max(recorded) - last_accepted,
            lag_p50_s=pct(lags, 50),
            lag_p99_s=pct(lags, 99),
            records_per_invoice=len(records) / len(batch),
            per_s=(len(recorded) - 1) / (max(recorded) - min(recorded)),
        )

    async def warm_up(self) -> None:
        """Group joins, pools, connections: a few invoices through before any clock runs."""
        batch = self.invoices(WARMUP)
        await self.push(batch)
        await self.settle(batch, timeout_s=180)

    async def close(self) -> None:
        await self.mongo.close()


def read_accepted(inbox: Path, seen: set[str]) -> dict[str, float]:
    """Recipient → acceptance time of the mails not ``seen`` yet (added to it): the file's mtime, and
    the envelope recipient the capture server writes on the file's second line."""
    accepted: dict[str, float] = {}
    for entry in os.scandir(inbox):
        if entry.name in seen:
            continue
        seen.add(entry.name)
        with open(entry.path, "rb") as f:
            found = re.search(rb"^X-Original-To: ([^\r\n]+)", f.read(2048), re.M)
        assert found is not None, entry.path
        to, at = found.group(1).decode(), entry.stat().st_mtime_ns / 1e9
        accepted[to] = min(at, accepted.get(to, at))
    return accepted


async def handler_seconds(cfg: StackConfig) -> dict[str, tuple[float, float]]:
    """Per service and topic, the consumer loop's ``handler_duration_seconds`` sum and count so far."""
    out: dict[str, tuple[float, float]] = {}
    async with httpx.AsyncClient(timeout=10) as client:
        for name in ("ingest", "renderer", "email-sender", "audit"):
            text = (await client.get(cfg.service_url(name) + "/metrics")).text
            for family in text_string_to_metric_families(text):
                if family.name != "factura_handler_duration_seconds":
                    continue
                for sample in family.samples:
                    key = f"{name} {sample.labels['topic']}"
                    total, count = out.get(key, (0.0, 0.0))
                    if sample.name.endswith("_sum"):
                        out[key] = (total + sample.value, count)
                    elif sample.name.endswith("_count"):
                        out[key] = (total, count + sample.value)
    return out


def cpu_seconds(data_dir: Path) -> dict[str, float]:
    """CPU seconds (user + system) so far, per stack process name (render workers count as renderer)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for m in procs.members(data_dir):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{m.pid}/stat").read_text().rpartition(")")[2].split()
            out[m.name] = out.get(m.name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    times = os.times()
    out["bench (ERP, this process)"] = times.user + times.system
    return out


# -- render only and raw rates --------------------------------------------------------------------


async def render_only(cfg: StackConfig, created: list[bytes]) -> float:
    """The renderer's pool work alone on the same invoices: produce() with each tenant's signing job."""
    with mock.patch.dict(os.environ, service_env("renderer", cfg)):
        settings = RendererSettings()
    signing = SigningJobs(settings.signing, settings.tsa)
    tenants = TenantDirectory(cfg.tenants_dir)
    jobs: list[tuple[InvoiceCreatedV1, TenantConfig]] = []
    for raw in created:
        event = parse_event(raw)
        assert isinstance(event.data, InvoiceCreatedV1)
        jobs.append((event.data, tenants.get(event.tenant_id)))
    limits = RenderLimits()
    pool = RenderPool(WORKERS)
    try:
        await warm(pool, limits, *{t.tenant_id: (i, t) for i, t in jobs}.values())
        started = time.perf_counter()
        await asyncio.gather(*(pool.run(produce, i, t, limits, signing.job(t)) for i, t in jobs))
        return len(jobs) / (time.perf_counter() - started)
    finally:
        pool.close()


@dataclass(frozen=True)
class Raw:
    """Each dependency on its own, as rates of its own unit and in invoices/s."""

    smtp_per_s: float
    produce_per_s: float
    consume_per_s: float
    mongo_per_s: float
    s3_per_s: float

    def invoices_per_s(self, audit_records: float) -> dict[str, float]:
        broker = 1 / (PRODUCED_PER_INVOICE / self.produce_per_s + CONSUMED_PER_INVOICE / self.consume_per_s)
        return {
            "smtp": self.smtp_per_s,
            "broker": broker,
            "mongo": self.mongo_per_s / audit_records,
            "s3": self.s3_per_s / S3_CALLS_PER_INVOICE,
        }


def captured(maildir: Path, count: int) -> list[EmailMessage]:
    """Emails as the sender sent them: the capture server's files less the two envelope lines it added."""
    out = []
    for path in sorted((maildir / "new").iterdir())[:count]:
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert isinstance(message, EmailMessage)
        del message["Return-Path"], message["X-Original-To"]
        out.append(message)
    return out


async def raw_rates(session: Session) -> Raw:
    cfg = session.cfg
    say(f"raw SMTP: {RAW} captured emails again through bare aiosmtplib, 4 loops")
    smtp = await bare_smtp(cfg, captured(cfg.maildir, RAW), concurrency=4)
    await asyncio.to_thread(read_accepted, cfg.maildir / "new", session.seen_mail)  # not the pipeline's mails
    say(f"raw Kafka: {RAW * 10} ERP messages produced, then consumed, on topics nothing else reads")
    prefix = f"{cfg.topic_prefix}raw."
    events = [b.event for b in session.invoices(RAW)] * 10  # a consumer's rate needs more than a few fetches
    produced = await produce_events(cfg.kafka_bootstrap, prefix, events)
    bench_consumer.RECORDS = len(events)  # its raw() counts up to this module setting
    consumed = await bench_consumer.raw(
        KafkaSettings(bootstrap_servers=cfg.kafka_bootstrap), ERP_INVOICES.physical(prefix)
    )
    say(f"raw MongoDB: {RAW} audit records by insert_many into a fresh collection")
    messages = [audit_message(e, i) for i, e in enumerate(consumer_events(RAW, session.run))]
    mongo = await raw_insert(session.mongo[f"{cfg.mongo_database}raw"], messages)
    say(f"raw S3: {RAW // 4} PUTs of 60 KB, 16 at a time")
    async with AsyncExitStack() as stack:
        store = await DocumentStore.connect(s3_settings(cfg), stack)
        started = time.perf_counter()
        await store_documents(store, session.run, RAW // 4)
        s3 = RAW // 4 / (time.perf_counter() - started)
    return Raw(smtp, produced, consumed, mongo, s3)


# -- one engine -----------------------------------------------------------------------------------


@dataclass
class EngineResult:
    engine: str
    runs: list[Run]
    latency: Run
    render_only_per_s: float
    scaling: dict[int, float]
    raw: Raw | None

    @property
    def main(self) -> Run:
        return self.runs[-1]

    @property
    def ratio_vs_render(self) -> float:
        return self.main.per_s / self.render_only_per_s

    def queueing(self) -> dict[str, float]:
        """Per stage, p50 seconds at full load above p50 at 70 %: where the work waits."""
        out = {s: self.main.stage(s, 50) - self.latency.stage(s, 50) for s in STAGES}
        out["audit"] = self.main.audit.lag_p50_s - self.latency.audit.lag_p50_s
        return out

    def limiting(self) -> tuple[str, float]:
        """The stage with the most queueing, and e2e / its raw rate (invoices/s)."""
        stage = max(self.queueing().items(), key=lambda kv: kv[1])[0]
        capacity = self.capacities().get(stage, math.nan)
        return stage, self.main.per_s / capacity

    def capacities(self) -> dict[str, float]:
        raw = self.raw.invoices_per_s(self.main.audit.records_per_invoice) if self.raw else {}
        raw["render"] = self.render_only_per_s
        return {stage: raw.get(source, math.nan) for stage, source in RAW_OF.items()}


async def scaling(session: Session) -> dict[int, float]:
    out = {}
    for workers in SCALING:
        os.environ["FACTURA_RENDERER_WORKERS"] = str(workers)
        await asyncio.to_thread(session.stack.stop_service, "renderer")
        await asyncio.to_thread(session.stack.start_service, "renderer")
        await session.warm_up()
        run = await session.measure(f"{workers} workers", session.invoices(SCALING_INVOICES))
        out[workers] = run.per_s
        say(f"renderer with {workers} worker(s): {run.per_s:.1f} invoices/s")
    os.environ["FACTURA_RENDERER_WORKERS"] = str(WORKERS)
    return out


async def engine_run(engine: str, tmp: Path) -> EngineResult:
    cfg = StackConfig.free_ports(tmp / "stack", topic_prefix=f"e2e{uuid.uuid4().hex[:6]}.", mongo_database="e2e")
    cfg.tenants_dir = engine_tenants(tmp / "tenants", engine)
    os.environ["FACTURA_RENDERER_WORKERS"] = str(WORKERS)
    stack = Stack(cfg)
    try:
        say(f"{engine}: starting the stack; {load()}")
        await asyncio.to_thread(stack.start_infra)
        await asyncio.to_thread(stack.start_services)
        session = Session(cfg, stack)
        try:
            await session.warm_up()
            runs = []
            for size in WP_SIZES if engine == "weasyprint" else SIZES:
                run = await session.measure(f"{size} at once", session.invoices(size))
                runs.append(run)
                say(f"{engine}: {size} invoices, {run.per_s:.1f}/s sustained, wall {run.wall_s:.1f} s; {load()}")
            rate = LOAD * runs[-1].per_s
            count = max(20, round(rate * LATENCY_S))
            say(f"{engine}: latency, {count} invoices paced at {rate:.1f}/s (70 %)")
            latency = await session.measure(f"{LOAD:.0%} load", session.invoices(count), rate)
            created = runs[-1].created[:RENDER_ONLY_MAX]
            say(f"{engine}: render only, {len(created)} of the same invoices, RenderPool({WORKERS}) + produce")
            alone = await render_only(cfg, created)
            raw = await raw_rates(session) if RAW else None
            per_workers = await scaling(session) if SCALING_INVOICES else {}
        finally:
            await session.close()
    finally:
        await asyncio.to_thread(stack.stop)
    return EngineResult(engine, runs, latency, alone, per_workers, raw)


# -- report ---------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(r: EngineResult) -> None:
    print(f"\n=== {r.engine}: every sample tenant on {r.engine}, renderer RenderPool({WORKERS}) ===")
    print(f"  {'run':<16} {'inv/s':>7} {'wall s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'audit tail s':>12}")
    for run in [*r.runs, r.latency]:
        print(
            f"  {run.label:<16} {run.per_s:>7.1f} {run.wall_s:>7.1f} {run.latency_ms(50):>8.0f}"
            f" {run.latency_ms(95):>8.0f} {run.latency_ms(99):>8.0f} {run.audit.tail_s:>12.2f}"
        )
    print("\n  per stage, ms p50 / p95 (time an invoice spends from the previous mark to this one)")
    print(f"  {'stage':<8} " + " ".join(f"{run.label:>22}" for run in [*r.runs, r.latency]) + f" {'done inv/s':>11}")
    rates = r.main.completion_per_s()
    for s in STAGES:
        cells = " ".join(
            f"{run.stage(s, 50) * 1000:>10.0f} / {run.stage(s, 95) * 1000:>9.0f}" for run in [*r.runs, r.latency]
        )
        print(f"  {s:<8} {cells} {rates[s]:>11.1f}")
    cells = " ".join(
        f"{run.audit.lag_p50_s * 1000:>10.0f} / {run.audit.lag_p99_s * 1000:>9.0f}" for run in [*r.runs, r.latency]
    )
    print(f"  {'audit':<8} {cells} {r.main.audit.per_s / r.main.audit.records_per_invoice:>11.1f}  (lag p50 / p99)")
    print(
        "  (ingest: ERP record → invoice.created record; render: → invoice.rendered occurred_at; store: → its"
        " record, S3 PUTs + manifest; send: → Maildir mtime, SMTP 250; audit: recorded_at − occurred_at)"
    )
    cpu = r.main.cpu
    n = len(r.main.traces)
    total = sum(cpu.values())
    print(
        f"\n  CPU during '{r.main.label}' ({n} invoices, {r.main.wall_s:.1f} s wall):"
        f" {total / r.main.wall_s / (os.cpu_count() or 1):.0%} of the cores"
    )
    cores = os.cpu_count() or 1
    print(
        f"    all of it: {total * 1000 / n:.1f} ms/invoice → CPU ceiling"
        f" {cores * n / total:.1f} invoices/s on {cores} cores"
    )
    for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        if seconds > 0.05 * total / 10:
            print(f"    {name:<28} {seconds * 1000 / n:>7.1f} ms/invoice  {seconds / total:>5.0%}")
    print(
        f"\n  mean handler time per message (batch, for batched routes) during '{r.main.label}'"
        f" (each of the {PARTITIONS} partitions: one at a time)"
    )
    for name, ms in sorted(r.main.handler_ms.items()):
        print(
            f"    {name:<44} {ms:>8.1f} ms"
            + (f" → ceiling {PARTITIONS * 1000 / ms:>7.1f}/s" if name.split()[0] in PER_MESSAGE else "")
        )
    print(f"\n  render only (same invoices, RenderPool({WORKERS}) + produce): {r.render_only_per_s:.1f}/s")
    if r.scaling:
        print("  renderer workers → e2e inv/s: " + ", ".join(f"{w}: {v:.1f}" for w, v in r.scaling.items()))
    caps = r.capacities()
    queue = r.queueing()
    print(f"\n  {'stage':<8} {'queueing s':>10} {'raw inv/s':>10} {'e2e/raw':>8}  (raw source)")
    for s in (*STAGES, "audit"):
        print(f"  {s:<8} {queue[s]:>10.2f} {caps[s]:>10.1f} {r.main.per_s / caps[s]:>8.2f}  {RAW_OF[s]}")
    if r.raw:
        raw = r.raw
        print(
            f"  raw: SMTP {raw.smtp_per_s:.0f} mails/s, Kafka produce {raw.produce_per_s:.0f}/s consume"
            f" {raw.consume_per_s:.0f}/s, MongoDB insert {raw.mongo_per_s:.0f} records/s, S3 PUT {raw.s3_per_s:.0f}/s"
        )
    stage, ratio = r.limiting()
    print(f"  limiting stage: {stage} (most queueing); e2e is {ratio:.2f} of its raw rate")
    print(
        f"  targets: e2e / render only ≥ {TARGETS['ratio_vs_render']}: {r.ratio_vs_render:.2f}"
        f" → {verdict(r.ratio_vs_render >= TARGETS['ratio_vs_render'])}; p99 at 70 % ≤ {TARGETS['p99_ms']:.0f} ms:"
        f" {r.latency.latency_ms(99):.0f} → {verdict(r.latency.latency_ms(99) <= TARGETS['p99_ms'])};"
        f" audit tail ≤ {TARGETS['audit_lag_s']:.0f} s: {r.main.audit.tail_s:.2f}"
        f" → {verdict(r.main.audit.tail_s <= TARGETS['audit_lag_s'])}"
    )


async def main() -> None:
    print(f"bench-e2e: {os.cpu_count()} CPUs, {load()}; sizes {SIZES} (WeasyPrint {WP_SIZES}), engines {ENGINES}")
    results: dict[str, EngineResult] = {}
    for engine in ENGINES:
        with tempfile.TemporaryDirectory(prefix=f"bench-e2e-{engine}-") as tmp:
            results[engine] = await engine_run(engine, Path(tmp))
    for result in results.values():
        report(result)
    nan = math.nan
    typst, weasy = results.get("typst"), results.get("weasyprint")
    if typst is not None:
        ok = typst.main.per_s >= TARGETS["typst_e2e_per_s"]
        print(f"\n  Typst e2e ≥ {TARGETS['typst_e2e_per_s']:.0f}/s on 2 cores: {typst.main.per_s:.1f} → {verdict(ok)}")
    print(f"total {time.monotonic() - STARTED:.0f} s; {load()}")
    print(
        f"RESULT e2e_per_s={typst.main.per_s if typst else nan:.1f}"
        f" render_only_per_s={typst.render_only_per_s if typst else nan:.1f}"
        f" ratio_vs_render={typst.ratio_vs_render if typst else nan:.2f}"
        f" p50_ms={typst.latency.latency_ms(50) if typst else nan:.0f}"
        f" p99_ms={typst.latency.latency_ms(99) if typst else nan:.0f}"
        f" audit_lag_s={typst.main.audit.tail_s if typst else nan:.2f}"
        f" wp_e2e_per_s={weasy.main.per_s if weasy else nan:.1f}"
        f" wp_ratio_vs_render={weasy.ratio_vs_render if weasy else nan:.2f}"
        f" limiting_stage_ratio={typst.limiting()[1] if typst else nan:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
