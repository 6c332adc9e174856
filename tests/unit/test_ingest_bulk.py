"""Bulk files at the door: locale-aware parsing, streaming readers, the per-row report, the loader."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from openpyxl import Workbook

from factura.common.kafka.producer import Headers
from factura.ingest.bulk.load import LoadSummary, load
from factura.ingest.bulk.mapping import Mapping, MappingError, load_mapping
from factura.ingest.bulk.parse import CellError, parse_date, parse_decimal, parse_text
from factura.ingest.bulk.read import BulkFileError, detect_encoding, sniff_delimiter
from factura.ingest.bulk.report import ReportRow, ReportWriter, neutralise
from factura.ingest.cli import run
from factura.ingest.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "devstack" / "samples" / "bulk"
HEADER = (
    "invoice_number;issue_date;due_date;customer.id;customer.name;customer.email;"
    "line.description;line.quantity;line.unit_price;line.tax_rate"
)
MAPPING = Mapping(
    columns={name: name for name in HEADER.split(";")},
    defaults={"erp_source": "sap", "seller_name": "Harinas del Sur S.A.", "currency": "EUR", "customer.country": "ES"},
    decimal_mark=",",
    date_order="dd/mm/yyyy",
)


def row(
    number: str, *, name: str = "Panadería Núñez", email: str = "a@b.test", qty: str = "2", price: str = "1.234,50"
) -> str:
    return f"{number};05/01/2026;04/02/2026;C-1;{name};{email};Harina T55;{qty};{price};21"


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, Headers]] = []

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Headers) -> None:
        self.sent.append((topic, value, key, headers))


async def load_rows(
    tmp_path: Path, lines: list[str], *, encoding: str = "utf-8", mapping: Mapping = MAPPING, name: str = "f.csv"
) -> tuple[LoadSummary, list[dict[str, object]], list[ReportRow]]:
    path = tmp_path / name
    path.write_bytes("\r\n".join(lines).encode(encoding))
    sender, problems = FakeSender(), list[ReportRow]()
    summary = await load(
        path, tenant_id="harinas-sur", mapping=mapping, sender=sender, topic="erp.invoices", report=problems.append,
        allow_test_domains=True,
    )  # fmt: skip
    return summary, [json.loads(value) for _, value, _, _ in sender.sent], problems


# --- parse -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mark", "expected"),
    [
        ("1.234,56", ",", "1234.56"),
        ("1 234,56", ",", "1234.56"),
        ("1\u00a0234\u00a0567,5", ",", "1234567.5"),
        ("1\u202f234,5", ",", "1234.5"),
        ("1,234.56", ".", "1234.56"),
        ("-12,5", ",", "-12.5"),
        ("1234,5", ",", "1234.5"),
        ("7", ",", "7"),
    ],
)
def test_decimals_in_the_exporters_locale(text: str, mark: str, expected: str) -> None:
    assert parse_decimal(text, decimal_mark=mark) == Decimal(expected)


@pytest.mark.parametrize(("text", "mark"), [("1,5", "."), ("12.34,5", ","), ("1.2345,6", ","), ("", ","), ("abc", ",")])
def test_numbers_of_the_other_locale_are_refused_not_misread(text: str, mark: str) -> None:
    with pytest.raises(CellError):
        parse_decimal(text, decimal_mark=mark)


def test_typed_cells_and_percent() -> None:
    assert parse_decimal(0.1) == Decimal("0.1")  # not 0.1000000000000000055511151231257827
    assert parse_decimal(3) == Decimal(3)
    assert parse_decimal("21 %", percent=True) == Decimal(21)
    with pytest.raises(CellError):
        parse_decimal(True)
    assert parse_text(600123456.0) == "600123456"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("05/01/2026", date(2026, 1, 5)),
        ("5.1.2026", date(2026, 1, 5)),
        ("2026-01-05", date(2026, 1, 5)),
        ("2026-01-05 00:00:00", date(2026, 1, 5)),
        (datetime(2026, 1, 5, 13, 30), date(2026, 1, 5)),
        (46027, date(2026, 1, 5)),  # an Excel serial
        (46027.5, date(2026, 1, 5)),
    ],
)
def test_dates(value: str | int | float | datetime, expected: date) -> None:
    assert parse_date(value, order="dd/mm/yyyy") == expected


@pytest.mark.parametrize("value", ["31/02/2026", "2026/01/05", "05-01-26", "", 0, 10**9])
def test_bad_dates_are_refused(value: str | int) -> None:
    with pytest.raises(CellError):
        parse_date(value, order="dd/mm/yyyy")


def test_month_first_order() -> None:
    assert parse_date("01/05/2026", order="mm/dd/yyyy") == date(2026, 1, 5)
    with pytest.raises(CellError):
        parse_date("05/01/2026", order="yyyy-mm-dd")


# --- read ------------------------------------------------------------------------------------


def test_encoding_detection(tmp_path: Path) -> None:
    cases = {"bom": "\ufeffNúñez".encode(), "utf8": "Núñez".encode(), "cp1252": "Núñez €".encode("cp1252")}
    cases["latin1"] = b"N\xfa\xf1ez \x81"
    found = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data * 50_000)  # past the first chunk
        found[name] = detect_encoding(tmp_path / name)
    assert found == {"bom": "utf-8-sig", "utf8": "utf-8-sig", "cp1252": "cp1252", "latin1": "latin-1"}


def test_a_late_cp1252_byte_makes_the_whole_file_cp1252(tmp_path: Path) -> None:
    path = tmp_path / "late.csv"
    path.write_bytes(b"a;b\r\n" * 100_000 + "Peñalver".encode("cp1252"))
    assert detect_encoding(path) == "cp1252"


def test_delimiter_sniffing() -> None:
    assert sniff_delimiter("a;b;c,d\n") == ";"
    assert sniff_delimiter("a,b,c\n") == ","
    assert sniff_delimiter("a\tb\n") == "\t"
    assert sniff_delimiter("single\n") == ","


# --- load ------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1252"])
async def test_encodings_keep_accents(tmp_path: Path, encoding: str) -> None:
    summary, sent, problems = await load_rows(
        tmp_path, [HEADER, row("F-1", name="Peñalver Ibáñez €")], encoding=encoding
    )
    assert problems == []
    assert summary.published == 1
    assert sent[0]["customer"] == {"id": "C-1", "name": "Peñalver Ibáñez €", "email": "a@b.test", "country": "ES"}


async def test_comma_delimited_with_decimal_point(tmp_path: Path) -> None:
    mapping = Mapping(columns=MAPPING.columns, defaults=MAPPING.defaults, decimal_mark=".", date_order="yyyy-mm-dd")
    header = HEADER.replace(";", ",")
    line = 'F-1,2026-01-05,2026-02-04,C-1,"Núñez, S.L.",a@b.test,Harina,2,"1,234.50",21'
    _, sent, problems = await load_rows(tmp_path, [header, line], mapping=mapping)
    assert problems == []
    assert sent[0]["customer"]["name"] == "Núñez, S.L."  # type: ignore[index]
    assert sent[0]["lines"] == [{"description": "Harina", "quantity": "2", "unit_price": "1234.50", "tax_rate": "21"}]
    assert sent[0]["issue_date"] == "2026-01-05"


async def test_message_is_the_erp_contract_keyed_by_tenant_and_number(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text("\n".join([HEADER, row("F-7")]), encoding="utf-8")
    sender = FakeSender()
    await load(
        path, tenant_id="harinas-sur", mapping=MAPPING, sender=sender, topic="p.erp.invoices", allow_test_domains=True
    )
    topic, value, key, headers = sender.sent[0]
    assert (topic, key, headers) == (
        "p.erp.invoices",
        b"harinas-sur/F-7",
        [("tenant_id", b"harinas-sur"), ("factura-door", b"bulk")],
    )
    payload = json.loads(value)
    assert payload["tenant_id"] == "harinas-sur"
    assert payload["due_date"] == "2026-02-04"
    assert payload["lines"][0]["unit_price"] == "1234.50"


async def test_total_row_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    lines = [HEADER, row("F-1"), "", ";;;;;;;;;", row("F-2"), "", "Total;;;;;;;;2.469,00;", "", ""]
    summary, sent, problems = await load_rows(tmp_path, lines)
    assert problems == []
    assert [m["invoice_number"] for m in sent] == ["F-1", "F-2"]
    assert (summary.rows, summary.total_row) == (2, 7)


async def test_a_total_label_only_counts_on_the_last_row(tmp_path: Path) -> None:
    summary, sent, _ = await load_rows(tmp_path, [HEADER, row("F-1", name="Total Foods"), row("F-2")])
    assert len(sent) == 2
    assert summary.total_row is None


async def test_one_bad_row_does_not_stop_the_good_ones(tmp_path: Path) -> None:
    lines = [
        HEADER,
        row("F-1"),
        row("F-2", qty="dos"),
        row("F-3", email="no-at-sign"),
        "F-4;05/01/2026;04/02/2026",  # wrong column count
        row("F-5") + ";extra",
        row("F-6"),
        "F-7;31/02/2026;04/02/2026;C-1;N;a@b.test;H;1;1;21",
        row("F-1"),  # already loaded
    ]
    summary, sent, problems = await load_rows(tmp_path, lines)
    assert [m["invoice_number"] for m in sent] == ["F-1", "F-6"]
    got = [(p.row, p.column, p.value) for p in problems]
    assert got == [
        (3, "line.quantity", "dos"),
        (4, "customer.email", "no-at-sign"),
        (5, "", ""),
        (6, "", ""),
        (8, "issue_date", "31/02/2026"),
        (9, "invoice_number", "F-1"),
    ]
    assert "3 cells, the header has 10" in problems[2].reason
    assert "11 cells" in problems[3].reason
    assert "already appeared in row 2" in problems[5].reason
    assert (summary.invoices, summary.published, summary.rejected, summary.rejected_rows) == (8, 2, 6, 6)


async def test_contract_errors_point_at_row_and_mapped_column(tmp_path: Path) -> None:
    mapping = load_mapping(SAMPLES / "harinas-sur.mapping.toml")
    header = "Nº Factura;Fecha;Vencimiento;Cód. Cliente;Cliente;NIF;Email;Teléfono;Concepto;Cantidad;Precio;IVA %"
    lines = [
        header,
        "A-1;05/01/2026;04/02/2026;C-1;N;;a@b.test;;Harina;1;10,00;10",
        "A-1;05/01/2026;04/02/2026;C-1;N;;a@b.test;;Portes;0;5,00;21",  # quantity must be > 0
        "A-2;05/01/2026;01/01/2026;C-2;N;;a@b.test;12;Harina;1;1,00;10",  # due before issue; bad phone
        "A-3;05/01/2026;04/02/2026;C-3;N;;a@b.test;;Harina;1;1,00;10",
        "A-3;06/01/2026;04/02/2026;C-3;N;;a@b.test;;Portes;1;1,00;10",  # differs from the invoice's first row
        "A-4;05/01/2026;04/02/2026;C-4;N;;a@b.test;;Harina;1;1,00;10",
        "A-4;05/01/2026;04/02/2026;C-4;N;;a@b.test;;Portes;2;3,00;21",
    ]
    summary, sent, problems = await load_rows(tmp_path, lines, mapping=mapping, encoding="cp1252")
    assert [(p.row, p.column, p.value) for p in problems] == [
        (3, "Cantidad", "0"),
        (4, "Teléfono", "12"),
        (6, "Fecha", "06/01/2026"),
    ]
    assert summary.rejected == 3  # A-2's due date is reported once its phone is fixed: the contract stops first
    assert [(m["invoice_number"], len(m["lines"])) for m in sent] == [("A-4", 2)]  # type: ignore[arg-type]


async def test_rows_of_one_invoice_must_be_adjacent(tmp_path: Path) -> None:
    mapping = Mapping(
        columns=MAPPING.columns,
        defaults=MAPPING.defaults,
        decimal_mark=",",
        date_order="dd/mm/yyyy",
        group_by_invoice=True,
    )
    _, sent, problems = await load_rows(tmp_path, [HEADER, row("F-1"), row("F-2"), row("F-1")], mapping=mapping)
    assert [m["invoice_number"] for m in sent] == ["F-1", "F-2"]
    assert [(p.row, p.column) for p in problems] == [(4, "invoice_number")]
    assert "must be adjacent" in problems[0].reason


async def test_a_broken_row_refuses_its_whole_invoice(tmp_path: Path) -> None:
    mapping = Mapping(
        columns=MAPPING.columns, defaults=MAPPING.defaults, decimal_mark=",", date_order="dd/mm/yyyy",
        group_by_invoice=True,
    )  # fmt: skip
    lines = [HEADER, row("F-1"), row("F-1") + ";extra", row("F-1"), row("F-2")]
    summary, sent, problems = await load_rows(tmp_path, lines, mapping=mapping)
    assert [m["invoice_number"] for m in sent] == ["F-2"]
    assert [(p.row, p.reason) for p in problems] == [(3, "the row has 11 cells, the header has 10")]
    assert (summary.rejected, summary.rejected_rows) == (1, 3)


async def test_xlsx_with_typed_cells(tmp_path: Path) -> None:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(HEADER.split(";"))
    sheet.append(["X-1", datetime(2026, 1, 5), 46057, "C-1", "Núñez", "a@b.test", "Harina", 2, 1234.5, 21])
    sheet.append([])
    sheet.append(["X-2", "05/01/2026", "04/02/2026", 101, "Ibáñez", "a@b.test", "Portes", "3", "9,99"])  # no tax cell
    sheet.append(["X-3", "05/01/2026", "04/02/2026", 101, "Ibáñez", "a@b.test", "Harina", "tres", 1])
    sheet.append(["TOTAL", None, None, None, None, None, None, None, 1264.47])
    book.save(tmp_path / "f.xlsx")
    path = tmp_path / "f.xlsx"
    sender, problems = FakeSender(), list[ReportRow]()
    summary = await load(
        path, tenant_id="harinas-sur", mapping=MAPPING, sender=sender, topic="t", report=problems.append,
        allow_test_domains=True,
    )  # fmt: skip
    sent = [json.loads(v) for _, v, _, _ in sender.sent]
    assert [m["invoice_number"] for m in sent] == ["X-1", "X-2"]
    assert sent[0]["due_date"] == "2026-02-04"
    assert sent[0]["lines"][0]["unit_price"] == "1234.5"
    assert sent[1]["customer"]["id"] == "101"
    assert sent[1]["lines"][0] == {"description": "Portes", "quantity": "3", "unit_price": "9.99"}
    assert [(p.row, p.column, p.value) for p in problems] == [(5, "line.quantity", "tres")]
    assert summary.total_row == 6


async def test_dry_run_publishes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text("\n".join([HEADER, row("F-1")]), encoding="utf-8")
    summary = await load(
        path, tenant_id="harinas-sur", mapping=MAPPING, sender=None, topic="t", allow_test_domains=True
    )
    assert (summary.dry_run, summary.accepted, summary.published) == (True, 1, 0)


async def test_file_and_mapping_refusals(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text("invoice_number;foo\nF-1;x\n", encoding="utf-8")
    with pytest.raises(BulkFileError, match=r"lacks the mapped column\(s\) issue_date"):
        await load(path, tenant_id="harinas-sur", mapping=MAPPING, sender=None, topic="t")
    with pytest.raises(MappingError, match="not a tenant id"):
        await load(path, tenant_id="Bad Tenant!", mapping=MAPPING, sender=None, topic="t")
    with pytest.raises(MappingError, match="harinas-sur's, not lisboa-tech's"):
        await load(
            path,
            tenant_id="lisboa-tech",
            mapping=load_mapping(SAMPLES / "harinas-sur.mapping.toml"),
            sender=None,
            topic="t",
        )
    (tmp_path / "empty.csv").write_bytes(b"\r\n\r\n")
    with pytest.raises(BulkFileError, match="no header"):
        await load(tmp_path / "empty.csv", tenant_id="harinas-sur", sender=None, topic="t")
    (tmp_path / "bad.xlsx").write_bytes(b"not a zip")
    with pytest.raises(BulkFileError, match="XLSX"):
        await load(tmp_path / "bad.xlsx", tenant_id="harinas-sur", sender=None, topic="t")


async def test_a_file_unreadable_midway_stops_the_load_there(tmp_path: Path) -> None:
    forced = Mapping(columns=MAPPING.columns, defaults=MAPPING.defaults, decimal_mark=",", date_order="dd/mm/yyyy",
                     encoding="utf-8")  # fmt: skip
    with pytest.raises(BulkFileError, match="not utf-8-sig text"):
        await load_rows(tmp_path, [HEADER, row("F-1", name="Peñalver")], encoding="cp1252", mapping=forced)
    with pytest.raises(BulkFileError, match="field larger than field limit"):
        await load_rows(tmp_path, [HEADER, row("F-1", name="x" * 200_000)])


async def test_a_bom_is_not_part_of_the_first_column_when_the_mapping_names_utf8(tmp_path: Path) -> None:
    forced = Mapping(columns=MAPPING.columns, defaults=MAPPING.defaults, decimal_mark=",", date_order="dd/mm/yyyy",
                     encoding="UTF8")  # fmt: skip
    summary, _, _ = await load_rows(tmp_path, [HEADER, row("F-1")], encoding="utf-8-sig", mapping=forced)
    assert summary.published == 1


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[columns]\n"A" = "invoice_number"\n"B" = "customer.shoe_size"\n', "unknown field"),
        ('[columns]\n"A" = "invoice_number"\n"B" = "invoice_number"\n', "more than one column"),
        ('[columns]\n"A" = "issue_date"\n', "no column holds invoice_number"),
        ('decimal_mark = "_"\n[columns]\n"A" = "invoice_number"\n', "decimal_mark"),
        ('date_order = "yy/mm/dd"\n[columns]\n"A" = "invoice_number"\n', "date_order"),
        ('colour = "red"\n[columns]\n"A" = "invoice_number"\n', "unknown setting"),
        ("[columns\n", "Expected"),
        ('encoding = "klingon"\n[columns]\n"A" = "invoice_number"\n', "unknown encoding"),
    ],
)
def test_bad_mappings(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "m.toml").write_text(toml, encoding="utf-8")
    with pytest.raises(MappingError, match=message):
        load_mapping(tmp_path / "m.toml")


# --- report ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", '=HYPERLINK("http://x","y")'])
def test_formula_starts_are_neutralised(cell: str) -> None:
    assert neutralise(cell) == f"'{cell}"
    assert neutralise("Núñez") == "Núñez"


async def test_the_report_neutralises_values_from_the_file(tmp_path: Path) -> None:
    _, _, problems = await load_rows(tmp_path, [HEADER, row("F-1", qty="=2+5"), row("F-2", email="@evil")])
    out = io.StringIO(newline="")
    writer = ReportWriter(out)
    for p in problems:
        writer.write(p)
    written = list(csv.reader(io.StringIO(out.getvalue())))
    assert written[0] == ["row", "column", "value", "reason"]
    assert [r[:3] for r in written[1:]] == [["2", "line.quantity", "'=2+5"], ["3", "customer.email", "'@evil"]]
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for r in written for cell in r)


# --- CLI and the sample ----------------------------------------------------------------------


def test_cli_dry_run_on_the_spanish_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report.csv"
    argv = ["load", str(SAMPLES / "harinas-sur.csv"), "--tenant", "harinas-sur", "--dry-run", "--report", str(report)]
    argv += ["--mapping", str(SAMPLES / "harinas-sur.mapping.toml")]
    assert run(argv, settings=Settings(allow_test_email_domains=True)) == 1
    lines = report.read_text(encoding="utf-8-sig").splitlines()
    assert lines[0] == "row,column,value,reason"
    assert lines[1].startswith("6,Email,correo-sin-arroba.test,")
    assert len(lines) == 2
    err = capsys.readouterr().err
    assert "dry run" in err
    assert "total row skipped" in err


def test_cli_refuses_a_wrong_mapping_with_status_2(tmp_path: Path) -> None:
    argv = ["load", str(SAMPLES / "harinas-sur.csv"), "--tenant", "lisboa-tech", "--dry-run"]
    argv += ["--mapping", str(SAMPLES / "harinas-sur.mapping.toml")]
    assert run(argv, settings=Settings()) == 2


# --- streaming -------------------------------------------------------------------------------


async def test_a_large_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    """The loader's peak grows by less per row than the message it publishes for that row, so it
    keeps no invoice: only the invoice numbers seen (~150 B each) and a validation cache that stops
    growing after ~20 000 distinct values. Measured here: 120-310 B/row; a loader that kept each
    published message would grow ≥ 630 B/row, one keeping the parsed payloads ~2 KB/row. Two sizes
    rather than one large file: tracemalloc slows the run ~6x, and the growth is what proves the bound."""
    small, large = await traced_load(tmp_path, 500), await traced_load(tmp_path, 4_500)
    per_row = (large - small) / 4_000
    assert per_row < 400, f"peak grows {per_row:.0f} B per row ({small / 1e6:.2f} MB → {large / 1e6:.2f} MB)"
    assert large < 4 * 1024 * 1024, f"peak {large / 1e6:.1f} MB"


async def traced_load(tmp_path: Path, rows: int) -> int:
    """Load a file of ``rows`` rows (every 1000th refused) under tracemalloc; its peak in bytes."""
    path = tmp_path / f"big-{rows}.csv"
    with path.open("w", encoding="cp1252", newline="") as f:
        f.write(HEADER + "\r\n")
        for n in range(rows):
            f.write(row(f"B-{n:06d}", name=f"Panadería Núñez {n}", qty="dos" if n % 1000 == 0 else "2") + "\r\n")
    sender = CountingSender()
    tracemalloc.start()
    try:
        summary = await load(
            path, tenant_id="harinas-sur", mapping=MAPPING, sender=sender, topic="t", allow_test_domains=True
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rejected = -(-rows // 1000)
    assert (summary.rows, summary.published, summary.rejected, sender.count) == (
        rows, rows - rejected, rejected, rows - rejected,
    )  # fmt: skip
    return peak


class CountingSender:
    """Keeps no messages, so the measured peak is the loader's own."""

    def __init__(self) -> None:
        self.count = 0

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Headers) -> None:
        self.count += 1
