"""Render benchmark: bare WeasyPrint vs the renderer's full cost per invoice, scaling, memory.

Run with ``python -m benchmarks.bench_render`` (``make bench-render``). In one run it measures:

* the baseline: bare ``weasyprint.HTML(string=html).write_pdf()`` on the HTML the renderer
  produces (``render_html``), with ``url_fetcher=AssetFetcher(tenant.directory)`` so that the
  stylesheet and the logo (``factura-asset:``/``tenant-asset:`` URLs) load exactly as in the
  renderer and both paths draw the same document;
* the renderer's full cost per invoice: ``RenderHandlers.on_invoice_created`` against the real
  local stack (Tansu broker, moto S3) with a real ``DocumentStore``, ``Publisher`` and
  ``RenderPool``; tenant harinas-sur (Factur-X: PDF/A-3b + embedded EN 16931 XML), 1-page and
  3-page invoices, p50/p95 from call to return;
* where that time goes: every step of ``pipeline.produce`` timed in-process, plus the S3 and
  Kafka round trips timed on their own against the same stack;
* throughput of ``RenderPool(1)`` and ``RenderPool(2)`` running ``produce`` concurrently;
* peak RSS (VmHWM) of every render worker process.

The last line is ``RESULT bare_p50_ms=... render_p50_ms=... ratio_vs_bare=... render_p95_ms_3page=...
scaling_2core=... peak_mb=...`` followed by a few more figures.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import pickle
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import weasyprint
from pydantic import SecretStr
from weasyprint.text import ffi

from factura.common.envelope import Envelope, make_event
from factura.common.events import Customer, InvoiceCreatedV1, Line, cents, parse_event
from factura.common.settings import KafkaSettings, S3Settings
from factura.common.tenants import TenantConfig, TenantDirectory
from factura.common.topics import INVOICE_CREATED
from factura.devstack.config import TENANTS_DIR, StackConfig
from factura.renderer.document import layout, render_html
from factura.renderer.einvoice import build_cii_xml, embed_xml
from factura.renderer.fetcher import AssetFetcher
from factura.renderer.limits import check_input, check_pages
from factura.renderer.pipeline import Produced, produce
from factura.renderer.pool import RenderPool
from factura.renderer.settings import RenderLimits

# Only the main process talks to the stack, so aiokafka, aioboto3 (botocore) and the devstack
# launcher are imported inside the functions that use them. The render workers re-import this
# module as ``__mp_main__`` (multiprocessing does that for ``python -m <module>``, but not for the
# service, whose main module is ``factura.renderer.__main__``); importing those at the top would add
# ~30 MB to every worker that the service's workers don't have, and skew the peak-memory figure.
if TYPE_CHECKING:
    from factura.common.kafka.consumer import Message
    from factura.common.kafka.producer import Publisher
    from factura.common.storage import DocumentStore
    from factura.renderer.handlers import RenderHandlers

TENANT_ID = "harinas-sur"
LINES_1PAGE = 10
#: Line counts tried, in order, for the 3-page invoice; the first that lays out to exactly 3 pages wins.
LINES_3PAGE_CANDIDATES = (60, 65, 55, 70, 50, 75, 45, 80)
WARMUP = 3
SAMPLES_1PAGE = 40
SAMPLES_3PAGE = 20
SAMPLES_IO = 20
THROUGHPUT_INVOICES = 20
PDF_A = "pdf/a-3b"
ITEMS = (
    "Harina de trigo T55, saco 25 kg",
    "Harina integral de centeno, saco 10 kg",
    "Sémola de trigo duro, saco 25 kg",
    "Levadura seca de panadería, caja 20 × 500 g",
    "Transporte refrigerado Sevilla → Córdoba",
)

# Targets from the issue.
TARGET_RATIO = 1.3
TARGET_P50_MS = 70.0
TARGET_SCALING = 1.8
TARGET_PEAK_MB = 150.0


# ----------------------------------------------------------------------------- figures


@dataclass
class Samples:
    name: str
    ms: list[float] = field(default_factory=list)

    def pct(self, q: float) -> float:
        """Nearest-rank percentile (q in 0..100)."""
        ordered = sorted(self.ms)
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]

    @property
    def p50(self) -> float:
        return statistics.median(self.ms)

    @property
    def p95(self) -> float:
        return self.pct(95)

    def row(self) -> str:
        return (
            f"  {self.name:<44} {len(self.ms):>3} {self.p50:>9.1f} {self.p95:>9.1f} "
            f"{statistics.fmean(self.ms):>9.1f} {min(self.ms):>9.1f}"
        )


def header(title: str) -> None:
    print(f"\n{title}")
    print(f"  {'':<44} {'n':>3} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9} {'min ms':>9}")


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


async def atimed(fn: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await fn()
    return (time.perf_counter() - start) * 1000


STARTED = time.perf_counter()


def progress(what: str) -> None:
    print(f"  [{time.perf_counter() - STARTED:5.1f} s] {what} ...", flush=True)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


# ----------------------------------------------------------------------------- invoices


def make_invoice(lines: int, number: str) -> InvoiceCreatedV1:
    """A consistent invoice (per-line VAT rounding, as ingest does) with ``lines`` table rows."""
    rows = []
    for i in range(lines):
        quantity = Decimal(i % 7 + 1)
        price = Decimal("18.50") + Decimal(i % 13) * Decimal("1.25")
        rate = Decimal("10") if i % 3 else Decimal("21")
        rows.append(
            Line(
                description=f"{ITEMS[i % len(ITEMS)]} (lote {2026_0000 + i})",
                quantity=quantity,
                unit_price=price,
                tax_rate=rate,
                amount=cents(quantity * price),
            )
        )
    subtotal = sum((r.amount for r in rows), Decimal(0))
    tax = sum((cents(r.amount * r.tax_rate / 100) for r in rows), Decimal(0))
    issued = date(2026, 3, 2)
    return InvoiceCreatedV1(
        invoice_number=number,
        issue_date=issued,
        due_date=issued + timedelta(days=30),
        currency="EUR",
        seller_name="Harinas del Sur S.A.",
        customer=Customer(
            customer_id="C-0042",
            name="Panadería La Espiga S.L.",
            country="ES",
            email="compras@la-espiga.test",
            locale="es",
            tax_id="B41999888",
        ),
        lines=rows,
        subtotal=subtotal,
        tax_total=tax,
        total=subtotal + tax,
        erp_source="sap-s4",
    )


def pages(invoice: InvoiceCreatedV1, tenant: TenantConfig) -> int:
    return len(layout(render_html(invoice, tenant), tenant, pdf_a=True).pages)


def three_page_lines(tenant: TenantConfig) -> int:
    for lines in LINES_3PAGE_CANDIDATES:
        if pages(make_invoice(lines, "PROBE-3"), tenant) == 3:
            return lines
    raise SystemExit(f"no line count in {LINES_3PAGE_CANDIDATES} gives exactly 3 pages; adjust the benchmark")


class Numbers:
    """Distinct invoice numbers, so the handler never finds a previous manifest (no dedup)."""

    def __init__(self) -> None:
        self._run = uuid.uuid4().hex[:6].upper()
        self._n = 0

    def next(self) -> str:
        self._n += 1
        return f"BENCH-{self._run}-{self._n:05d}"


# ----------------------------------------------------------------------------- in-process


def bare(html: str, tenant: TenantConfig) -> bytes:
    pdf: bytes = weasyprint.HTML(string=html, url_fetcher=AssetFetcher(tenant.directory)).write_pdf()
    return pdf


@dataclass
class Steps:
    """``pipeline.produce`` step by step, in this process."""

    template: Samples = field(default_factory=lambda: Samples("template: check_input + render_html"))
    layout: Samples = field(default_factory=lambda: Samples("WeasyPrint layout (HTML.render, PDF/A-3b)"))
    write: Samples = field(default_factory=lambda: Samples("WeasyPrint write_pdf (PDF/A-3b)"))
    xml: Samples = field(default_factory=lambda: Samples("Factur-X XML build (drafthorse + XSD)"))
    embed: Samples = field(default_factory=lambda: Samples("Factur-X embed (factur-x: XSD + pypdf)"))
    sha: Samples = field(default_factory=lambda: Samples("sha256 (PDF + XML)"))
    pickle: Samples = field(default_factory=lambda: Samples("pickle args + result (pool IPC payload)"))
    total: Samples = field(default_factory=lambda: Samples("produce(), in process (sum of the above)"))

    def all(self) -> list[Samples]:
        return [self.template, self.layout, self.write, self.xml, self.embed, self.sha, self.pickle, self.total]


def produce_steps(invoice: InvoiceCreatedV1, tenant: TenantConfig, limits: RenderLimits, steps: Steps | None) -> None:
    """The same calls as :func:`factura.renderer.pipeline.produce`, timed one by one."""
    assert tenant.seller is not None
    marks = [time.perf_counter()]
    check_input(invoice, limits)
    html = render_html(invoice, tenant)
    marks.append(time.perf_counter())
    document = layout(html, tenant, pdf_a=True)
    check_pages(len(document.pages), limits)
    marks.append(time.perf_counter())
    pdf_a3 = document.write_pdf(pdf_variant=PDF_A)
    marks.append(time.perf_counter())
    xml = build_cii_xml(invoice, tenant.seller)
    marks.append(time.perf_counter())
    pdf = embed_xml(pdf_a3, xml)
    marks.append(time.perf_counter())
    hashlib.sha256(pdf).hexdigest()
    hashlib.sha256(xml).hexdigest()
    marks.append(time.perf_counter())
    pickle.dumps((produce, invoice, tenant, limits))
    pickle.dumps(Produced(pdf, xml, len(document.pages)))
    marks.append(time.perf_counter())
    if steps is None:
        return
    parts = [steps.template, steps.layout, steps.write, steps.xml, steps.embed, steps.sha, steps.pickle]
    for samples, start, end in zip(parts, marks[:-1], marks[1:], strict=True):
        samples.ms.append((end - start) * 1000)
    steps.total.ms.append((marks[-2] - marks[0]) * 1000)


# ----------------------------------------------------------------------------- against the stack


def kafka_settings(cfg: StackConfig) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=cfg.kafka_bootstrap, topic_prefix=cfg.topic_prefix, idempotence=False)


def s3_settings(cfg: StackConfig) -> S3Settings:
    return S3Settings(
        endpoint_url=cfg.s3_url,
        bucket=cfg.s3_bucket,
        access_key_id=cfg.s3_access_key_id,
        secret_access_key=SecretStr(cfg.s3_secret_access_key),
    )


def created(invoice: InvoiceCreatedV1, offset: int) -> Message[Envelope[InvoiceCreatedV1]]:
    event = make_event(
        event_id=uuid.uuid4(),
        type="invoice.created",
        schema_version=1,
        data=invoice,
        tenant_id=TENANT_ID,
        invoice_id=invoice.invoice_number,
        correlation_id=f"bench-{invoice.invoice_number}",
        causation_id=None,
        producer="bench",
    )
    raw = event.model_dump_json().encode()
    from factura.common.kafka.consumer import Message  # noqa: PLC0415 - main process only, see the imports

    return Message(INVOICE_CREATED, 0, offset, event.partition_key, {}, raw, event)


@dataclass
class Live:
    bare_1page: Samples
    handler_1page: Samples
    steps: Steps
    bare_3page: Samples
    handler_3page: Samples
    io: list[Samples]
    pdf_bytes: int
    tput: dict[int, float]
    memory: list[Memory]


@dataclass(frozen=True)
class Memory:
    """One render worker: RSS peak after start-up (imports, fonts, a trivial page) and at the end."""

    pool: str
    pid: int
    started_mb: float
    peak_mb: float


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of a live process (Linux ``VmHWM``), in MB (MiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


async def warm(
    pool: RenderPool, invoice: InvoiceCreatedV1, tenant: TenantConfig, limits: RenderLimits
) -> dict[int, float]:
    """Start every worker as the service does, note its RSS, then render real invoices in each."""
    await pool.warm_up()
    started = {pid: vm_hwm_mb(pid) for pid in pool.pids()}
    for _ in range(WARMUP):
        await asyncio.gather(*(pool.run(produce, invoice, tenant, limits) for _ in range(pool.workers)))
    return started


async def throughput(pool: RenderPool, tenant: TenantConfig, limits: RenderLimits, numbers: Numbers) -> float:
    """Invoices per second for ``THROUGHPUT_INVOICES`` 1-page invoices submitted at once."""
    invoices = [make_invoice(LINES_1PAGE, numbers.next()) for _ in range(THROUGHPUT_INVOICES)]
    start = time.perf_counter()
    await asyncio.gather(*(pool.run(produce, invoice, tenant, limits) for invoice in invoices))
    return len(invoices) / (time.perf_counter() - start)


@dataclass(frozen=True)
class Case:
    lines: int
    samples: int
    offset: int
    warmup: int = WARMUP


async def interleaved(
    handlers: RenderHandlers,
    tenant: TenantConfig,
    limits: RenderLimits,
    case: Case,
    numbers: Numbers,
    *,
    steps: Steps | None,
) -> tuple[Samples, Samples]:
    """Bare baseline, (optionally) produce() step by step, and the full handler, in turn per sample.

    Alternating keeps the three exposed to the same machine load, so their ratio holds even when
    something else runs on the machine. The first ``case.warmup`` rounds are discarded.
    """
    pages_name = "1-page" if case.lines == LINES_1PAGE else f"3-page ({case.lines} lines)"
    reference = make_invoice(case.lines, f"BENCH-REF-{case.lines}")
    html = render_html(reference, tenant)
    bares = Samples(f"bare WeasyPrint, {pages_name}")
    full = Samples(f"full cost, {pages_name}")
    for i in range(case.warmup + case.samples):
        keep = i >= case.warmup
        bare_ms = timed(partial(bare, html, tenant))
        if steps is not None:
            produce_steps(reference, tenant, limits, steps if keep else None)
        message = created(make_invoice(case.lines, numbers.next()), case.offset + i)
        full_ms = await atimed(partial(handlers.on_invoice_created, message))
        if keep:
            bares.ms.append(bare_ms)
            full.ms.append(full_ms)
    return bares, full


async def io_samples(
    store: DocumentStore, publisher: Publisher, pdf: bytes, xml: bytes, manifest_key: str
) -> list[Samples]:
    """The handler's S3 and Kafka round trips, each on its own (same sizes, same clients)."""
    manifest = await store.get(manifest_key)
    rendered = parse_event(manifest)
    meta = {"tenant-id": TENANT_ID, "invoice-id": "BENCH", "source-event-id": str(uuid.uuid4())}
    sha = hashlib.sha256(pdf).hexdigest()

    def put(key: str, body: bytes, content_type: str) -> Callable[[], Awaitable[None]]:
        return lambda: store.put(key, body, content_type=content_type, sha256=sha, metadata=meta, retention_days=3650)

    out = {
        "S3 GET miss (idempotency check)": Samples("S3 GET miss (idempotency check)"),
        "S3 PUT pdf": Samples(f"S3 PUT pdf ({len(pdf) / 1024:.0f} KiB)"),
        "S3 PUT xml": Samples(f"S3 PUT xml ({len(xml) / 1024:.0f} KiB)"),
        "S3 PUT manifest": Samples("S3 PUT manifest (rendered.json)"),
        "publish": Samples("Kafka publish invoice.rendered (acks=all)"),
    }
    for i in range(WARMUP + SAMPLES_IO):
        base = f"{TENANT_ID}/bench-io/{uuid.uuid4().hex}"
        timings = {
            "S3 GET miss (idempotency check)": await atimed(partial(store.get_if_exists, base + ".json")),
            "S3 PUT pdf": await atimed(put(base + ".pdf", pdf, "application/pdf")),
            "S3 PUT xml": await atimed(put(base + ".xml", xml, "application/xml")),
            "S3 PUT manifest": await atimed(put(base + ".json", manifest, "application/json")),
            "publish": await atimed(lambda: publisher.publish(rendered)),
        }
        if i >= WARMUP:
            for name, ms in timings.items():
                out[name].ms.append(ms)
    return list(out.values())


