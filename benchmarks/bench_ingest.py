"""Ingest benchmark: a 100 k-row export and API batches into ``invoice.created``, next to raw produce.

Run with ``python -m benchmarks.bench_ingest`` (``make bench-ingest``). On the local broker (Tansu),
MongoDB-wire server (nx-27017) and S3 (moto), started for the run, in one run:

* **the file**: ``--rows`` (100 000) rows in Harinas del Sur's SAP layout
  (``devstack/samples/bulk/harinas-sur.mapping.toml``): Windows-1252, ``;`` between cells, decimal
  comma with thousands dots, ``dd/mm/yyyy``, CRLF and a ``TOTAL`` row at the end; **one row per
  invoice** (a one-line invoice), so 100 000 rows are 100 000 invoices. Every row is valid.
* **raw**: the very messages the loader publishes for that file (the loader run in-process with a
  collecting sender, not timed) produced by a bare ``AIOKafkaProducer`` configured like our
  ``Publisher`` (acks=all, linger 5 ms, gzip, default batch size; same keys and header) to a fresh
  topic, sends pipelined 5 000 at a time: the ceiling for getting these messages onto the broker.
* **csv**: ingest's real wiring (``bootstrap`` with the devstack's settings, its routes in a
  :class:`ConsumerLoop`, real MongoDB) running in this process and already joined to its group;
  then ``python -m factura.ingest load FILE --tenant T --mapping M`` in a subprocess. The rate
  runs from spawning the loader until the last of the file's ``invoice.created`` is acked by the
  broker (end to end: file to canonical events); afterwards ``invoice.created`` is read back and
  must hold one event per invoice. The loader alone (spawn to exit, file to ``erp.invoices``,
  interpreter start included) is printed too. ``ratio_vs_raw`` = csv / raw (target >= 0.5).
  Where an invoice's time goes in ingest: the mean time of one invoice in the intake, and within
  it the two ``InvoiceVersions`` calls (MongoDB) and the ``invoice.created`` send (timed by
  wrapping them for the run), with this process's CPU per invoice. Ingest takes each partition's
  fetched messages as a batch and runs different invoices at once, so the rate x the time per
  invoice is how many invoices are in flight on average; CPU per invoice bounds the rate, and so
  do MongoDB's two writes per invoice (their mean time shows how long they queue).
* **peak RSS**: the loader subprocess's own peak (``VmHWM``, sampled until it exits; see
  :func:`_loader` for why not ``ru_maxrss``), target <= 200 MB, in MiB; beside it the same CLI on
  a one-row file: what the interpreter and imports take before any data.
* **api**: the ingest service as users run it (``python -m factura.ingest`` under the devstack,
  uvicorn on TCP), an API key of role ``ingest`` made for the run, and httpx posting
  ``--api-invoices`` (20 000) of the same messages as ``POST /v1/invoices`` batches of 1 000,
  ``--api-concurrency`` (1) requests at a time, until every item is ``accepted``: invoices/s.

On this 2-core machine the run takes several minutes, most of it the csv phase (ingest's CPU per
invoice bounds it).
``--profile FILE`` cProfiles ingest's consumer during the csv phase (in this process; slows it) and
prints the top functions. Develop with a small ``--rows`` (e.g. 5000). The last line is
``RESULT csv_per_s=... api_per_s=... raw_produce_per_s=... ratio_vs_raw=... peak_mb=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
from aiokafka import AIOKafkaProducer

from benchmarks.bench_audit import row
from benchmarks.bench_consumer import Clock
from factura.common.apikeys import COLLECTION, ApiKeyStore, Role
from factura.common.kafka.admin import ensure_topics
from factura.common.kafka.consumer import ConsumerLoop
from factura.common.kafka.producer import Headers, Publisher
from factura.common.mongo import create_client, database
from factura.common.settings import KafkaSettings, MongoSettings
from factura.common.topics import ERP_INVOICES, INVOICE_CREATED
from factura.devstack.config import StackConfig, service_env
from factura.devstack.stack import Stack
from factura.ingest.bootstrap import bootstrap
from factura.ingest.bulk.load import load
from factura.ingest.bulk.mapping import load_mapping
from factura.ingest.handlers import IngestHandlers
from factura.ingest.settings import Settings
from factura.ingest.versions import InvoiceVersions
from tests.kafka_helpers import read_all

TENANT = "harinas-sur"
MAPPING_FILE = Path(__file__).resolve().parents[1] / "devstack" / "samples" / "bulk" / "harinas-sur.mapping.toml"
HEADER = "Nº Factura;Fecha;Vencimiento;Cód. Cliente;Cliente;NIF;Email;Teléfono;Concepto;Cantidad;Precio;IVA %"
CUSTOMERS = 5000
NAMES = ("Panadería Núñez S.L.", "Confitería Peñalver", "Obrador Ibáñez", "Pastelería Muñoz", "Hornos Agüero")
GOODS = (
    ("Harina de trigo T55, saco 25 kg", "18,50", "10"),
    ("Harina de fuerza W300, saco 25 kg", "21,75", "10"),
    ("Sémola de trigo duro, palé", "1.180,00", "10"),
    ("Levadura fresca, caja 12 × 500 g", "14,20", "10"),
    ("Portes", "15,00", "21"),
)
API_BATCH = 1000
TARGETS = {"ratio_vs_raw": 0.5, "peak_mb": 200.0}


# --- the file and its messages --------------------------------------------------------------------


def write_export(path: Path, rows: int, run: str) -> None:
    """``rows`` one-line invoices as Harinas del Sur's SAP export writes them, then its TOTAL row."""
    today = date.today()
    total = 0.0
    with path.open("w", encoding="cp1252", newline="") as f:
        f.write(HEADER + "\r\n")
        for n in range(rows):
            customer = n % CUSTOMERS
            issued = today - timedelta(days=n % 60)
            description, price, vat = GOODS[n % len(GOODS)]
            quantity = n % 40 + 1
            total += quantity * float(price.replace(".", "").replace(",", "."))
            phone = f"6{n % 100:02d} {customer % 1000:03d} {n % 1000:03d}" if n % 3 else ""
            cells = (
                f"HAR-{run}-{n:06d}",
                issued.strftime("%d/%m/%Y"),
                (issued + timedelta(days=30)).strftime("%d/%m/%Y"),
                f"C-{customer:04d}",
                f"{NAMES[customer % len(NAMES)]} {customer}",
                f"B4{customer:07d}",
                f"compras{customer}@cliente-{customer % 50}.test",
                phone,
                description,
                str(quantity),
                price,
                vat,
            )
            f.write(";".join(cells) + "\r\n")
        f.write(f"TOTAL;;;;;;;;;;{total:.2f}".replace(".", ",") + ";\r\n")


