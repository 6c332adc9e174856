"""Bulk files full of malformed rows: each bad row reported (row, column, value, reason), the valid rows published.

Generated CSV exports in two locales and three encodings mix valid rows with bad ones: cells too
few or too many, decimals and dates the locale cannot read, negative and huge amounts, invisible
and control characters, bytes no encoding holds, formula-looking text, blank and missing cells,
repeated invoice numbers, total rows in the middle, blank lines and a total row at the end. The
loader must not raise (a file-level ``BulkFileError``/``MappingError`` only where documented), must
report every bad row where the uploader looks, must publish every valid row and nothing else, and
the report it writes must be inert in a spreadsheet. Bad rows count toward issue 10's 10 000
malformed records (``QUOTAS["bulk"]``).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import time
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factura.common.envelope import utcnow
from factura.ingest.bulk.load import LoadSummary, load
from factura.ingest.bulk.mapping import Mapping
from factura.ingest.bulk.read import BulkFileError
from factura.ingest.bulk.report import ReportRow, ReportWriter
from factura.ingest.normalise import add_years
from tests.unit.test_ingest_bulk import FakeSender
from tests.unit.test_ingest_properties import BAD_INPUT, QUOTAS, STALL_S, Tally

COLUMNS: Final = (
    "invoice_number",
    "issue_date",
    "due_date",
    "customer.id",
    "customer.name",
    "customer.email",
    "line.description",
    "line.quantity",
    "line.unit_price",
    "line.tax_rate",
)
_DEFAULTS: Final = {"erp_source": "sap", "seller_name": "Harinas del Sur", "currency": "EUR", "customer.country": "ES"}
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
BAD_PER_FILE = 100
_TODAY = utcnow().date()


@dataclass(frozen=True)
class Locale:
    """How an export writes numbers and dates, and the mapping that reads it."""

    name: str
    delimiter: str
    mapping: Mapping

    def number(self, text: str) -> str:
        """``1234.50`` as this locale writes it."""
        if self.mapping.decimal_mark == ".":
            return text
        sign, digits = ("-", text[1:]) if text.startswith("-") else ("", text)
        whole, _, fraction = digits.partition(".")
        return sign + f"{int(whole):,}".replace(",", ".") + (f",{fraction}" if fraction else "")

    def day(self, day: date) -> str:
        return day.strftime("%d/%m/%Y") if self.mapping.date_order == "dd/mm/yyyy" else day.isoformat()


SPANISH = Locale(
    "es",
    ";",
    Mapping(
        columns={c: c for c in COLUMNS}, defaults=_DEFAULTS, decimal_mark=",", date_order="dd/mm/yyyy", delimiter=";"
    ),
)
ENGLISH = Locale("en", ",", Mapping(columns={c: c for c in COLUMNS}, defaults=_DEFAULTS))


@dataclass(frozen=True)
class Plan:
    """One row to write: ``changes`` to a valid row's cells (by column), ``width`` cells in all.

    ``expect``: the columns a problem of this row may name (one must); empty for any. Kind
    ``valid`` rows must be published untouched, ``noise`` rows (blank lines) ignored.
    """

    kind: str
    changes: tuple[tuple[str, str], ...] = ()
    expect: frozenset[str] = frozenset()
    width: int = len(COLUMNS)


_AMOUNT_COLUMNS: Final = ("line.quantity", "line.unit_price", "line.tax_rate")
_NOT_NUMBERS: Final = ["abc", "NaN", "Infinity", "1e5", "--1", "=1+2", "@SUM(A1)", "+-1", "1 2 3 4 5", "0x10", "½"]
_NOT_DATES: Final = ["31/02/2026", "0000-00-00", "2026-13-01", "2026-02-30", "99/99/9999", "yesterday", "=TODAY()"]
_NOT_DATES_TOO: Final = ["@NOW()", "05/01/26", "2026/01/05", "-1", "+1"]
#: Characters no name or description may hold, as each encoding can write them.
_INVISIBLE: Final = {
    "utf-8": ["\u202e", "\u2066", "\u200b", "\ufeff", "\u00ad", "\x00", "\x1b", "\x7f", "\x85", "\u2028"],
    "cp1252": ["\x00", "\x01", "\x1b", "\x7f", "\u00ad"],
}
#: Bytes that make a file neither UTF-8 nor Windows-1252: it is read as Latin-1, where they are C1 controls.
_STRAY_BYTES: Final = ("\x81", "\x8d", "\x8f", "\x90", "\x9d")
_STRAY: Final = re.compile(f"([{''.join(_STRAY_BYTES)}])")
_NAMES: Final = ("Panadería Núñez", "Pão & Cia", "=Núñez", "@home", "+34 Bakery", "Smith, Jones; Co", 'The "Best"')
_ASCII_NAMES: Final = ("Panaderia Nunez", "=1+2", "-Bakery", "Smith, Jones; Co")


def _plan(kind: str, column: str, values: st.SearchStrategy[str], *expect: str) -> st.SearchStrategy[Plan]:
    """Rows with ``column`` set to one of ``values``; a problem must name ``expect`` (the column itself by default)."""
    return values.map(lambda v: Plan(kind, ((column, v),), frozenset(expect or {column})))


def _decimals(**bounds: Decimal) -> st.SearchStrategy[Decimal]:
    return st.decimals(**bounds, allow_nan=False, allow_infinity=False, places=2)


def _bad(locale: Locale, encoding: str) -> st.SearchStrategy[Plan]:
    """Every kind of bad row ``locale`` and ``encoding`` can write."""
    # The other locale's decimal mark reads as grouping here, which needs exactly three digits after it.
    other = "." if locale.mapping.decimal_mark == "," else ","
    other_mark = st.tuples(st.integers(0, 10**6), st.integers(0, 99) | st.integers(1_000, 10**6)).map(
        lambda t: f"{t[0]}{other}{t[1]}"
    )
    texts = {"customer.name": 301, "line.description": 1_001, "customer.id": 101}
    return st.one_of(
        st.tuples(st.sampled_from(_AMOUNT_COLUMNS), st.sampled_from(_NOT_NUMBERS) | other_mark).map(
            lambda t: Plan("bad_decimal", (t,), frozenset({t[0]}))
        ),
        _plan("huge_decimal", "line.quantity", st.integers(min_value=10**10).map(str)),
        _plan("huge_decimal", "line.quantity", st.integers(1, 9_999).map(lambda n: locale.number(f"0.{n:04d}7"))),
        _plan("huge_decimal", "line.unit_price", st.integers(min_value=10**14).map(str)),
        _plan("huge_decimal", "line.tax_rate", st.integers(min_value=101).map(str)),
        st.tuples(st.integers(10**9, 10**10 - 1), st.integers(10**13, 10**14 - 1)).map(
            lambda t: Plan(
                "huge_product",
                (("line.quantity", str(t[0])), ("line.unit_price", str(t[1]))),
                frozenset({"", "lines", "line.quantity", "line.unit_price"}),
            )
        ),
        _plan("negative", "line.quantity", _decimals(max_value=Decimal(0)).map(lambda d: locale.number(str(d)))),
        _plan("negative", "line.tax_rate", _decimals(max_value=Decimal("-0.01")).map(lambda d: locale.number(str(d)))),
        # A negative price makes the invoice's total negative: refused on "lines", as a credit note would be.
        _plan(
            "negative", "line.unit_price", st.integers(1235, 10**6).map(lambda n: locale.number(f"-{n}.00")), "lines"
        ),
        st.tuples(st.sampled_from(["issue_date", "due_date"]), st.sampled_from(_NOT_DATES + _NOT_DATES_TOO)).map(
            lambda t: Plan("bad_date", (t,), frozenset({t[0]}))
        ),
        _plan("bad_date", "issue_date", st.dates(max_value=add_years(_TODAY, -11)).map(locale.day)),
        _plan("bad_date", "issue_date", st.dates(min_value=add_years(_TODAY, 2)).map(locale.day)),
        _plan("bad_date", "due_date", st.dates(max_value=_TODAY - timedelta(days=21)).map(locale.day)),
        _plan("bad_date", "due_date", st.dates(min_value=add_years(_TODAY, 6)).map(locale.day)),
        # Inside the text: at either end, a character str.strip() counts as white space (U+2028, U+0085)
        # is trimmed like any surrounding white space, as the contract says, and the row is valid.
        st.tuples(st.sampled_from(sorted(texts)), st.sampled_from(_INVISIBLE[encoding]), st.integers(1, 8)).map(
            lambda t: Plan("invisible", ((t[0], "Panadería"[: t[2]] + t[1] + "Panadería"[t[2] :]),), frozenset({t[0]}))
        ),
        _plan("invisible", "customer.name", st.sampled_from(["Lucía\r\nBcc: x@y.test", "a\tb", "a\nb"])),
        st.sampled_from(sorted(texts)).flatmap(
            lambda c: _plan("huge_text", c, st.integers(texts[c], 100_000).map(lambda n: "x" * n))
        ),
        _plan("bad_email", "customer.email", st.sampled_from(["no-at-sign", "a@b@c.test", "@x.test", "=HYPERLINK(1)"])),
        st.sampled_from(["issue_date", "due_date", "customer.id", "customer.name", *_AMOUNT_COLUMNS[:2]]).map(
            lambda c: Plan("missing", ((c, ""),), frozenset({c}))
        ),
        _plan("missing", "line.description", st.text(" \t", min_size=1, max_size=4)),
        st.integers(1, len(COLUMNS) - 1).map(lambda w: Plan("short", width=w, expect=frozenset({""}))),
        st.integers(len(COLUMNS) + 1, len(COLUMNS) + 3).map(lambda w: Plan("long", width=w, expect=frozenset({""}))),
        st.just(Plan("duplicate", expect=frozenset({"invoice_number"}))),
        _plan("bad_number", "invoice_number", st.sampled_from(["=B-1", "-B-1", "B 1", "B#1", "ñ-1"])),
        _plan("bad_number", "invoice_number", st.integers(101, 500).map(lambda n: "B" * n)),
        st.just(Plan("total_mid_file", (("invoice_number", "Subtotal"), *((c, "") for c in COLUMNS[1:8])))),
    )


#: Every kind of bad row :func:`_bad` and :func:`_stray_bytes` write.
BAD_KINDS: Final = frozenset(
    {"bad_decimal", "huge_decimal", "huge_product", "negative", "bad_date", "invisible", "huge_text", "bad_email"}
    | {"missing", "short", "long", "duplicate", "bad_number", "total_mid_file", "stray_byte"}
)


def _stray_bytes() -> st.SearchStrategy[Plan]:
    return st.sampled_from(_STRAY_BYTES).map(
        lambda b: Plan("stray_byte", (("customer.name", f"Pan{b}aderia"),), frozenset({"customer.name"}))
    )


@dataclass(frozen=True)
class CsvFile:
    """A generated export and what loading it must give."""

    locale: Locale
    encoding: str
    plans: tuple[Plan, ...]
    total_row: bool

    def __repr__(self) -> str:
        kinds = ", ".join(p.kind for p in self.plans)
        return f"CsvFile({self.locale.name}, {self.encoding}, total_row={self.total_row}, rows=[{kinds}])"

    @property
    def latin1(self) -> bool:
        """A stray byte makes the reader take the whole file as Latin-1."""
        return any(p.kind == "stray_byte" for p in self.plans)

    def number(self, i: int) -> str:
        """The invoice number of plan ``i`` (a duplicate repeats the first row's)."""
        plan = self.plans[i]
        return self.number(0) if plan.kind == "duplicate" else f"{'V' if plan.kind == 'valid' else 'B'}-{i}"

    def name(self, i: int) -> str:
        names = _ASCII_NAMES if self.latin1 and self.encoding == "utf-8" else _NAMES
        return names[i % len(names)]

    def cells(self, i: int) -> list[str]:
        plan, loc = self.plans[i], self.locale
        issue, due = loc.day(_TODAY - timedelta(days=20)), loc.day(_TODAY + timedelta(days=10))
        customer = [f"C-{i}", self.name(i), "a@b.test"]
        line = ["Harina T55", "2", loc.number("1234.50"), "21"]
        values = dict(zip(COLUMNS, [self.number(i), issue, due, *customer, *line], strict=True))
        values.update(plan.changes)
        row = [values[c] for c in COLUMNS]
        return row[: plan.width] + [f"extra {n}" for n in range(plan.width - len(row))]

    def row_number(self, i: int) -> int:
        return i + 2  # the header is row 1; every plan is one CSV record

    def write(self, path: Path) -> None:
        out = io.StringIO(newline="")
        writer = csv.writer(out, delimiter=self.locale.delimiter, lineterminator="\r\n")
        writer.writerow(COLUMNS)
        for i, plan in enumerate(self.plans):
            if plan.kind == "noise":
                out.write(self.locale.delimiter * (i % 3) * 3 + "\r\n")
            else:
                writer.writerow(self.cells(i))
        if self.total_row:
            writer.writerow(["Total", *[""] * 7, self.locale.number("2469.00"), ""])
        text = out.getvalue()
        # Stray bytes go in as they are, whatever the rest is encoded in (odd parts: one stray byte each).
        parts = _STRAY.split(text)
        path.write_bytes(b"".join(p.encode("latin-1" if j % 2 else self.encoding) for j, p in enumerate(parts)))


@st.composite
def csv_files(draw: st.DrawFn) -> CsvFile:
    locale = draw(st.sampled_from([SPANISH, ENGLISH]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "cp1252"]))
    bad = _bad(locale, "cp1252" if encoding == "cp1252" else "utf-8")
    if encoding != "utf-8-sig":  # Latin-1 would read a BOM as "ï»¿", part of the first column's name
        bad = bad | _stray_bytes()
    plans = draw(st.lists(bad, min_size=BAD_PER_FILE, max_size=BAD_PER_FILE, unique=True))
    valid_at = draw(st.lists(st.integers(0, len(plans)), min_size=1, max_size=10))
    noise_at = draw(st.lists(st.integers(0, len(plans)), max_size=3))
    for at in sorted(valid_at, reverse=True):
        plans.insert(at, Plan("valid"))
    for at in sorted(noise_at, reverse=True):
        plans.insert(at, Plan("noise"))
    # First, what a duplicate repeats; last, a row that is no total row (a "Subtotal" last would be one).
    plans = [Plan("valid"), *plans, Plan("valid")]
    return CsvFile(locale, encoding, tuple(plans), draw(st.booleans()))


