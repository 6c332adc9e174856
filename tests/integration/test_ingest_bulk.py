"""Bulk files on the real broker: valid rows become ERP messages on erp.invoices, and ingest's own
consumer turns them into invoice.created like any ERP message."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from openpyxl import Workbook

from factura.common.events import parse_event
from factura.devstack.config import StackConfig
from factura.ingest.bulk.load import load
from factura.ingest.bulk.mapping import load_mapping
from factura.ingest.bulk.report import ReportRow
from factura.ingest.cli import run
from factura.ingest.settings import Settings
from tests.integration.test_ingest import ingest_running
from tests.kafka_helpers import isolated, read_topic

pytestmark = pytest.mark.integration
SAMPLES = Path(__file__).resolve().parents[2] / "devstack" / "samples" / "bulk"
SAMPLE_CSV = SAMPLES / "harinas-sur.csv"
MAPPING = load_mapping(SAMPLES / "harinas-sur.mapping.toml")


def spanish_xlsx(path: Path) -> None:
    """The sample's layout as a workbook with typed cells: dates, numbers, an Excel serial, a total row."""
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["Nº Factura", "Fecha", "Vencimiento", "Cód. Cliente", "Cliente", "NIF", "Email", "Teléfono"])
    sheet["I1"], sheet["J1"], sheet["K1"], sheet["L1"] = "Concepto", "Cantidad", "Precio", "IVA %"
    sheet.append(["HAR-X-1", datetime(2026, 3, 2), 46113, "C-1", "Peñalver", None, "a@peñalver.test", 612345678,
                  "Harina T55", 10, 18.5, 10])  # fmt: skip
    sheet.append(["HAR-X-1", datetime(2026, 3, 2), 46113, "C-1", "Peñalver", None, "a@peñalver.test", 612345678,
                  "Portes", 1, 15, 21])  # fmt: skip
    sheet.append(["HAR-X-2", "02/03/2026", "01/04/2026", "C-2", "Ibáñez", None, "b@ibanez.test", None,
                  "Sémola", "uno", 9.9, 10])  # fmt: skip
    sheet.append(["HAR-X-3", "02/03/2026", "01/04/2026", "C-3", "Muñoz", None, "c@munoz.test", None,
                  "Harina integral", 3, "1.180,00", 10])  # fmt: skip
    sheet.append(["TOTAL", None, None, None, None, None, None, None, None, None, 3742.3])
    book.save(path)


async def test_a_mixed_file_publishes_its_valid_invoices_on_erp_invoices(cfg: StackConfig, tmp_path: Path) -> None:
    xlsx = tmp_path / "facturas.xlsx"
    spanish_xlsx(xlsx)
    async with isolated(cfg, client_id="test-bulk") as bus:
        problems: list[ReportRow] = []
        topic = bus.topic("erp.invoices")
        from_csv = await load(
            SAMPLE_CSV, tenant_id="harinas-sur", mapping=MAPPING, sender=bus.publisher, topic=topic,
            report=problems.append, allow_test_domains=True,
        )  # fmt: skip
        from_xlsx = await load(
            xlsx, tenant_id="harinas-sur", mapping=MAPPING, sender=bus.publisher, topic=topic,
            report=problems.append, allow_test_domains=True,
        )  # fmt: skip
        records = await read_topic(cfg.kafka_bootstrap, topic, expect=5)

    assert (from_csv.published, from_csv.rejected, from_csv.total_row) == (3, 1, 8)
    assert (from_xlsx.published, from_xlsx.rejected, from_xlsx.total_row) == (2, 1, 6)
    assert [(p.row, p.column, p.value) for p in problems] == [
        (6, "Email", "correo-sin-arroba.test"),
        (4, "Cantidad", "uno"),
    ]
    messages = {r.key: json.loads(r.value or b"") for r in records}
    assert sorted(messages) == [
        b"harinas-sur/HAR-B-0001",
        b"harinas-sur/HAR-B-0002",
        b"harinas-sur/HAR-B-0003",
        b"harinas-sur/HAR-X-1",
        b"harinas-sur/HAR-X-3",
    ]
    assert all(dict(r.headers)["tenant_id"] == b"harinas-sur" for r in records)
    first = messages[b"harinas-sur/HAR-B-0001"]
    assert first["customer"]["name"] == "Panadería Núñez S.L."  # read as Windows-1252
    assert first["issue_date"] == "2026-01-05"
    assert [line["unit_price"] for line in first["lines"]] == ["18.50", "15.00"]
    assert messages[b"harinas-sur/HAR-B-0003"]["lines"][0]["unit_price"] == "1180.00"
    assert messages[b"harinas-sur/HAR-X-1"]["due_date"] == "2026-04-01"  # from an Excel serial
    assert messages[b"harinas-sur/HAR-X-1"]["customer"]["phone"] == "612345678"  # ingest normalises it


async def test_ingest_turns_loaded_rows_into_invoice_created(cfg: StackConfig) -> None:
    async with ingest_running(cfg, allow_test_email_domains=True) as (settings, publisher):
        summary = await load(
            SAMPLE_CSV, tenant_id="harinas-sur", mapping=MAPPING, sender=publisher,
            topic=f"{settings.topic_prefix}erp.invoices", allow_test_domains=True,
        )  # fmt: skip
        created = await read_topic(cfg.kafka_bootstrap, f"{settings.topic_prefix}invoice.created", expect=3)

    assert summary.published == 3
    events = {e.invoice_id or "": e for e in (parse_event(r.value or b"") for r in created)}
    assert sorted(events) == ["HAR-B-0001", "HAR-B-0002", "HAR-B-0003"]
    first = events["HAR-B-0001"]
    assert first.tenant_id == "harinas-sur"
    assert [line.description for line in first.data.lines] == ["Harina de trigo T55, saco 25 kg", "Portes"]
    assert first.data.total == Decimal("12") * Decimal("18.50") * Decimal("1.10") + Decimal("15.00") * Decimal("1.21")
    assert first.data.customer.phone == "+34612345678"


async def test_the_cli_loads_a_workbook_and_writes_the_report(cfg: StackConfig, tmp_path: Path) -> None:
    xlsx, report = tmp_path / "facturas.xlsx", tmp_path / "report.csv"
    spanish_xlsx(xlsx)
    argv = ["load", str(xlsx), "--tenant", "harinas-sur", "--mapping", str(SAMPLES / "harinas-sur.mapping.toml")]
    async with isolated(cfg, client_id="test-bulk-cli") as bus:
        service = Settings(kafka=bus.settings, allow_test_email_domains=True)
        status = await asyncio.to_thread(run, [*argv, "--report", str(report)], settings=service)
        records = await read_topic(cfg.kafka_bootstrap, bus.topic("erp.invoices"), expect=2)

    assert status == 1  # one row rejected
    assert sorted(r.key or b"" for r in records) == [b"harinas-sur/HAR-X-1", b"harinas-sur/HAR-X-3"]
    assert report.read_text(encoding="utf-8-sig").splitlines()[1].startswith("4,Cantidad,uno,")