class Collector:
    """A loader sender that keeps what it is given: the raw phase's messages."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Headers) -> None:
        self.sent.append((key or b"", value))


async def loader_messages(path: Path) -> tuple[list[tuple[bytes, bytes]], float]:
    """The (key, value) pairs the loader publishes for ``path``, and its in-process rate without a broker."""
    collector = Collector()
    started = time.perf_counter()
    summary = await load(
        path, tenant_id=TENANT, mapping=load_mapping(MAPPING_FILE), sender=collector, topic="t", allow_test_domains=True
    )
    elapsed = time.perf_counter() - started
    if summary.rejected or summary.total_row is None:
        raise RuntimeError(f"the generated file did not load cleanly: {summary}")
    return collector.sent, len(collector.sent) / elapsed


# --- raw ----------------------------------------------------------------------------------------


async def raw_produce(bootstrap_servers: str, topic: str, messages: Sequence[tuple[bytes, bytes]]) -> float:
    """Bare aiokafka, configured like :class:`Publisher`, sends pipelined 5 000 at a time."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5, compression_type="gzip", client_id="raw"
    )
    headers = [("tenant_id", TENANT.encode())]
    await producer.start()
    try:
        started = time.perf_counter()
        pending = []
        for key, value in messages:
            pending.append(await producer.send(topic, value, key=key, headers=headers))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return len(messages) / (time.perf_counter() - started)
    finally:
        await producer.stop()


# --- the loader CLI -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoaderRun:
    started: float
    ended: float
    peak_mib: float


