"""The loader: rows → ERP invoice messages → ``erp.invoices``, with a per-row report.

Rows stream through; only the rows of the invoice being assembled are held. Each invoice is
checked with ingest's own :func:`~factura.ingest.normalise.invoice_from_erp`, so what the report
accepts the consumer accepts too, and only valid invoices are published (key
``tenant/invoice_number``, like any ERP producer). The consumer stays the one place that turns
them into events, so reloading a file is idempotent there as for any redelivered message.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from factura.common.envelope import TENANT_PATTERN
from factura.common.erp import MAX_MESSAGE_BYTES
from factura.common.errors import InvalidMessage
from factura.common.kafka.producer import Headers
from factura.ingest.bulk.mapping import DEFAULT_MAPPING, FIELDS, LINE_PREFIX, Kind, Mapping, MappingError
from factura.ingest.bulk.parse import Cell, CellError, is_blank, parse_date, parse_decimal, parse_text
from factura.ingest.bulk.read import BulkFileError, Table, open_table
from factura.ingest.bulk.report import ReportRow
from factura.ingest.handlers import DOOR_HEADER
from factura.ingest.normalise import invoice_from_erp

#: A last row starting with one of these words is the export's total row, not an invoice.
_TOTAL_LABEL = re.compile(r"^(sub)?(total|totales|totais|totaux|totale|suma|sum|gesamt)\b", re.IGNORECASE)
#: Sends awaiting the broker's ack at once: enough to keep the producer's batches full.
IN_FLIGHT = 256
#: The contract's most lines per invoice; a group longer than that is refused without keeping its rows.
_MAX_LINES = 500


class Sender(Protocol):
    """What the loader needs of :class:`~factura.common.kafka.producer.Publisher`."""

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Headers) -> None: ...


@dataclass(frozen=True)
class Accepted:
    invoice_number: str
    rows: list[int]
    message: bytes


@dataclass(frozen=True)
class Rejected:
    rows: list[int]
    problems: list[ReportRow]


@dataclass
class LoadSummary:
    rows: int = 0
    invoices: int = 0
    accepted: int = 0
    published: int = 0
    rejected: int = 0
    rejected_rows: int = 0
    problems: int = 0
    total_row: int | None = None
    dry_run: bool = False


@dataclass
class _Row:
    number: int
    cells: list[Cell]
    values: dict[str, str] = field(default_factory=dict)
    problems: list[ReportRow] = field(default_factory=list)


class _Invoices:
    """Turns a table's rows into :class:`Accepted` or :class:`Rejected` invoices."""

    def __init__(self, table: Table, mapping: Mapping, tenant_id: str, *, allow_test_domains: bool) -> None:
        self.mapping, self.tenant_id, self.allow_test = mapping, tenant_id, allow_test_domains
        self.width = len(table.header)
        self.table = table
        self.total_row: int | None = None
        self.rows = 0
        names = {h.casefold(): i for i, h in reversed(list(enumerate(table.header)))}
        self.index = {
            target: names[column.strip().casefold()]
            for column, target in mapping.columns.items()
            if column.strip().casefold() in names
        }
        missing = [c for c, t in mapping.columns.items() if t not in self.index]
        if missing and not mapping.partial:
            raise BulkFileError(f"the header lacks the mapped column(s) {', '.join(missing)}")
        if "invoice_number" not in self.index:
            raise BulkFileError("no column of the header holds invoice_number")
        self.seen: dict[str, int] = {}

    def __iter__(self) -> Iterator[Accepted | Rejected]:
        group: list[_Row] = []
        try:
            yield from self._groups(group)
        except BulkFileError:
            # The file turned unreadable: a row read before is a whole invoice unless rows are
            # grouped (then more lines of it may lie beyond the failure, so it is not sent).
            if group and not self.mapping.group_by_invoice:
                yield self._invoice(group)
            raise
        if group:
            yield self._invoice(group)

    def _groups(self, group: list[_Row]) -> Iterator[Accepted | Rejected]:
        """Every invoice but the last, whose rows stay in ``group`` (more may belong to it)."""
        for row in self._rows():
            number = row.values.get("invoice_number", "")
            if group and not (
                self.mapping.group_by_invoice and number and number == group[0].values.get("invoice_number")
            ):
                yield self._invoice(group)
                group.clear()
            if number in self.seen and not group:
                row.problems.append(
                    self._problem(
                        row,
                        "invoice_number",
                        f"invoice {number} already appeared in row {self.seen[number]}"
                        + ("; the rows of one invoice must be adjacent" if self.mapping.group_by_invoice else ""),
                    )
                )
            elif number and not group:
                self.seen[number] = row.number
            if len(group) <= _MAX_LINES:
                group.append(row)

    def _rows(self) -> Iterator[_Row]:
        """Parsed rows, the last one held back until it is known not to be a total row (a row read
        before the file turned unreadable is not the last: it is parsed, then the error raised)."""
        pending: tuple[int, list[Cell]] | None = None
        try:
            for number, cells in self.table.rows():
                if pending is not None:
                    yield self._parse(*pending)
                pending = (number, cells)
        except BulkFileError:
            if pending is not None:
                yield self._parse(*pending)
            raise
        if pending is not None:
            if self._is_total(pending[1]):
                self.total_row = pending[0]
            else:
                yield self._parse(*pending)

    def _is_total(self, cells: list[Cell]) -> bool:
        """A total row: some cell says so (``Total``, ``Suma``...) and it names no invoice (a last
        invoice to customer "Total Foods S.L." is an invoice)."""
        at = self.index["invoice_number"]
        number = cells[at] if at < len(cells) else None
        names_invoice = not is_blank(number) and not (isinstance(number, str) and _TOTAL_LABEL.match(number.strip()))
        return not names_invoice and any(isinstance(c, str) and _TOTAL_LABEL.match(c.strip()) for c in cells)

    def _parse(self, number: int, cells: list[Cell]) -> _Row:
        self.rows += 1
        row = _Row(number, cells)
        filled = [i for i, c in enumerate(cells) if not is_blank(c)]
        if len(cells) < self.width or filled[-1] >= self.width:
            count = len(cells) if len(cells) < self.width else filled[-1] + 1
            row.problems.append(ReportRow(number, "", "", f"the row has {count} cells, the header has {self.width}"))
            # Its invoice number still places it in its invoice, so a grouped invoice is refused whole.
            if (i := self.index["invoice_number"]) < len(cells):
                row.values["invoice_number"] = parse_text(cells[i])
            return row
        for target, i in self.index.items():
            if is_blank(cells[i]):
                continue
            try:
                row.values[target] = self._value(target, cells[i])
            except CellError as e:
                row.problems.append(self._problem(row, target, str(e)))
        return row

    def _value(self, target: str, cell: Cell) -> str:
        kind = FIELDS[target]
        if kind is Kind.DATE:
            return parse_date(cell, order=self.mapping.date_order).isoformat()
        if kind in {Kind.DECIMAL, Kind.PERCENT}:
            return str(parse_decimal(cell, decimal_mark=self.mapping.decimal_mark, percent=kind is Kind.PERCENT))
        return parse_text(cell)

    def _problem(self, row: _Row, target: str, reason: str) -> ReportRow:
        i = self.index.get(target)
        value = (
            parse_text(row.cells[i]) if i is not None and i < len(row.cells) else self.mapping.defaults.get(target, "")
        )
        return ReportRow(row.number, self.mapping.column_for(target) or target, value, reason)

    def _invoice(self, group: list[_Row]) -> Accepted | Rejected:
        numbers = [r.number for r in group]
        first = group[0]
        problems = [p for r in group for p in r.problems]
        if len(group) > _MAX_LINES:
            problems.append(ReportRow(first.number, "", "", f"an invoice has at most {_MAX_LINES} lines"))
        for row in group[1:]:
            for target, value in row.values.items():
                if not target.startswith(LINE_PREFIX) and first.values.get(target, value) != value:
                    reason = f"differs from row {first.number} ({first.values[target]}) for the same invoice"
                    problems.append(self._problem(row, target, reason))
        if problems:
            return Rejected(numbers, problems)
        payload = self._payload(group)
        try:
            erp, _ = invoice_from_erp(payload, allow_test_domains=self.allow_test)
        except InvalidMessage as e:
            return Rejected(numbers, [self._located(group, r.field, r.message) for r in e.reasons])
        message = json.dumps(payload, ensure_ascii=False).encode()
        if len(message) > MAX_MESSAGE_BYTES:
            return Rejected(
                numbers, [ReportRow(first.number, "", "", f"the invoice is over {MAX_MESSAGE_BYTES} bytes")]
            )
        return Accepted(erp.invoice_number, numbers, message)

    def _payload(self, group: list[_Row]) -> dict[str, Any]:
        flat = {k: v for k, v in self.mapping.defaults.items() if not k.startswith(LINE_PREFIX)}
        flat |= {k: v for k, v in group[0].values.items() if not k.startswith(LINE_PREFIX)}
        payload: dict[str, Any] = {"tenant_id": self.tenant_id}
        for path, value in flat.items():
            head, _, tail = path.partition(".")
            if tail:
                payload.setdefault(head, {})[tail] = value
            else:
                payload[head] = value
        line_defaults = {
            k.removeprefix(LINE_PREFIX): v for k, v in self.mapping.defaults.items() if k.startswith(LINE_PREFIX)
        }
        payload["lines"] = [
            line_defaults | {k.removeprefix(LINE_PREFIX): v for k, v in r.values.items() if k.startswith(LINE_PREFIX)}
            for r in group
        ]
        return payload

    def _located(self, group: list[_Row], path: str, reason: str) -> ReportRow:
        """A contract error (``lines.2.quantity``, ``customer.email``) at its row and column."""
        parts = path.split(".")
        if parts[0] == "lines" and len(parts) > 1 and parts[1].isdigit() and int(parts[1]) < len(group):
            row, target = group[int(parts[1])], LINE_PREFIX + ".".join(parts[2:])
        else:
            row, target = group[0], path
        if target in FIELDS:
            return self._problem(row, target, reason)
        return ReportRow(row.number, target if target not in {"$", LINE_PREFIX} else "", "", reason)


