"""The SFTP drop over TCP: a real asyncssh client logs in with a tenant's key and puts files; the
drop publishes to the real local broker and stores documents in the real local S3."""

from __future__ import annotations

import asyncio
import csv
import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
from prometheus_client import REGISTRY

from factura.common.kafka.admin import ensure_topics
from factura.common.kafka.producer import Publisher
from factura.common.storage import DocumentStore
from factura.devstack import procs
from factura.devstack.config import StackConfig
from factura.devstack.stack import Stack
from factura.ingest.bulk.load import Sender
from factura.ingest.sftp import SftpSettings, sftp_task
from tests.conftest import kafka_settings
from tests.kafka_helpers import isolated, read_topic
from tests.unit.test_ingest_sftp import bulk_file, invoice_row
from tests.waiting import until, until_async

pytestmark = pytest.mark.integration
TENANT, OTHER = "harinas-sur", "panaderia-norte"
PDF = b"%PDF-1.7\n% an ERP's own invoice\n%%EOF\n"


@dataclass
class Drop:
    settings: SftpSettings
    host_key: asyncssh.SSHKey
    keys: dict[str, asyncssh.SSHKey]

    def folder(self, tenant: str, name: str) -> list[str]:
        return sorted(p.name for p in (self.settings.root / tenant / name).iterdir())

    def has(self, tenant: str, folder: str, name: str) -> bool:
        return (self.settings.root / tenant / folder / name).exists()

    @asynccontextmanager
    async def client(self, tenant: str, key: asyncssh.SSHKey | None = None) -> AsyncIterator[asyncssh.SFTPClient]:
        """An SFTP session as ``tenant``, pinning the server's host key."""
        async with (
            asyncssh.connect(
                self.settings.host,
                self.settings.port,
                username=tenant,
                client_keys=[key or self.keys[tenant]],
                known_hosts=([self.host_key.convert_to_public()], [], []),
                agent_path=None,
                preferred_auth="publickey",
            ) as conn,
            conn.start_sftp_client() as sftp,
        ):
            yield sftp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def drop_running(
    tmp_path: Path, *, sender: Sender, topic: str, store: DocumentStore, **overrides: object
) -> AsyncIterator[Drop]:
    """The drop's task on a free port; a long scan interval by default, so only SFTP itself hands files over."""
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    keys = {t: asyncssh.generate_private_key("ssh-ed25519") for t in (TENANT, OTHER)}
    for tenant, key in keys.items():
        (keys_dir / f"{tenant}.pub").write_bytes(key.export_public_key())
    settings = SftpSettings(
        enabled=True,
        port=free_port(),
        root=tmp_path / "sftp",
        host_key_file=tmp_path / "host_key",
        generate_host_key=True,
        keys_dir=keys_dir,
        scan_interval_s=3600,
        publish_timeout_s=2,
    ).model_copy(update=overrides)
    task = sftp_task(settings, sender=sender, topic=topic, store=store, allow_test_domains=True)
    stopping = asyncio.Event()
    running = asyncio.create_task(task(stopping))

    async def listening() -> bool:
        assert not running.done(), running
        try:
            _, writer = await asyncio.open_connection(settings.host, settings.port)
        except OSError:
            return False
        writer.close()
        return True

    try:
        await until_async(listening, timeout_s=10)
        yield Drop(settings, asyncssh.read_private_key(tmp_path / "host_key"), keys)
    finally:
        stopping.set()
        await asyncio.wait_for(running, 10)


@pytest.fixture
async def drop(cfg: StackConfig, store: DocumentStore, tmp_path: Path) -> AsyncIterator[tuple[Drop, str]]:
    """The drop publishing to a topic of the test's own; yields it with that topic's name."""
    async with isolated(cfg, client_id="test-sftp") as bus:
        topic = bus.topic("erp.invoices")
        async with drop_running(
            tmp_path, sender=bus.publisher, topic=topic, store=store, max_file_bytes=64 * 1024
        ) as running:
            yield running, topic


async def names(sftp: asyncssh.SFTPClient, path: str) -> list[str]:
    return sorted(str(n) for n in await sftp.listdir(path) if n not in {".", ".."})


def report(path: Path) -> list[list[str]]:
    return list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))