async def run_loader(path: Path, env: dict[str, str], log: Path) -> LoaderRun:
    """``python -m factura.ingest load`` as a user runs it, watched from a thread so ingest keeps consuming."""
    argv = [
        sys.executable,
        "-m",
        "factura.ingest",
        "load",
        str(path),
        "--tenant",
        TENANT,
        "--mapping",
        str(MAPPING_FILE),
    ]
    return await asyncio.to_thread(_loader, argv, os.environ | env, log)


def _loader(argv: list[str], env: dict[str, str], log: Path) -> LoaderRun:
    """Spawn the loader and sample its ``VmHWM`` (the kernel's peak RSS of its memory) until it exits.

    Not ``ru_maxrss`` from ``wait4``: Linux carries the parent's RSS at fork into the child's, so
    that figure is this harness's whenever the harness is the larger (measured: 313 MB reported
    for a ``python -c pass`` child of a 300 MB parent). A sample every 20 ms misses only growth in
    the loader's last 20 ms.
    """
    peak_kib = 0
    with log.open("ab") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)  # returns once it has exec'd
        while not (reaped := os.waitpid(proc.pid, os.WNOHANG))[0]:
            peak_kib = max(peak_kib, _hwm_kib(proc.pid))
            time.sleep(0.02)
        ended = time.perf_counter()
    proc.returncode = os.waitstatus_to_exitcode(reaped[1])  # reaped here, not by Popen
    if proc.returncode != 0:
        raise RuntimeError(f"the loader exited with {proc.returncode}; see {log}:\n{log.read_text()[-2000:]}")
    return LoaderRun(started, ended, peak_kib / 1024)


def _hwm_kib(pid: int) -> int:
    """``VmHWM`` of a running process in KiB; 0 once it is gone (a zombie has no memory to report)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)


# --- csv: file to invoice.created ---------------------------------------------------------------


@dataclass
class Timer:
    """How long the calls of one kind took, in all (they overlap across partitions)."""

    total_s: float = 0.0
    calls: int = 0

    def add(self, started: float) -> None:
        self.total_s += time.perf_counter() - started
        self.calls += 1

    @property
    def mean_ms(self) -> float:
        return self.total_s / max(self.calls, 1) * 1000

    def method(self, cls: type, name: str) -> Any:
        """A patch timing ``cls.name`` (an async method) for as long as it is active."""
        original = getattr(cls, name)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self.add(started)

        return mock.patch.object(cls, name, timed)


@dataclass
class Timers:
    """Where one invoice's time goes in ingest's handler."""

    handler: Timer = dataclasses.field(default_factory=Timer)
    claim: Timer = dataclasses.field(default_factory=Timer)
    record: Timer = dataclasses.field(default_factory=Timer)
    publish: Timer = dataclasses.field(default_factory=Timer)

    def reset(self) -> None:
        for timer in (self.handler, self.claim, self.record, self.publish):
            timer.total_s, timer.calls = 0.0, 0


class CountingPublisher(Publisher):
    """Ingest's publisher, ticking ``clock`` (and timing the send) each time an ``invoice.created`` is acked."""

    def __init__(self, settings: KafkaSettings, client_id: str, clock: Clock, timer: Timer) -> None:
        super().__init__(settings, client_id)
        self.clock, self.timer = clock, timer
        self._created = INVOICE_CREATED.physical(settings.topic_prefix)

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Headers) -> None:
        started = time.perf_counter()
        await super().send(topic, value, key=key, headers=headers)
        if topic == self._created:
            self.timer.add(started)
            self.clock.tick(self.clock.count)


@dataclass(frozen=True)
class CsvRun:
    per_s: float
    loader_per_s: float
    loader_s: float
    peak_mib: float
    on_topic: int
    distinct: int
    partitions: int
    cpu_ms: float
    timers: Timers


