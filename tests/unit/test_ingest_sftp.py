"""The SFTP drop's decisions, without SSH: where each dropped file ends, what is written beside it,
and that an outage leaves the file in the inbox instead of parking it in ``failed/``."""

from __future__ import annotations

import asyncio
import csv
import json
import stat
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import asyncssh
import pytest
from prometheus_client import REGISTRY

from factura.common.errors import DependencyDown
from factura.common.events import FieldError
from factura.common.kafka.producer import Headers
from factura.ingest.documents import UnsupportedDocument
from factura.ingest.sftp.drop import MAX_BUG_ATTEMPTS, BoundedSender, Drop, Outcome
from factura.ingest.sftp.inbox import Inbox
from factura.ingest.sftp.keys import HostKeyMissing, TenantKeys, host_key
from factura.ingest.sftp.layout import Layout, ignored
from factura.ingest.sftp.settings import SftpSettings
from tests.waiting import until

TENANT = "harinas-sur"
HEADER = (
    "invoice_number,issue_date,due_date,currency,seller_name,erp_source,customer.id,customer.name,"
    "customer.country,customer.email,line.description,line.quantity,line.unit_price,line.tax_rate"
)


def invoice_row(number: str, quantity: str = "2") -> str:
    today = date.today()
    return (
        f"{number},{today},{today + timedelta(days=30)},EUR,Harinas del Sur,sap,C-{number},Cliente,ES,"
        f"{number.lower()}@cliente.test,Harina T55,{quantity},10.50,21"
    )


def bulk_file(*rows: str) -> bytes:
    return "\n".join([HEADER, *rows, ""]).encode()


class FakeSender:
    def __init__(self, error: BaseException | None = None) -> None:
        self.sent: list[bytes | None] = []
        self.error = error
        self.hang = False

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Headers) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        self.sent.append(key)


@dataclass(frozen=True)
class Stored:
    s3_key: str
    sha256: str
    size: int
    content_type: str


class FakeDocuments:
    def __init__(self, error: Exception | None = None) -> None:
        self.stored: list[tuple[str, str, bytes]] = []
        self.error = error

    async def __call__(self, tenant_id: str, filename: str, data: bytes) -> Stored:
        if self.error is not None:
            raise self.error
        self.stored.append((tenant_id, filename, data))
        return Stored(f"{tenant_id}/erp/abc/{filename}", "abc", len(data), "application/pdf")


class Setup:
    def __init__(self, tmp_path: Path, *, sender: FakeSender | None = None, documents: FakeDocuments | None = None):
        self.layout = Layout.at(tmp_path / "sftp")
        self.home = self.layout.ensure(TENANT)
        self.sender, self.documents = sender or FakeSender(), documents or FakeDocuments()
        self.drop = Drop(
            self.layout,
            sender=self.sender,
            topic="erp.invoices",
            documents=self.documents,
            max_document_bytes=1024,
            allow_test_domains=True,
        )

    def put(self, name: str, data: bytes) -> Path:
        path = self.home / "inbox" / name
        path.write_bytes(data)
        return path

    async def process(self, path: Path) -> Outcome:
        return await self.drop.process(TENANT, path)

    def listing(self, folder: str) -> list[str]:
        return sorted(p.name for p in (self.home / folder).iterdir())

    def report(self, folder: str, name: str) -> list[list[str]]:
        text = (self.home / folder / f"{name}.report.csv").read_text(encoding="utf-8-sig")
        return list(csv.reader(text.splitlines()))


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


# --- bulk files --------------------------------------------------------------------------------


async def test_a_clean_bulk_file_is_published_and_moved_to_processed_with_its_report(setup: Setup) -> None:
    path = setup.put("facturas.csv", bulk_file(invoice_row("F-1"), invoice_row("F-2")))
    assert await setup.process(path) is Outcome.PROCESSED
    assert setup.sender.sent == [b"harinas-sur/F-1", b"harinas-sur/F-2"]
    assert setup.listing("processed") == ["facturas.csv", "facturas.csv.report.csv"]
    assert setup.report("processed", "facturas.csv") == [["row", "column", "value", "reason"]]
    assert setup.listing("inbox") == [] and setup.listing("failed") == []
    assert list(setup.layout.work.iterdir()) == []


