"""``python -m factura.ingest load FILE --tenant T [--mapping M] [--report OUT.csv] [--dry-run]``.

Loads a bulk file (CSV or XLSX) into ``erp.invoices`` with a progress bar, writes the per-row
report, and ends with a summary table. Kafka settings come from the service's environment
(``FACTURA_INGEST_KAFKA__BOOTSTRAP_SERVERS``, ``..._TOPIC_PREFIX``, ``..._IDEMPOTENCE``).

Exit status: 0 every row loaded, 1 some rows rejected (see the report), 2 the file or the
mapping refused as a whole (nothing published).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from factura.common.kafka.producer import Publisher
from factura.common.topics import ERP_INVOICES
from factura.ingest.bulk.load import LoadSummary, load
from factura.ingest.bulk.mapping import DEFAULT_MAPPING, Mapping, MappingError, load_mapping
from factura.ingest.bulk.read import BulkFileError
from factura.ingest.bulk.report import ReportRow, ReportWriter
from factura.ingest.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m factura.ingest")
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("load", help="load a CSV or XLSX file of invoices into erp.invoices")
    cmd.add_argument("file", type=Path)
    cmd.add_argument("--tenant", required=True, help="tenant the invoices belong to")
    cmd.add_argument("--mapping", type=Path, help="column mapping (TOML); default: columns named by the ERP fields")
    cmd.add_argument("--report", type=Path, help="write the per-row report here (CSV)")
    cmd.add_argument("--dry-run", action="store_true", help="check and report every row, publish nothing")
    return parser


def run(argv: Sequence[str] | None = None, *, settings: Settings | None = None, console: Console | None = None) -> int:
    """The CLI's entry point (``argv`` without the program name); returns the exit status."""
    args = _parser().parse_args(argv)
    console = console or Console(stderr=True)
    settings = settings or Settings()
    try:
        mapping = load_mapping(args.mapping) if args.mapping else DEFAULT_MAPPING
        summary = asyncio.run(_load(args, mapping, settings, console))
    except (MappingError, BulkFileError, OSError) as e:
        console.print(f"[red]refused:[/red] {e}")
        return 2
    _print_summary(console, summary, args.report)
    return 1 if summary.rejected else 0


async def _load(args: argparse.Namespace, mapping: Mapping, settings: Settings, console: Console) -> LoadSummary:
    publisher = None if args.dry_run else Publisher(settings.kafka, client_id="ingest-bulk")
    with ExitStack() as stack:
        writer: ReportWriter | None = None
        if args.report:
            writer = ReportWriter(stack.enter_context(args.report.open("w", encoding="utf-8-sig", newline="")))
        progress = stack.enter_context(
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
        )
        task = progress.add_task(args.file.name, total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total or None)

        def report(row: ReportRow) -> None:
            if writer is not None:
                writer.write(row)

        if publisher is not None:
            await publisher.start()
        try:
            summary = await load(
                args.file,
                tenant_id=args.tenant,
                mapping=mapping,
                sender=publisher,
                topic=ERP_INVOICES.physical(settings.kafka.topic_prefix),
                report=report,
                allow_test_domains=settings.allow_test_email_domains,
                progress=advance,
            )
        finally:
            if publisher is not None:
                await publisher.stop()
    return summary


def _print_summary(console: Console, summary: LoadSummary, report: Path | None) -> None:
    table = Table(title="dry run: nothing published" if summary.dry_run else "bulk load")
    table.add_column("")
    table.add_column("count", justify="right")
    rows = [
        ("rows read", summary.rows),
        ("invoices", summary.invoices),
        ("valid", summary.accepted),
        ("published", summary.published),
        ("rejected invoices", summary.rejected),
        ("rejected rows", summary.rejected_rows),
        ("problems reported", summary.problems),
    ]
    for name, count in rows:
        table.add_row(name, str(count))
    if summary.total_row is not None:
        table.add_row("total row skipped", f"row {summary.total_row}")
    console.print(table)
    if summary.problems:
        console.print(f"report: {report}" if report else "[yellow]rerun with --report OUT.csv for the details[/yellow]")