async def csv_end_to_end(
    cfg: StackConfig, path: Path, messages: Sequence[tuple[bytes, bytes]], timeout_s: float, profile: Path | None
) -> CsvRun:
    """Ingest's wiring consuming while the loader CLI publishes the file; see the module docstring."""
    env = service_env("ingest", cfg)
    with mock.patch.dict(os.environ, env):
        settings = Settings()
    await ensure_topics(settings.kafka)
    rows = len(messages)
    clock = Clock(1)  # the warm-up invoice first; then one tick per invoice of the file
    profiler = cProfile.Profile() if profile else None
    stopping = asyncio.Event()
    timers = Timers()
    async with AsyncExitStack() as stack:
        publisher = CountingPublisher(settings.kafka, "ingest", clock, timers.publish)
        await publisher.start()
        stack.push_async_callback(publisher.stop)
        wiring = await bootstrap(settings, publisher, stack)
        stack.enter_context(timers.claim.method(InvoiceVersions, "claim"))
        stack.enter_context(timers.record.method(InvoiceVersions, "record"))
        stack.enter_context(timers.handler.method(IngestHandlers, "on_erp_invoice"))
        routes = wiring.routes
        loop = ConsumerLoop(
            settings=settings.kafka, group_id="factura-ingest", routes=routes, publisher=publisher, service="ingest"
        )
        running = [asyncio.create_task(loop.run()), *(asyncio.create_task(task(stopping)) for task in wiring.tasks)]
        try:
            # One invoice not in the file, through the loop: the group is joined, MongoDB warm.
            warm = json.loads(messages[0][1]) | {"invoice_number": f"WARM-{uuid.uuid4().hex[:8]}"}
            topic = ERP_INVOICES.physical(settings.kafka.topic_prefix)
            await publisher.send(topic, json.dumps(warm).encode(), key=b"warm", headers=[])
            await _until(clock.done, running, 120, "the warm-up invoice")
            publisher.clock = clock = Clock(rows)
            timers.reset()  # the warm-up's calls are not counted
            cpu = time.process_time()
            if profiler:
                profiler.enable()
            loader = asyncio.create_task(run_loader(path, env, cfg.logs_dir / "loader.log"))
            progress = asyncio.create_task(_report_progress(clock, rows))
            await _until(clock.done, running, timeout_s, f"{rows} invoice.created", may_end=[loader])
            cpu = time.process_time() - cpu
            if profiler:
                profiler.disable()
            progress.cancel()
            run = await loader
        finally:
            loop.stop()
            stopping.set()
            await asyncio.gather(*running)
    if profiler and profile:
        profiler.dump_stats(profile)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    created = await read_all(cfg.kafka_bootstrap, INVOICE_CREATED.physical(settings.kafka.topic_prefix), 120)
    file_keys = {key for key, _ in messages}
    return CsvRun(
        per_s=rows / (clock.last - run.started),
        loader_per_s=rows / (run.ended - run.started),
        loader_s=run.ended - run.started,
        peak_mib=run.peak_mib,
        on_topic=sum(1 for r in created if r.key in file_keys),
        distinct=len({r.key for r in created if r.key in file_keys}),
        partitions=ERP_INVOICES.partitions,
        cpu_ms=cpu / rows * 1000,
        timers=timers,
    )


async def _until(
    done: asyncio.Event,
    running: Sequence[asyncio.Task[object]],
    timeout_s: float,
    what: str,
    may_end: Sequence[asyncio.Task[object]] = (),
) -> None:
    """Wait for ``done``. Raise if it does not come in time, if one of ``running`` ends first, or if
    one of ``may_end`` fails (ending well is what they do)."""
    deadline = time.monotonic() + timeout_s
    waiting = asyncio.create_task(done.wait())
    watched = {waiting, *running, *may_end}
    try:
        while not done.is_set():
            ended, watched = await asyncio.wait(
                watched, timeout=deadline - time.monotonic(), return_when=asyncio.FIRST_COMPLETED
            )
            if not ended:
                raise RuntimeError(f"no {what} within {timeout_s:.0f} s")
            for task in ended - {waiting}:
                task.result()  # raises what ended it
                if task in running:
                    raise RuntimeError(f"{task.get_name()} ended before {what}")
    finally:
        waiting.cancel()


async def _report_progress(clock: Clock, target: int) -> None:
    """A line every 30 s, so a long run shows it is moving."""
    started = time.perf_counter()
    while True:
        await asyncio.sleep(30)
        elapsed = time.perf_counter() - started
        print(f"  csv: {clock.count} of {target} invoice.created after {elapsed:.0f} s", flush=True)