async def test_rejected_rows_send_the_file_to_failed_and_the_good_rows_still_go(setup: Setup) -> None:
    path = setup.put("mixed.csv", bulk_file(invoice_row("F-1"), invoice_row("F-2", quantity="dos"), invoice_row("F-3")))
    assert await setup.process(path) is Outcome.FAILED
    assert setup.sender.sent == [b"harinas-sur/F-1", b"harinas-sur/F-3"]
    assert setup.listing("failed") == ["mixed.csv", "mixed.csv.error.txt", "mixed.csv.report.csv"]
    [_, problem] = setup.report("failed", "mixed.csv")
    assert problem[:3] == ["3", "line.quantity", "dos"] and "not a number" in problem[3]
    error = (setup.home / "failed" / "mixed.csv.error.txt").read_text()
    assert "1 of 3 invoices rejected" in error and "the other 2 were published" in error


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("no-number.csv", b"customer.id,customer.name\nC-1,N\n", "invoice_number"),
        ("empty.csv", b"", "no header"),
        ("broken.xlsx", b"PK\x03\x04 not really a workbook", "not a readable XLSX file"),
        ("notes.txt", b"hello", "files of type .txt are not ingested"),
        ("README", b"hello", "files of type (none) are not ingested"),
    ],
)
async def test_a_file_that_cannot_be_read_goes_to_failed_with_the_reason(
    setup: Setup, name: str, data: bytes, reason: str
) -> None:
    path = setup.put(name, data)
    assert await setup.process(path) is Outcome.FAILED
    assert name in setup.listing("failed")
    assert reason in (setup.home / "failed" / f"{name}.error.txt").read_text()
    assert setup.sender.sent == []


async def test_the_tenants_mapping_file_is_used_and_a_broken_one_is_reported_without_server_paths(
    setup: Setup,
) -> None:
    (setup.home / "mapping.toml").write_text(
        '[columns]\n"Nº" = "invoice_number"\n"Cliente" = "customer.name"\n', encoding="utf-8"
    )
    path = setup.put("a.csv", "Nº,Cliente\nA-1,N\n".encode())
    assert await setup.process(path) is Outcome.FAILED  # the mapping was applied: A-1 lacks the contract's fields
    assert setup.report("failed", "a.csv")[1][0] == "2"

    (setup.home / "mapping.toml").write_text("[columns]\n", encoding="utf-8")
    path = setup.put("b.csv", "Nº,Cliente\nA-1,N\n".encode())
    assert await setup.process(path) is Outcome.FAILED
    error = (setup.home / "failed" / "b.csv.error.txt").read_text()
    assert "mapping.toml is invalid: no column holds invoice_number" in error
    assert str(setup.layout.root) not in error


async def test_a_mappings_dir_serves_tenants_without_a_mapping_in_their_folder(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / f"{TENANT}.toml").write_text('[columns]\n"Nº" = "invoice_number"\n', encoding="utf-8")
    s.drop.mappings_dir = mappings
    path = s.put("a.csv", "Nº,other\nA-1,x\n".encode())
    assert await s.process(path) is Outcome.FAILED
    assert "no column of the header" not in (s.home / "failed" / "a.csv.error.txt").read_text()


# --- outages and bugs --------------------------------------------------------------------------


@pytest.mark.parametrize("error", [DependencyDown("kafka", "down"), ConnectionRefusedError(), TimeoutError()])
async def test_a_broker_outage_leaves_the_file_in_the_inbox(tmp_path: Path, error: BaseException) -> None:
    s = Setup(tmp_path, sender=FakeSender(error))
    path = s.put("facturas.csv", bulk_file(invoice_row("F-1")))
    assert await s.process(path) is Outcome.DEFERRED
    assert s.listing("inbox") == ["facturas.csv"]
    assert s.listing("processed") == [] and s.listing("failed") == []
    assert list(s.layout.work.iterdir()) == []  # the report being written is thrown away

    s.sender.error = None
    assert await s.process(path) is Outcome.PROCESSED  # the next try, with the broker back