async def _load(path: Path, locale: Locale) -> tuple[LoadSummary, list[dict[str, Any]], list[ReportRow]]:
    sender, problems = FakeSender(), list[ReportRow]()
    started = time.monotonic()
    summary = await asyncio.wait_for(
        load(
            path,
            tenant_id="harinas-sur",
            mapping=locale.mapping,
            sender=sender,
            topic="erp.invoices",
            report=problems.append,
            allow_test_domains=True,
        ),
        STALL_S,
    )
    assert time.monotonic() - started < STALL_S
    return summary, [json.loads(value) for _, value, _, _ in sender.sent], problems


def _check_report(problems: list[ReportRow]) -> None:
    """The CSV report written back: one line per problem, no cell a spreadsheet would run."""
    out = io.StringIO(newline="")
    writer = ReportWriter(out)
    for problem in problems:
        writer.write(problem)
    header, *lines = csv.reader(io.StringIO(out.getvalue(), newline=""))
    assert header == ["row", "column", "value", "reason"] and len(lines) == len(problems)
    for line, problem in zip(lines, problems, strict=True):
        assert line[0] == str(problem.row)
        assert not any(cell.startswith(_FORMULA_START) for cell in line), line
        assert line[2].removeprefix("'").startswith(problem.value[:200]), (line, problem)