def check_tenant(tenant_id: str, mapping: Mapping) -> None:
    if not re.fullmatch(TENANT_PATTERN, tenant_id):
        raise MappingError(f"{tenant_id!r} is not a tenant id")
    if mapping.tenant_id is not None and mapping.tenant_id != tenant_id:
        raise MappingError(f"the mapping is tenant {mapping.tenant_id}'s, not {tenant_id}'s")


async def load(
    path: Path,
    *,
    tenant_id: str,
    mapping: Mapping = DEFAULT_MAPPING,
    sender: Sender | None,
    topic: str,
    report: Callable[[ReportRow], None] | None = None,
    allow_test_domains: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> LoadSummary:
    """Load ``path`` for ``tenant_id``: publish each valid invoice to ``topic`` through ``sender``.

    ``sender=None`` is a dry run: every row is checked and reported, nothing is published.
    ``report`` receives each problem as found; ``progress`` gets ``(done, total)`` after each
    invoice. Raises :class:`MappingError` or :class:`BulkFileError` before publishing anything
    when the mapping, the header or the file's format is wrong. A file that turns unreadable
    midway (an encoding forced by the mapping that does not fit, a CSV cell over 128 KiB) stops
    the load there with :class:`BulkFileError`: the invoices before it are published (with
    ``group_by_invoice``, all but the last, whose further lines may lie past the failure), and
    ingest deduplicates them when the corrected file is loaded again. A broker error stops it too.
    """
    check_tenant(tenant_id, mapping)
    summary = LoadSummary(dry_run=sender is None)
    in_flight: set[asyncio.Task[None]] = set()
    # The door header only labels ingest's invoices_received_total{door="bulk"}; it grants nothing.
    headers: Headers = [("tenant_id", tenant_id.encode()), (DOOR_HEADER, b"bulk")]
    try:
        with open_table(path, mapping) as table:
            invoices = _Invoices(table, mapping, tenant_id, allow_test_domains=allow_test_domains)
            for outcome in invoices:
                summary.invoices += 1
                if isinstance(outcome, Rejected):
                    summary.rejected += 1
                    summary.rejected_rows += len(outcome.rows)
                    summary.problems += len(outcome.problems)
                    for problem in outcome.problems:
                        if report is not None:
                            report(problem)
                else:
                    summary.accepted += 1
                    if sender is not None:
                        key = f"{tenant_id}/{outcome.invoice_number}".encode()
                        in_flight.add(
                            asyncio.create_task(sender.send(topic, outcome.message, key=key, headers=headers))
                        )
                        if len(in_flight) >= IN_FLIGHT:
                            summary.published += await _settle(in_flight, asyncio.FIRST_COMPLETED)
                if progress is not None:
                    progress(*table.progress())
            summary.rows, summary.total_row = invoices.rows, invoices.total_row
        summary.published += await _settle(in_flight, asyncio.ALL_COMPLETED)
    except BulkFileError:
        summary.published += await _settle(in_flight, asyncio.ALL_COMPLETED)  # what was read goes out
        raise
    finally:
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
    return summary


async def _settle(in_flight: set[asyncio.Task[None]], when: str) -> int:
    """Wait for sends (the first, or all); re-raise a failed one. Returns how many completed."""
    if not in_flight:
        return 0
    done, _ = await asyncio.wait(in_flight, return_when=when)
    in_flight.difference_update(done)
    # Every failure is retrieved (asyncio would log the others as never seen); the first is raised.
    failures = [e for task in done if (e := task.exception()) is not None]
    if failures:
        raise failures[0]
    return len(done)