async def test_a_hanging_broker_is_given_up_on_and_the_file_waits(tmp_path: Path) -> None:
    sender = FakeSender()
    sender.hang = True
    s = Setup(tmp_path, sender=sender)
    s.drop.sender = BoundedSender(sender, timeout_s=0.05)
    path = s.put("facturas.csv", bulk_file(invoice_row("F-1")))
    assert await s.process(path) is Outcome.DEFERRED
    assert s.listing("inbox") == ["facturas.csv"]


async def test_an_s3_outage_leaves_a_document_in_the_inbox(tmp_path: Path) -> None:
    s = Setup(tmp_path, documents=FakeDocuments(DependencyDown("s3", "put_object: 503")))
    path = s.put("F-1.pdf", b"%PDF-1.7 ...")
    assert await s.process(path) is Outcome.DEFERRED
    assert s.listing("inbox") == ["F-1.pdf"] and s.listing("failed") == []


async def test_a_bug_is_retried_then_the_file_fails_without_internals(tmp_path: Path) -> None:
    s = Setup(tmp_path, documents=FakeDocuments(RuntimeError("secret internals")))
    path = s.put("F-1.pdf", b"%PDF-1.7 ...")
    for _ in range(MAX_BUG_ATTEMPTS - 1):
        assert await s.process(path) is Outcome.DEFERRED
    assert await s.process(path) is Outcome.FAILED
    error = (s.home / "failed" / "F-1.pdf.error.txt").read_text()
    assert "internal error" in error and "secret" not in error


# --- documents ---------------------------------------------------------------------------------


async def test_a_document_is_stored_and_its_reference_written_beside_it(setup: Setup) -> None:
    path = setup.put("F-1.pdf", b"%PDF-1.7 ...")
    assert await setup.process(path) is Outcome.PROCESSED
    assert setup.documents.stored == [(TENANT, "F-1.pdf", b"%PDF-1.7 ...")]
    assert setup.listing("processed") == ["F-1.pdf", "F-1.pdf.ref.json"]
    ref = json.loads((setup.home / "processed" / "F-1.pdf.ref.json").read_text())
    assert ref == {
        "s3_key": "harinas-sur/erp/abc/F-1.pdf",
        "sha256": "abc",
        "size": 12,
        "content_type": "application/pdf",
    }


async def test_a_refused_document_goes_to_failed_with_the_reason(tmp_path: Path) -> None:
    refused = UnsupportedDocument([FieldError(field="file", message="starts with b'hello': expected a PDF")])
    s = Setup(tmp_path, documents=FakeDocuments(refused))
    path = s.put("F-1.pdf", b"hello")
    assert await s.process(path) is Outcome.FAILED
    assert "file: starts with b'hello'" in (s.home / "failed" / "F-1.pdf.error.txt").read_text()


async def test_an_oversized_document_is_refused_before_it_is_read(setup: Setup) -> None:
    path = setup.put("big.zip", b"PK\x03\x04" + b"0" * 2000)
    assert await setup.process(path) is Outcome.FAILED
    assert setup.documents.stored == []
    assert "2004 bytes; documents of at most 1024" in (setup.home / "failed" / "big.zip.error.txt").read_text()


# --- moves -------------------------------------------------------------------------------------


async def test_a_name_taken_in_processed_gets_a_timestamp(setup: Setup) -> None:
    for _ in range(2):
        assert await setup.process(setup.put("F-1.pdf", b"%PDF-1.7 ...")) is Outcome.PROCESSED
    names = setup.listing("processed")
    assert len(names) == 4 and "F-1.pdf" in names and "F-1.pdf.ref.json" in names
    [stamped] = [n for n in names if n not in {"F-1.pdf", "F-1.pdf.ref.json"} and not n.endswith(".ref.json")]
    assert stamped.startswith("F-1.") and stamped.endswith("Z.pdf")
    assert f"{stamped}.ref.json" in names