# --- api ----------------------------------------------------------------------------------------


async def api_key(cfg: StackConfig) -> str:
    settings = MongoSettings(url=cfg.mongo_url, database=cfg.mongo_database)
    client = create_client(settings)
    try:
        keys = ApiKeyStore(database(client, settings)[COLLECTION])
        await keys.ensure_indexes()
        plaintext, _ = await keys.create(Role.INGEST, [TENANT], "bench-ingest", created_by="bench")
        return plaintext
    finally:
        await client.close()


async def api_batches(cfg: StackConfig, messages: Sequence[tuple[bytes, bytes]], concurrency: int) -> float:
    """POST the messages as batches of :data:`API_BATCH` to the running ingest service."""
    headers = {"Authorization": f"Bearer {await api_key(cfg)}", "Content-Type": "application/json"}
    bodies = [
        b'{"invoices":[' + b",".join(value for _, value in messages[i : i + API_BATCH]) + b"]}"
        for i in range(0, len(messages), API_BATCH)
    ]
    async with httpx.AsyncClient(base_url=cfg.service_url("ingest"), headers=headers, timeout=300) as client:
        warm = json.loads(messages[0][1]) | {"invoice_number": f"WARM-{uuid.uuid4().hex[:8]}"}
        (await client.post("/v1/invoices", json=warm)).raise_for_status()
        queue = list(reversed(bodies))

        async def worker() -> int:
            accepted = 0
            while queue:
                body = queue.pop()
                response = await client.post("/v1/invoices", content=body)
                response.raise_for_status()
                result = response.json()
                if result["accepted"] != len(result["results"]):
                    raise RuntimeError(f"a batch was not accepted whole: {_summary(result)}")
                accepted += result["accepted"]
            return accepted

        started = time.perf_counter()
        accepted = sum(await asyncio.gather(*(worker() for _ in range(concurrency))))
        elapsed = time.perf_counter() - started
    if accepted != len(messages):
        raise RuntimeError(f"{accepted} of {len(messages)} accepted")
    return accepted / elapsed


def _summary(result: dict[str, object]) -> str:
    return ", ".join(f"{k}={result[k]}" for k in ("accepted", "duplicates", "rejected", "conflicts"))


# --- main ---------------------------------------------------------------------------------------


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows (one-line invoices) in the generated CSV")
    parser.add_argument("--api-invoices", type=int, default=20_000, help="invoices posted to the API")
    parser.add_argument("--api-concurrency", type=int, default=1, help="batch requests in flight at once")
    parser.add_argument("--timeout-s", type=float, default=1200.0, help="give up on the csv phase past this")
    parser.add_argument("--profile", type=Path, help="cProfile ingest's consumer in the csv phase into this file")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    run = uuid.uuid4().hex[:6]
    load_avg = os.getloadavg()[0]
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        base = StackConfig.free_ports(Path(tmp), topic_prefix=f"ingest{run}.", mongo_database=f"ingest{run}")
        with Stack(base) as stack:
            stack.start_services(["kafka", "mongo", "s3"])
            export = Path(tmp) / "facturas.csv"
            write_export(export, args.rows, run)
            size_mb = export.stat().st_size / 1e6
            messages, in_process_per_s = await loader_messages(export)
            mean_b = sum(len(v) for _, v in messages) / len(messages)
            print(f"{args.rows} rows, {size_mb:.1f} MB; {len(messages)} messages of {mean_b:.0f} B", flush=True)

            raw_cfg = dataclasses.replace(base, topic_prefix=f"{base.topic_prefix}raw.")
            await ensure_topics(
                KafkaSettings(bootstrap_servers=base.kafka_bootstrap, topic_prefix=raw_cfg.topic_prefix)
            )
            raw_topic = ERP_INVOICES.physical(raw_cfg.topic_prefix)
            raw_per_s = await raw_produce(base.kafka_bootstrap, raw_topic, messages)
            print(f"raw produce: {raw_per_s:.0f}/s", flush=True)

            tiny = Path(tmp) / "one.csv"
            write_export(tiny, 1, run + "t")
            baseline = await run_loader(tiny, service_env("ingest", raw_cfg), base.logs_dir / "loader-tiny.log")

            csv_cfg = dataclasses.replace(base, topic_prefix=f"{base.topic_prefix}csv.", mongo_database=f"csv{run}")
            csv = await csv_end_to_end(csv_cfg, export, messages, args.timeout_s, args.profile)
            print(f"csv end to end: {csv.per_s:.0f}/s", flush=True)
            if (csv.on_topic, csv.distinct) != (len(messages), len(messages)):
                raise RuntimeError(f"invoice.created holds {csv.on_topic} events for {csv.distinct} of the invoices")

            stack.start_service("ingest")
            api_per_s = await api_batches(base, messages[: args.api_invoices], args.api_concurrency)
            print(f"api: {api_per_s:.0f}/s", flush=True)
    print()
    print(
        f"machine: {os.cpu_count()} cores, load average {load_avg:.1f} before the run; ingest in this process"
        f" (csv) or as a service (api), on nx-27017 and Tansu; run took {time.monotonic() - began:.0f} s"
    )
    report(
        args, raw_per_s=raw_per_s, in_process_per_s=in_process_per_s, baseline=baseline, csv=csv, api_per_s=api_per_s
    )