async def test_a_put_csv_is_published_and_lands_in_processed_with_its_report(
    drop: tuple[Drop, str], cfg: StackConfig
) -> None:
    d, topic = drop
    async with d.client(TENANT) as sftp, sftp.open("/inbox/facturas.csv", "wb") as f:
        await f.write(bulk_file(invoice_row("SF-1"), invoice_row("SF-2")))

    await until(lambda: d.has(TENANT, "processed", "facturas.csv"))
    records = await read_topic(cfg.kafka_bootstrap, topic, expect=2)
    assert sorted(r.key or b"" for r in records) == [b"harinas-sur/SF-1", b"harinas-sur/SF-2"]
    assert json.loads(records[0].value or b"")["tenant_id"] == TENANT
    assert d.folder(TENANT, "processed") == ["facturas.csv", "facturas.csv.report.csv"]
    assert report(d.settings.root / TENANT / "processed" / "facturas.csv.report.csv") == [
        ["row", "column", "value", "reason"]
    ]
    assert d.folder(TENANT, "inbox") == [] and d.folder(TENANT, "failed") == []


async def test_bad_rows_send_the_file_to_failed_with_a_report_and_the_good_rows_go_through(
    drop: tuple[Drop, str], cfg: StackConfig, tmp_path: Path
) -> None:
    d, topic = drop
    async with d.client(TENANT) as sftp:
        async with sftp.open("/inbox/mixed.csv.part", "wb") as f:  # the partial-upload convention
            await f.write(bulk_file(invoice_row("SF-3"), invoice_row("SF-4", quantity="=1+1"), invoice_row("SF-5")))
        assert await names(sftp, "/inbox") == ["mixed.csv.part"]  # not taken while it is named .part
        await sftp.rename("/inbox/mixed.csv.part", "/inbox/mixed.csv")

    await until(lambda: d.has(TENANT, "failed", "mixed.csv"))
    records = await read_topic(cfg.kafka_bootstrap, topic, expect=2)
    assert sorted(r.key or b"" for r in records) == [b"harinas-sur/SF-3", b"harinas-sur/SF-5"]
    assert d.folder(TENANT, "failed") == ["mixed.csv", "mixed.csv.error.txt", "mixed.csv.report.csv"]
    [header, problem] = report(d.settings.root / TENANT / "failed" / "mixed.csv.report.csv")
    assert header == ["row", "column", "value", "reason"]
    assert problem[:3] == ["3", "line.quantity", "'=1+1"]  # the formula is neutralised in the report
    assert "not a number" in problem[3]
    error = (d.settings.root / TENANT / "failed" / "mixed.csv.error.txt").read_text()
    assert "1 of 3 invoices rejected" in error

    async with d.client(TENANT) as sftp:  # the tenant fetches its report over SFTP
        await sftp.get("/failed/mixed.csv.report.csv", str(tmp_path / "fetched.csv"))
    assert report(tmp_path / "fetched.csv")[1][:2] == ["3", "line.quantity"]


async def test_a_put_pdf_is_stored_under_the_tenants_upload_prefix(
    drop: tuple[Drop, str], store: DocumentStore
) -> None:
    d, _ = drop
    async with d.client(TENANT) as sftp, sftp.open("/inbox/F-2026-1.pdf", "wb") as f:
        await f.write(PDF)

    await until(lambda: d.has(TENANT, "processed", "F-2026-1.pdf.ref.json"))
    ref = json.loads((d.settings.root / TENANT / "processed" / "F-2026-1.pdf.ref.json").read_text())
    assert ref["s3_key"].startswith(f"{TENANT}/erp/") and ref["s3_key"].endswith("/F-2026-1.pdf")
    assert ref["content_type"] == "application/pdf" and ref["size"] == len(PDF)
    assert await store.get(ref["s3_key"]) == PDF
    assert d.folder(TENANT, "processed") == ["F-2026-1.pdf", "F-2026-1.pdf.ref.json"]


async def test_an_upload_over_the_size_cap_is_refused_and_not_kept(drop: tuple[Drop, str]) -> None:
    d, _ = drop
    async with d.client(TENANT) as sftp:
        with pytest.raises(asyncssh.SFTPFailure, match="at most 65536 bytes"):
            async with sftp.open("/inbox/huge.pdf", "wb") as f:
                await f.write(PDF + b"0" * 70_000)
        assert await names(sftp, "/inbox") == []
        async with sftp.open("/inbox/small.pdf", "wb") as f:  # the session goes on
            await f.write(PDF)
    await until(lambda: d.has(TENANT, "processed", "small.pdf"))
    assert d.folder(TENANT, "failed") == []