async def test_a_file_removed_before_it_is_taken_is_gone(setup: Setup) -> None:
    path = setup.put("F-1.pdf", b"%PDF-1.7")
    path.unlink()
    assert await setup.process(path) is Outcome.GONE


def deferred() -> float:
    return REGISTRY.get_sample_value("factura_sftp_files_total", {"outcome": "deferred"}) or 0.0


# --- the inbox ---------------------------------------------------------------------------------


def test_partial_uploads_by_name_are_ignored() -> None:
    assert ignored("f.csv.part") and ignored(".f.csv") and not ignored("f.csv")


def test_a_user_name_never_becomes_a_path(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path)
    for name in ("../etc", "a/b", ".work", "A"):
        with pytest.raises(ValueError, match="not a tenant id"):
            layout.tenant_dir(name)
    assert layout.tenant_of(layout.root / TENANT / "inbox" / "f.csv") == TENANT
    assert layout.tenant_of(layout.root / TENANT / "processed" / "f.csv") is None


async def test_the_scan_takes_complete_files_only_and_retries_after_an_outage(tmp_path: Path) -> None:
    s = Setup(tmp_path, sender=FakeSender(DependencyDown("kafka", "down")))
    inbox = Inbox(s.drop, s.layout, scan_interval_s=0.05)
    s.put("a.csv.part", b"partial")
    s.put(".hidden.csv", b"partial")
    open_one = s.put("open.pdf", b"%PDF-1.7")
    inbox.opened(open_one)
    s.put("f.csv", bulk_file(invoice_row("F-1")))
    stopping = asyncio.Event()
    before = deferred()
    running = asyncio.create_task(inbox.run(stopping))
    try:
        await until(lambda: deferred() >= before + 2)  # two scans tried it during the outage
        assert s.listing("processed") == [] and s.listing("failed") == []
        s.sender.error = None
        await until(lambda: "f.csv" in s.listing("processed"), timeout_s=5)
        assert sorted(p.name for p in (s.home / "inbox").iterdir()) == [".hidden.csv", "a.csv.part", "open.pdf"]

        inbox.closed(TENANT, open_one)  # the upload completes
        await until(lambda: "open.pdf" in s.listing("processed"), timeout_s=5)
    finally:
        stopping.set()
        await asyncio.wait_for(running, 5)


def test_a_file_being_taken_is_busy(setup: Setup) -> None:
    inbox = Inbox(setup.drop, setup.layout, scan_interval_s=1)
    path = setup.put("f.csv", b"")
    assert not inbox.busy(path)
    inbox.opened(path)
    assert inbox.writing(path)
    inbox.closed(TENANT, path)
    assert not inbox.writing(path)


# --- keys --------------------------------------------------------------------------------------


def test_no_host_key_no_server_unless_a_dev_key_is_asked_for(tmp_path: Path) -> None:
    with pytest.raises(HostKeyMissing, match="not set"):
        host_key(SftpSettings())
    settings = SftpSettings(host_key_file=tmp_path / "keys" / "host")
    with pytest.raises(HostKeyMissing, match="generate_host_key"):
        host_key(settings)
    generated = host_key(settings.model_copy(update={"generate_host_key": True}))
    assert stat.S_IMODE((tmp_path / "keys" / "host").stat().st_mode) == 0o600
    assert host_key(settings).public_data == generated.public_data  # read back, not generated again


def test_tenant_keys_are_read_per_tenant_and_nothing_else_is(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / f"{TENANT}.pub").write_bytes(key.export_public_key())
    (tmp_path / "broken.pub").write_text("not a key\n")
    keys = TenantKeys(tmp_path)
    assert keys.authorized(TENANT) is not None
    assert keys.authorized("other") is None
    assert keys.authorized("broken") is None
    assert keys.authorized("../harinas-sur") is None