def _judge(file: CsvFile, summary: LoadSummary, published: list[dict[str, Any]], problems: list[ReportRow]) -> None:
    rows = {file.row_number(i): i for i in range(len(file.plans))}
    bad = {file.row_number(i) for i, p in enumerate(file.plans) if p.kind not in {"valid", "noise"}}
    valid = {file.number(i): file.name(i) for i, p in enumerate(file.plans) if p.kind == "valid"}
    # Every valid row, once, its text read back as written (whatever the file's encoding turned out to be).
    assert sorted((m["invoice_number"], m["customer"]["name"]) for m in published) == sorted(valid.items()), file
    for problem in problems:
        assert problem.row in bad, f"{file}: a problem on row {problem.row}, which is not a bad row: {problem}"
        assert problem.reason and isinstance(problem.column, str) and isinstance(problem.value, str), problem
    for row in sorted(bad):
        plan = file.plans[rows[row]]
        found = [p for p in problems if p.row == row]
        assert found, f"{file}: row {row} ({plan}) not reported"
        assert not plan.expect or any(p.column in plan.expect for p in found), (plan, found)
    assert (summary.published, summary.rejected, summary.rejected_rows) == (len(valid), len(bad), len(bad))
    assert summary.total_row == (len(file.plans) + 2 if file.total_row else None)
    _check_report(problems)