async def live(cfg: StackConfig, tenant: TenantConfig, limits: RenderLimits, lines_3page: int) -> Live:
    from factura.common.kafka.producer import Publisher  # noqa: PLC0415 - main process only, see the imports
    from factura.common.storage import DocumentStore, manifest_key  # noqa: PLC0415
    from factura.renderer.handlers import RenderHandlers  # noqa: PLC0415

    numbers = Numbers()
    tenants = TenantDirectory(TENANTS_DIR)
    reference = make_invoice(LINES_1PAGE, numbers.next())
    async with AsyncExitStack() as stack:
        store = await DocumentStore.connect(s3_settings(cfg), stack)
        await store.ensure_bucket()
        publisher = Publisher(kafka_settings(cfg), client_id="bench-renderer")
        await publisher.start()
        stack.push_async_callback(publisher.stop)
        pool2 = RenderPool(2)
        stack.callback(pool2.close)
        started = {"RenderPool(2)": await warm(pool2, reference, tenant, limits)}
        handlers = RenderHandlers(publisher, store, tenants, pool2, limits)

        progress("1-page: bare, produce() step by step, full handler, in turn")
        steps = Steps()
        one = Case(LINES_1PAGE, SAMPLES_1PAGE, 0)
        bare1, full1 = await interleaved(handlers, tenant, limits, one, numbers, steps=steps)
        progress("3-page: bare, full handler, in turn")
        three = Case(lines_3page, SAMPLES_3PAGE, 1000, warmup=1)  # fonts and code are warm by now
        bare3, full3 = await interleaved(handlers, tenant, limits, three, numbers, steps=None)

        progress("S3 and Kafka round trips on their own")
        produced = await pool2.run(produce, reference, tenant, limits)
        assert produced.xml is not None
        last = make_invoice(LINES_1PAGE, numbers.next())
        message = created(last, 9999)
        await handlers.on_invoice_created(message)
        manifest = manifest_key(TENANT_ID, last.issue_date, last.invoice_number, message.value.event_id)
        io = await io_samples(store, publisher, produced.pdf, produced.xml, manifest)

        progress("throughput, RenderPool(2) then RenderPool(1)")
        tput = {2: await throughput(pool2, tenant, limits, numbers)}
        pool1 = RenderPool(1)
        stack.callback(pool1.close)
        started["RenderPool(1)"] = await warm(pool1, reference, tenant, limits)
        tput[1] = await throughput(pool1, tenant, limits, numbers)
        memory = [
            Memory(name, pid, started[name].get(pid, math.nan), vm_hwm_mb(pid))
            for name, pool in (("RenderPool(2)", pool2), ("RenderPool(1)", pool1))
            for pid in pool.pids()
        ]
        return Live(bare1, full1, steps, bare3, full3, io, len(produced.pdf), tput, memory)