async def test_a_wrong_key_or_an_unknown_tenant_is_refused(drop: tuple[Drop, str]) -> None:
    d, _ = drop
    with pytest.raises(asyncssh.PermissionDenied):
        async with d.client(TENANT, key=d.keys[OTHER]):
            pass
    with pytest.raises(asyncssh.PermissionDenied):
        async with d.client("nobody", key=d.keys[TENANT]):
            pass
    with pytest.raises(asyncssh.PermissionDenied):  # no password login at all
        await asyncssh.connect(
            d.settings.host,
            d.settings.port,
            username=TENANT,
            password="guess",
            client_keys=None,
            known_hosts=None,
            agent_path=None,
        )


async def test_a_tenant_sees_only_its_own_folder_and_writes_only_its_inbox(drop: tuple[Drop, str]) -> None:
    d, _ = drop
    async with d.client(OTHER) as sftp, sftp.open("/inbox/private.pdf.part", "wb") as f:
        await f.write(PDF)  # the other tenant's file, in the other tenant's inbox
    assert d.has(OTHER, "inbox", "private.pdf.part")

    async with d.client(TENANT) as sftp:
        assert await names(sftp, "/") == ["failed", "inbox", "processed"]
        assert await names(sftp, "/..") == ["failed", "inbox", "processed"]
        assert await sftp.realpath("/../../..") == "/"
        for path in (f"/../{OTHER}/inbox", f"../{OTHER}", f"/../../{d.settings.root.name}/{OTHER}/inbox"):
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await sftp.listdir(path)
        with pytest.raises(asyncssh.SFTPNoSuchFile):
            await sftp.open(f"/../{OTHER}/inbox/private.pdf.part", "rb")
        for path in ("/processed/forged.csv", "/x.csv", f"/../{OTHER}/inbox/x.csv"):
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.open(path, "wb")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.symlink(f"/../{OTHER}", "/inbox/link")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.mkdir("/inbox/sub")


async def test_no_shell_or_command_is_served(drop: tuple[Drop, str]) -> None:
    d, _ = drop
    async with asyncssh.connect(
        d.settings.host,
        d.settings.port,
        username=TENANT,
        client_keys=[d.keys[TENANT]],
        known_hosts=([d.host_key.convert_to_public()], [], []),
        agent_path=None,
    ) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.run("cat /etc/passwd", check=True)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Stack]:
    """A broker of this test's own, so its outage disturbs no other test."""
    if not procs.has_procfs():
        pytest.skip("the stack finds its processes through /proc")
    stack = Stack(StackConfig.free_ports(tmp_path / "stack", topic_prefix=f"sftp{uuid.uuid4().hex[:6]}."))
    try:
        stack.up(["kafka"])
        yield stack
    finally:
        stack.stop()


def deferred() -> float:
    return REGISTRY.get_sample_value("factura_sftp_files_total", {"outcome": "deferred"}) or 0.0


async def test_a_file_dropped_while_the_broker_is_down_waits_in_the_inbox_then_goes_through(
    broker: Stack, store: DocumentStore, tmp_path: Path
) -> None:
    """The broker frozen (SIGSTOP: connections accepted, never answered), the outage a publish
    timeout must detect. Not stopped: the local broker keeps topics in memory only, and a batch the
    producer still held from before a restart comes back as UnknownError and unreadable records."""
    settings = kafka_settings(broker.cfg)
    await ensure_topics(settings)
    topic = f"{settings.topic_prefix}erp.invoices"
    publisher = Publisher(settings, client_id="test-sftp-outage")
    await publisher.start()
    try:
        async with drop_running(tmp_path, sender=publisher, topic=topic, store=store, scan_interval_s=0.5) as d:
            await asyncio.to_thread(broker.pause_server, "kafka")
            before = deferred()
            async with d.client(TENANT) as sftp, sftp.open("/inbox/during-outage.csv", "wb") as f:
                await f.write(bulk_file(invoice_row("SF-OUT-1")))
            await until(lambda: deferred() >= before + 2)  # taken on close, then again by a scan: both wait
            assert d.folder(TENANT, "inbox") == ["during-outage.csv"]
            assert d.folder(TENANT, "processed") == [] and d.folder(TENANT, "failed") == []

            await asyncio.to_thread(broker.resume_server, "kafka")
            await until(lambda: d.has(TENANT, "processed", "during-outage.csv"), timeout_s=60)
            records = await read_topic(broker.cfg.kafka_bootstrap, topic, expect=1)
    finally:
        await publisher.stop()
    assert {r.key for r in records} == {b"harinas-sur/SF-OUT-1"}
    assert d.folder(TENANT, "failed") == []