def report(
    args: argparse.Namespace,
    *,
    raw_per_s: float,
    in_process_per_s: float,
    baseline: LoaderRun,
    csv: CsvRun,
    api_per_s: float,
) -> None:
    ratio = csv.per_s / raw_per_s
    t = csv.timers
    print(f"  {'':<52} {'measured':>10} {'':<5} target")
    row("raw: bare aiokafka produce of the file's messages", raw_per_s, "/s")
    row("csv: file to invoice.created, end to end", csv.per_s, "/s", f">= {TARGETS['ratio_vs_raw']} x raw")
    row("  ratio to raw", ratio, "", f">= {TARGETS['ratio_vs_raw']}", digits=3)
    row(f"  loader CLI alone, file to erp.invoices ({csv.loader_s:.0f} s)", csv.loader_per_s, "/s")
    row("  loader in-process, no broker (parse, validate)", in_process_per_s, "/s")
    row("  loader CLI on a one-row file (start, imports)", baseline.ended - baseline.started, "s")
    row(f"  one invoice in ingest's intake ({csv.partitions} partitions, batched)", t.handler.mean_ms, "ms")
    row("    InvoiceVersions.claim (MongoDB)", t.claim.mean_ms, "ms")
    row("    InvoiceVersions.record (MongoDB)", t.record.mean_ms, "ms")
    row("    publish invoice.created (acks=all, linger 5 ms)", t.publish.mean_ms, "ms")
    row("  ingest process CPU per invoice", csv.cpu_ms, "ms")
    row("  invoices in flight (rate x time per invoice)", csv.per_s * t.handler.mean_ms / 1000, "")
    row("  ceiling: 2 cores / ingest CPU per invoice", 2 / csv.cpu_ms * 1000, "/s")
    row(f"loader peak RSS, {args.rows}-row file", csv.peak_mib, "MiB", f"<= {TARGETS['peak_mb']:.0f}")
    row("  loader peak RSS, one-row file", baseline.peak_mib, "MiB")
    row(f"api: POST /v1/invoices x {API_BATCH}, {args.api_concurrency} in flight", api_per_s, "/s")
    print(
        f"  ({args.rows} one-line invoices, cp1252, ';', decimal comma, dd/mm/yyyy. csv runs from spawning the loader"
        " to the last invoice.created acked; ingest runs each partition's fetched invoices at once (one invoice's"
        " messages in order): the rate is bounded by its CPU per invoice and by how fast MongoDB takes the two"
        " writes of each invoice (claim, record), whose time per call shows their queue."
        " api: the ingest service on TCP, every item"
        " accepted. RSS: the loader process's VmHWM, in MiB.)"
    )
    print(
        f"RESULT csv_per_s={csv.per_s:.0f} api_per_s={api_per_s:.0f} raw_produce_per_s={raw_per_s:.0f}"
        f" ratio_vs_raw={ratio:.3f} peak_mb={csv.peak_mib:.0f}"
    )


if __name__ == "__main__":
    asyncio.run(main(_args()))