def run_live(tenant: TenantConfig, limits: RenderLimits, lines_3page: int) -> Live:
    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
        cfg = StackConfig.free_ports(Path(tmp), topic_prefix=f"bench{uuid.uuid4().hex[:6]}.")
        from factura.devstack.stack import Stack  # noqa: PLC0415 - main process only, see the imports

        infra = Stack(cfg)
        try:
            started = time.perf_counter()
            infra.start_infra()
            print(f"local stack up in {time.perf_counter() - started:.1f} s (Tansu, moto S3, ...); {load()}")
            return asyncio.run(live(cfg, tenant, limits, lines_3page))
        finally:
            infra.stop()


# ----------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    tenant = TenantDirectory(TENANTS_DIR).get(TENANT_ID)
    if tenant.einvoice == "none" or tenant.seller is None:
        raise SystemExit(f"tenant {TENANT_ID} must have Factur-X on for this benchmark")
    limits = RenderLimits()
    print(f"bench-render: WeasyPrint {weasyprint.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"HarfBuzz font subsetting active: {ffi.harfbuzz_subset is not None} (else the ~5x slower fontTools path)")
    print(f"machine: {load()} (other work on the machine skews every figure)")
    reference = make_invoice(LINES_1PAGE, "BENCH-REF-1")
    if pages(reference, tenant) != 1:
        raise SystemExit("the reference invoice is not 1 page")
    lines_3page = three_page_lines(tenant)
    print(
        f"tenant {TENANT_ID} (Factur-X EN16931, PDF/A-3b); 1-page = {LINES_1PAGE} lines, 3-page = {lines_3page} lines"
    )
    print("baseline = weasyprint.HTML(string=render_html(invoice, tenant), url_fetcher=AssetFetcher(tenant dir))")
    print("           .write_pdf(): same HTML; the fetcher only reads invoice.css and logo.svg from disk")

    progress("starting the local stack")
    report(run_live(tenant, limits, lines_3page))


def report(result: Live) -> None:
    bare1, bare3, steps = result.bare_1page, result.bare_3page, result.steps
    header("Bare baseline and full cost (on_invoice_created call → return), in turn; warm-up discarded")
    for samples in (bare1, result.handler_1page, bare3, result.handler_3page):
        print(samples.row())
    header("Breakdown, 1-page: produce() step by step in this process")
    for samples in steps.all():
        print(samples.row())
    header("Breakdown, 1-page: the handler's I/O on its own (same stack, same clients)")
    for samples in result.io:
        print(samples.row())
    io_p50 = sum(s.p50 for s in result.io)
    rest = result.handler_1page.p50 - steps.total.p50 - io_p50
    print(f"  full cost p50 {result.handler_1page.p50:.1f} ms = produce {steps.total.p50:.1f} + I/O {io_p50:.1f}")
    print(f"  + rest {rest:.1f} (pool hand-off, pickling, event building; run-to-run noise)")
    weasy = steps.layout.p50 + steps.write.p50
    share = weasy / result.handler_1page.p50
    print(f"  dominant: WeasyPrint layout + write = {weasy:.1f} ms = {share:.0%} of the full cost")
    print(f"  (layout alone {steps.layout.p50 / result.handler_1page.p50:.0%}); PDF {result.pdf_bytes / 1024:.0f} KiB")

    scaling = result.tput[2] / result.tput[1]
    peak = max(m.peak_mb for m in result.memory)
    print(f"\nThroughput, produce() for {THROUGHPUT_INVOICES} 1-page invoices at once")
    print(f"  RenderPool(1): {result.tput[1]:.2f} invoices/s   RenderPool(2): {result.tput[2]:.2f} invoices/s")
    print(f"  scaling 2 cores / 1 core: {scaling:.2f}")
    print("Peak RSS (VmHWM) per render worker, MB (after start-up and warm-up page → end of run)")
    for m in result.memory:
        print(f"  {m.pool} pid {m.pid}: {m.started_mb:.1f} → {m.peak_mb:.1f}")

    ratio = result.handler_1page.p50 / bare1.p50
    print("\nTargets")
    print(f"  full cost / bare (1-page p50) ≤ {TARGET_RATIO}: {ratio:.2f} → {verdict(ratio <= TARGET_RATIO)}")
    p50_ok = result.handler_1page.p50 <= TARGET_P50_MS
    print(
        f"  1-page full cost p50 ≤ {TARGET_P50_MS:.0f} ms (guide): {result.handler_1page.p50:.1f} → {verdict(p50_ok)}"
    )
    print(f"  scaling on 2 cores ≥ {TARGET_SCALING}: {scaling:.2f} → {verdict(scaling >= TARGET_SCALING)}")
    print(f"  peak RSS per worker ≤ {TARGET_PEAK_MB:.0f} MB: {peak:.1f} → {verdict(peak <= TARGET_PEAK_MB)}")
    print(f"total {time.perf_counter() - STARTED:.0f} s; {load()}")
    print(
        f"RESULT bare_p50_ms={bare1.p50:.2f} render_p50_ms={result.handler_1page.p50:.2f} ratio_vs_bare={ratio:.2f}"
        f" render_p95_ms_3page={result.handler_3page.p95:.2f} scaling_2core={scaling:.2f} peak_mb={peak:.2f}"
        f" render_p95_ms_1page={result.handler_1page.p95:.2f} bare_p50_ms_3page={bare3.p50:.2f}"
        f" render_p50_ms_3page={result.handler_3page.p50:.2f} tput_1core_per_s={result.tput[1]:.2f}"
        f" tput_2core_per_s={result.tput[2]:.2f} weasyprint_layout_p50_ms={steps.layout.p50:.2f}"
        f" weasyprint_write_p50_ms={steps.write.p50:.2f}"
    )


if __name__ == "__main__":
    main()