def test_every_bad_row_is_reported_and_every_valid_row_published() -> None:
    tally = Tally()

    @settings(BAD_INPUT, max_examples=QUOTAS["bulk"] // BAD_PER_FILE)
    @given(file=csv_files())
    def run(file: CsvFile) -> None:
        with TemporaryDirectory() as tmp:
            path = Path(tmp) / "export.csv"
            file.write(path)
            summary, published, problems = asyncio.run(_load(path, file.locale))
        _judge(file, summary, published, problems)
        for i, plan in enumerate(file.plans):
            if plan.kind not in {"valid", "noise"}:
                tally.add(plan.kind, "\x1f".join(file.cells(i)).encode(), rejected=True)

    run()
    tally.check(QUOTAS["bulk"], BAD_KINDS)


# --- what stops a whole file: documented errors, never another exception -----------------------


@settings(BAD_INPUT, max_examples=6)
@given(file=csv_files(), at=st.integers(0, 30), size=st.sampled_from([200_000, 10 * 1024 * 1024]))
def test_a_cell_past_the_csv_field_limit_stops_the_file_with_a_file_error(file: CsvFile, at: int, size: int) -> None:
    """A 10 MB cell cannot be a row's problem (the reader cannot hold it): the file is refused there."""
    at = min(at, len(file.plans) - 1)
    plans = list(file.plans)
    plans[at] = Plan("valid", (("customer.name", "x" * size),))
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "export.csv"
        CsvFile(file.locale, file.encoding, tuple(plans), file.total_row).write(path)
        with pytest.raises(BulkFileError, match="field larger than field limit"):
            asyncio.run(_load(path, file.locale))


@settings(BAD_INPUT, max_examples=15)
@given(file=csv_files(), cut=st.integers(1, 2_000), quote_at=st.integers(0, 2_000))
def test_a_cut_or_unbalanced_file_is_read_as_far_as_it_goes(file: CsvFile, cut: int, quote_at: int) -> None:
    """A truncated export or a stray quote: rows come out reported or published, or a file-level error."""
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "export.csv"
        file.write(path)
        raw = path.read_bytes()
        raw = raw[: len(raw) - cut]
        raw = raw[:quote_at] + b'"' + raw[quote_at:]
        path.write_bytes(raw)
        try:
            _, _, problems = asyncio.run(_load(path, file.locale))
        except BulkFileError:
            return
    assert all(p.row >= 2 and p.reason for p in problems)
    _check_report(problems)


# --- found while writing the properties above -----------------------------------------------------


async def test_a_last_invoice_row_naming_total_foods_is_not_a_total_row(tmp_path: Path) -> None:
    file = CsvFile(SPANISH, "utf-8", (Plan("valid"), Plan("valid", (("customer.name", "Total Foods S.L."),))), False)
    file.write(tmp_path / "export.csv")
    summary, published, problems = await _load(tmp_path / "export.csv", SPANISH)
    assert ([m["invoice_number"] for m in published], problems, summary.total_row) == (["V-0", "V-1"], [], None)


async def test_the_invoices_before_an_unreadable_cell_are_published(tmp_path: Path) -> None:
    plans = (Plan("valid"), Plan("valid"), Plan("valid", (("customer.name", "x" * 200_000),)))
    CsvFile(SPANISH, "utf-8", plans, False).write(tmp_path / "export.csv")
    sender = FakeSender()
    with pytest.raises(BulkFileError):
        await load(tmp_path / "export.csv", tenant_id="harinas-sur", mapping=SPANISH.mapping, sender=sender,
                   topic="erp.invoices", allow_test_domains=True)  # fmt: skip
    assert sorted(json.loads(value)["invoice_number"] for _, value, _, _ in sender.sent) == ["V-0", "V-1"]
