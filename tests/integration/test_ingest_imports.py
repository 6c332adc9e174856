"""``POST /v1/imports`` on the real broker, S3 and MongoDB-wire servers: uploads stored in S3 and
queued in MongoDB, loaded by the worker into erp.invoices with a report, keys and tenants,
deduplication, outages, and a worker killed mid-import whose import another one finishes."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError
from pymongo.asynchronous.database import AsyncDatabase

from factura.common.apikeys import COLLECTION, ApiKeyStore, Role, authenticator
from factura.common.http import Health, create_app, server
from factura.common.kafka.producer import Headers
from factura.common.mongo import Document, create_client, database
from factura.devstack.config import StackConfig
from factura.devstack.stack import Stack
from factura.ingest.imports import ImportFiles, ImportSettings, ImportStore, import_worker, router
from factura.ingest.imports.settings import MIB
from factura.ingest.versions import IdempotencyStore
from tests.api_keys import grant
from tests.conftest import mongo_settings, s3_settings
from tests.integration.test_ingest_bulk import SAMPLE_CSV, SAMPLES, spanish_xlsx
from tests.kafka_helpers import Bus, isolated, read_all
from tests.waiting import until_async

pytestmark = pytest.mark.integration
TENANT = "harinas-sur"
OTHER = "otra-empresa"
MAPPING_TOML = (SAMPLES / "harinas-sur.mapping.toml").read_bytes()
SETTINGS = ImportSettings(
    max_upload_bytes=12 * MIB,
    part_bytes=5 * MIB,
    lease_s=1.5,
    poll_s=0.05,
    progress_every=20,
    retry_initial_s=0.2,
    retry_max_s=0.5,
)
INGEST: dict[str, str] = {}
ADMIN: dict[str, str] = {}
READER: dict[str, str] = {}
FOREIGN: dict[str, str] = {}


@dataclass
class Setup:
    cfg: StackConfig
    db: AsyncDatabase[Document]
    files: ImportFiles
    bus: Bus
    keys: ApiKeyStore


@dataclass
class Imports:
    """One test's imports: a collection of its own, the API on it, and workers to start."""

    setup: Setup
    store: ImportStore
    collection: str
    client: httpx.AsyncClient
    topic: str

    @asynccontextmanager
    async def worker(self, *, sender: Any = None, owner: str | None = None) -> AsyncIterator[asyncio.Task[None]]:
        task = asyncio.create_task(
            import_worker(
                self.store,
                self.setup.files,
                sender or self.setup.bus.publisher,
                topic=self.topic,
                settings=SETTINGS,
                allow_test_domains=True,
                owner=owner,
            )(stopping := asyncio.Event())
        )
        try:
            yield task
        finally:
            stopping.set()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)

    async def post(
        self,
        file: bytes,
        *,
        name: str = "facturas.csv",
        mapping: bytes | None = MAPPING_TOML,
        tenant: str = TENANT,
        dry_run: bool | None = None,
        headers: dict[str, str] = INGEST,
    ) -> httpx.Response:
        data: dict[str, str] = {"tenant_id": tenant}
        if dry_run is not None:
            data["dry_run"] = "true" if dry_run else "false"
        files: dict[str, tuple[str, bytes, str]] = {}
        if mapping is not None:
            files["mapping"] = ("mapping.toml", mapping, "application/toml")
        files["file"] = (name, file, "application/octet-stream")
        return await self.client.post("/v1/imports", data=data, files=files, headers=headers)

    async def finished(self, import_id: str, timeout_s: float = 30) -> dict[str, Any]:
        status: dict[str, Any] = {}

        async def done() -> bool:
            nonlocal status
            status = (await self.client.get(f"/v1/imports/{import_id}", headers=INGEST)).json()
            return status["state"] in ("succeeded", "failed")

        await until_async(done, timeout_s)
        return status

    async def report(self, import_id: str) -> list[list[str]]:
        answer = await self.client.get(f"/v1/imports/{import_id}/report", headers=INGEST)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/csv")
        return list(csv.reader(io.StringIO(answer.content.decode("utf-8-sig"))))


@pytest.fixture(scope="module")
async def setup(cfg: StackConfig) -> AsyncIterator[Setup]:
    settings = mongo_settings(cfg)
    async with isolated(cfg, client_id="test-imports") as bus, AsyncExitStack() as stack:
        mongo = create_client(settings)
        stack.push_async_callback(mongo.close)
        db = database(mongo, settings)
        files = await ImportFiles.connect(s3_settings(cfg), stack, part_bytes=SETTINGS.part_bytes)
        await files.ensure_bucket()
        keys = ApiKeyStore(db[f"{COLLECTION}_{uuid.uuid4().hex[:6]}"])
        await keys.ensure_indexes()
        await grant(
            keys,
            (
                (INGEST, Role.INGEST, [TENANT]),
                (ADMIN, Role.ADMIN, ["*"]),
                (READER, Role.COMPLIANCE_READER, [TENANT]),
                (FOREIGN, Role.INGEST, [OTHER]),
            ),
        )
        yield Setup(cfg, db, files, bus, keys)


def app_for(setup: Setup, store: ImportStore, files: ImportFiles, settings: ImportSettings = SETTINGS) -> Any:
    idempotency = IdempotencyStore(setup.db[f"ingest_idempotency_{uuid.uuid4().hex[:6]}"])
    routes = router(store, files, idempotency, auth=authenticator(setup.keys), settings=settings)
    return create_app("ingest", Health(), [routes])


@pytest.fixture
async def imports(setup: Setup) -> AsyncIterator[Imports]:
    collection = f"ingest_imports_{uuid.uuid4().hex[:6]}"
    store = ImportStore(setup.db[collection])
    await store.ensure_indexes()
    app = app_for(setup, store, setup.files)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as client:
        yield Imports(setup, store, collection, client, setup.bus.topic(f"erp.invoices.{collection}"))


def keys_on(records: list[Any]) -> set[bytes]:
    return {r.key for r in records}


# --- the happy paths ------------------------------------------------------------------------------------


async def test_a_csv_upload_is_loaded_into_erp_invoices_with_its_report(imports: Imports) -> None:
    posted = await imports.post(SAMPLE_CSV.read_bytes(), name="C:\\exports\\facturas.csv")
    assert posted.status_code == 202, posted.text
    body = posted.json()
    import_id = body["import_id"]
    assert body == {
        "import_id": import_id,
        "state": "queued",
        "status_url": f"/v1/imports/{import_id}",
        "report_url": f"/v1/imports/{import_id}/report",
    }
    assert posted.headers["location"] == body["status_url"]
    queued = (await imports.client.get(body["status_url"], headers=INGEST)).json()
    assert (queued["state"], queued["filename"], queued["format"]) == ("queued", "facturas.csv", "csv")
    assert queued["size"] == len(SAMPLE_CSV.read_bytes())
    late = await imports.client.get(body["report_url"], headers=INGEST)
    assert late.status_code == 409 and "queued" in late.json()["detail"]

    async with imports.worker():
        status = await imports.finished(import_id)

    assert status["state"] == "succeeded", status
    assert status["summary"] == {
        "rows": 5,
        "invoices": 4,
        "accepted": 3,
        "published": 3,
        "rejected": 1,
        "rejected_rows": 1,
        "problems": 1,
        "total_row": 8,
        "dry_run": False,
    }
    assert status["attempts"] == 1 and status["error"] is None and status["finished_at"]
    assert status["progress"]["invoices"] == 4
    records = await read_all(imports.setup.cfg.kafka_bootstrap, imports.topic)
    assert sorted(r.key for r in records) == [
        b"harinas-sur/HAR-B-0001",
        b"harinas-sur/HAR-B-0002",
        b"harinas-sur/HAR-B-0003",
    ]
    report = await imports.report(import_id)
    assert report[0] == ["row", "column", "value", "reason"]
    assert [r[:3] for r in report[1:]] == [["6", "Email", "correo-sin-arroba.test"]]
    assert report[1][3]  # a reason


async def test_an_xlsx_upload_reports_its_bad_row(imports: Imports, tmp_path: Path) -> None:
    xlsx = tmp_path / "facturas.xlsx"
    spanish_xlsx(xlsx)
    posted = await imports.post(xlsx.read_bytes(), name="facturas.xlsx")
    assert posted.status_code == 202, posted.text
    async with imports.worker():
        status = await imports.finished(posted.json()["import_id"])
    assert status["format"] == "xlsx" and status["state"] == "succeeded", status
    assert (status["summary"]["published"], status["summary"]["rejected"]) == (2, 1)
    report = await imports.report(status["import_id"])
    assert [r[:3] for r in report[1:]] == [["4", "Cantidad", "uno"]]


async def test_a_dry_run_checks_every_row_and_publishes_nothing(imports: Imports) -> None:
    posted = await imports.post(SAMPLE_CSV.read_bytes(), dry_run=True)
    async with imports.worker():
        status = await imports.finished(posted.json()["import_id"])
    assert status["dry_run"] is True and status["summary"]["dry_run"] is True
    assert (status["summary"]["accepted"], status["summary"]["published"]) == (3, 0)
    assert len(await imports.report(status["import_id"])) == 2


async def test_a_file_refused_as_a_whole_fails_with_the_reason(imports: Imports) -> None:
    posted = await imports.post(b"numero;fecha\nF-1;2026-01-01\n", mapping=None)
    async with imports.worker():
        status = await imports.finished(posted.json()["import_id"])
    assert status["state"] == "failed" and "invoice_number" in status["error"], status
    assert status["summary"] is None
    assert await imports.report(status["import_id"]) == [["row", "column", "value", "reason"]]


# --- deduplication and Idempotency-Key ----------------------------------------------------------------


async def test_the_same_upload_again_returns_the_existing_import(imports: Imports) -> None:
    content = SAMPLE_CSV.read_bytes()
    first = await imports.post(content)
    again = await imports.post(content)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
    dry = await imports.post(content, dry_run=True)
    other_mapping = await imports.post(content, mapping=MAPPING_TOML + b"\n# another version\n")
    assert dry.status_code == other_mapping.status_code == 202
    assert len({r.json()["import_id"] for r in (first, dry, other_mapping)}) == 3
    assert await imports.setup.db[imports.collection].count_documents({}) == 3  # the repeat left nothing behind


async def test_idempotency_key_replays_the_first_answer_and_refuses_another_upload(imports: Imports) -> None:
    key = {"Idempotency-Key": f"upload-{uuid.uuid4()}"}
    content = SAMPLE_CSV.read_bytes()
    first = await imports.post(content, headers=INGEST | key)
    replay = await imports.post(content, headers=INGEST | key)
    assert first.status_code == replay.status_code == 202
    assert replay.json() == first.json() and replay.headers["idempotent-replayed"] == "true"
    other = await imports.post(content + b"HAR-B-0009;\n", headers=INGEST | key)
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["detail"]
    bad = await imports.post(content, headers=INGEST | {"Idempotency-Key": "bad\x01key"})
    assert bad.status_code == 400


# --- refusals at the door ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mapping", "named"),
    [
        (b'[columns]\n"Factura" = "invoice_numbr"\n', "unknown field(s) invoice_numbr"),
        (b"[columns\n", "mapping"),
        (MAPPING_TOML.replace(b'tenant_id = "harinas-sur"', b'tenant_id = "otra-empresa"'), "otra-empresa"),
        (b'colour = "blue"\n[columns]\n"F" = "invoice_number"\n', "unknown setting(s) colour"),
    ],
)
async def test_a_bad_mapping_is_a_422_naming_the_problem(imports: Imports, mapping: bytes, named: str) -> None:
    answer = await imports.post(SAMPLE_CSV.read_bytes(), mapping=mapping)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert detail.startswith("mapping: ") and named in detail and "/tmp" not in detail
    assert await imports.setup.db[imports.collection].count_documents({}) == 0


async def test_keys_roles_and_tenants(imports: Imports) -> None:
    content = SAMPLE_CSV.read_bytes()
    assert (await imports.post(content, headers={})).status_code == 401
    reader = await imports.post(content, headers=READER)
    assert reader.status_code == 403 and "role" in reader.json()["detail"]
    foreign = await imports.post(content, headers=FOREIGN)
    assert foreign.status_code == 403 and TENANT in foreign.json()["detail"]
    mine = await imports.post(content, headers=ADMIN)
    assert mine.status_code == 202
    status_url, report_url = mine.json()["status_url"], mine.json()["report_url"]
    for url in (status_url, report_url):
        assert (await imports.client.get(url)).status_code == 401
        assert (await imports.client.get(url, headers=READER)).status_code == 403
        assert (await imports.client.get(url, headers=FOREIGN)).status_code == 404
    assert (await imports.client.get(status_url, headers=INGEST)).status_code == 200
    assert (await imports.client.get(f"/v1/imports/{uuid.uuid4()}", headers=ADMIN)).status_code == 404
    assert (await imports.client.get(f"/v1/imports/{uuid.uuid4()}/report", headers=ADMIN)).status_code == 404


def multipart(*parts: tuple[str, str | None, bytes], boundary: str = "b0undary") -> tuple[bytes, dict[str, str]]:
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.mark.parametrize(
    ("parts", "status", "named"),
    [
        ([("file", "f.csv", b"a;b\n"), ("tenant_id", None, TENANT.encode())], 400, "tenant_id"),
        ([("tenant_id", None, TENANT.encode())], 400, "file: missing"),
        ([("tenant_id", None, TENANT.encode()), ("file", "f.csv", b"")], 400, "file: empty"),
        ([("tenant_id", None, b"Not A Tenant"), ("file", "f.csv", b"a\n")], 400, "tenant_id"),
        ([("tenant_id", None, TENANT.encode()), ("tenant_id", None, TENANT.encode())], 400, "more than once"),
        ([("tenant_id", None, TENANT.encode()), ("colour", None, b"blue")], 400, "colour"),
        ([("tenant_id", None, TENANT.encode()), ("dry_run", None, b"maybe")], 400, "dry_run"),
        ([("tenant_id", None, TENANT.encode()), ("file", "f.pdf", b"%PDF-1.7\n%\xe2\xe3\n")], 415, "CSV or XLSX"),
        ([("tenant_id", None, TENANT.encode()), ("file", "f.csv", b"\xff\xfea\x00;\x00b\x00")], 415, "CSV or XLSX"),
        ([("tenant_id", None, TENANT.encode()), ("mapping", "m.toml", b"#" * (70 * 1024))], 413, "mapping"),
    ],
)
async def test_a_malformed_form_is_refused_naming_the_field(
    imports: Imports, parts: list[tuple[str, str | None, bytes]], status: int, named: str
) -> None:
    body, headers = multipart(*parts)
    answer = await imports.client.post("/v1/imports", content=body, headers=INGEST | headers)
    assert answer.status_code == status, answer.text
    assert named in answer.json()["detail"]


async def test_not_a_form_and_truncated_forms_are_refused(imports: Imports) -> None:
    as_json = await imports.client.post("/v1/imports", json={"tenant_id": TENANT}, headers=INGEST)
    assert as_json.status_code == 415
    body, headers = multipart(("tenant_id", None, TENANT.encode()), ("file", "f.csv", b"a;b\n1;2\n"))
    cut = await imports.client.post("/v1/imports", content=body[:-20], headers=INGEST | headers)
    assert cut.status_code == 400 and "boundary" in cut.json()["detail"]


async def test_a_file_over_the_cap_is_refused_while_it_streams(imports: Imports) -> None:
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="tenant_id"\r\n\r\nharinas-sur\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n\r\n'
        for _ in range(40):
            sent += 1
            yield b"x;" * (MIB // 2)
        yield b"\r\n--b--\r\n"

    headers = INGEST | {"Content-Type": "multipart/form-data; boundary=b"}
    answer = await imports.client.post("/v1/imports", content=body(), headers=headers)
    assert answer.status_code == 413 and str(SETTINGS.max_upload_bytes) in answer.json()["detail"]
    assert sent < 20  # refused as the cap passed, not after reading everything
    declared = await imports.client.post(
        "/v1/imports", content=b"x", headers=headers | {"Content-Length": str(100 * MIB)}
    )
    assert declared.status_code == 413


# --- the worker ---------------------------------------------------------------------------------------


def many_invoices(count: int, *, pad: int = 0) -> bytes:
    """A CSV in the contract's own column names (no mapping needed), one invoice per row."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["erp_source", "invoice_number", "issue_date", "due_date", "currency", "seller_name", "customer.id",
         "customer.name", "customer.country", "customer.email", "line.description", "line.quantity",
         "line.unit_price", "line.tax_rate"]
    )  # fmt: skip
    for i in range(count):
        writer.writerow(
            ["sap", f"BIG-{i:06d}", "2026-03-02", "2026-04-01", "EUR", "Harinas del Sur", f"C-{i}", "Cliente",
             "ES", f"c{i}@cliente.test", "Harina" + "·" * pad, "1", "10.00", "21"]
        )  # fmt: skip
    return out.getvalue().encode()


async def test_concurrent_claims_take_each_import_once(imports: Imports) -> None:
    for i in range(3):
        await imports.store.create(
            {"_id": f"race-{i}", "tenant_id": TENANT, "filename": "f.csv", "format": "csv", "size": 1,
             "sha256": "0", "dry_run": False, "mapping": None, "dedupe": f"race-{i}",
             "source_key": "k", "report_key": "r"}
        )  # fmt: skip
    claims = await asyncio.gather(*(imports.store.claim(f"worker-{i}", 60) for i in range(12)))
    taken = [c for c in claims if c is not None]
    assert sorted(c.import_id for c in taken) == ["race-0", "race-1", "race-2"]
    assert all(c.state == "running" and c.owner and c.attempts == 1 for c in taken)
    assert await imports.store.claim("late", 60) is None  # every lease is live


async def test_a_worker_killed_mid_import_is_taken_over_after_its_lease(imports: Imports, tmp_path: Path) -> None:
    """A worker in another process dies (SIGKILL) while loading; after its lease another one loads the
    whole file again and finishes. The invoices it had published are published twice, which ingest
    deduplicates."""
    count = 10_000
    posted = await imports.post(many_invoices(count), mapping=None)
    import_id = posted.json()["import_id"]
    setup = imports.setup
    config = {
        "mongo": mongo_settings(setup.cfg).model_dump(mode="json"),
        "s3": s3_settings(setup.cfg).model_dump(mode="json") | {"secret_access_key": setup.cfg.s3_secret_access_key},
        "kafka": setup.bus.settings.model_dump(mode="json"),
        "collection": imports.collection,
        "topic": imports.topic,
        "settings": SETTINGS.model_dump(mode="json") | {"progress_every": 10},
    }
    script = tmp_path / "worker.py"
    script.write_text(DYING_WORKER, encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), json.dumps(config))
    try:

        async def loading() -> bool:
            record = await imports.store.get(import_id)
            assert record is not None and record.state != "succeeded", "finished before it could be killed"
            return record.owner == "doomed" and record.progress is not None and record.progress.invoices > 0

        await until_async(loading, 60)
        proc.send_signal(signal.SIGKILL)
    finally:
        await proc.wait()
    killed = await imports.store.get(import_id)
    assert killed is not None and killed.state == "running" and killed.owner == "doomed"
    assert killed.progress is not None and killed.progress.invoices < count

    async with imports.worker(owner="heir"):
        status = await imports.finished(import_id, timeout_s=90)
    assert status["state"] == "succeeded" and status["attempts"] == 2, status
    assert status["summary"]["published"] == count
    records = await read_all(setup.cfg.kafka_bootstrap, imports.topic)
    assert len(keys_on(records)) == count  # with the dead worker's sends, if any: ingest deduplicates them


DYING_WORKER = """
import asyncio, json, sys
from contextlib import AsyncExitStack
from factura.common.kafka.producer import Publisher
from factura.common.mongo import create_client, database
from factura.common.settings import KafkaSettings, MongoSettings, S3Settings
from factura.ingest.imports import ImportFiles, ImportSettings, ImportStore, import_worker

async def main(config):
    mongo_settings = MongoSettings(**config["mongo"])
    async with AsyncExitStack() as stack:
        mongo = create_client(mongo_settings)
        store = ImportStore(database(mongo, mongo_settings)[config["collection"]])
        files = await ImportFiles.connect(S3Settings(**config["s3"]), stack)
        publisher = Publisher(KafkaSettings(**config["kafka"]), client_id="doomed")
        await publisher.start()
        settings = ImportSettings(**config["settings"])
        task = import_worker(store, files, publisher, topic=config["topic"], settings=settings,
                             allow_test_domains=True, owner="doomed")
        await task(asyncio.Event())

asyncio.run(main(json.loads(sys.argv[1])))
"""


async def test_a_worker_stopped_mid_import_hands_it_back_at_once(imports: Imports) -> None:
    count = 10_000
    posted = await imports.post(many_invoices(count), mapping=None)
    import_id = posted.json()["import_id"]
    async with imports.worker(owner="first") as first:

        async def loading() -> bool:
            record = await imports.store.get(import_id)
            return record is not None and record.progress is not None and record.progress.invoices > 0

        await until_async(loading, 30)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
    handed_back = await imports.store.get(import_id)
    assert handed_back is not None and handed_back.state == "queued" and handed_back.owner is None
    assert handed_back.progress is not None and handed_back.progress.invoices < count
    async with imports.worker(owner="second"):
        status = await imports.finished(import_id, timeout_s=60)
    assert status["state"] == "succeeded" and status["attempts"] == 2
    assert status["summary"]["published"] == count


class FlakyBroker:
    """The real publisher, but the first ``failures`` sends fail as when the broker is unreachable."""

    def __init__(self, bus: Bus, failures: int) -> None:
        self._bus, self.failures = bus, failures

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Headers) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise KafkaConnectionError("broker unreachable (test)")
        await self._bus.publisher.send(topic, value, key=key, headers=headers)


async def test_a_kafka_outage_sends_the_import_back_to_the_queue_until_it_loads(imports: Imports) -> None:
    posted = await imports.post(SAMPLE_CSV.read_bytes())
    import_id = posted.json()["import_id"]
    async with imports.worker(sender=FlakyBroker(imports.setup.bus, failures=1)):
        status = await imports.finished(import_id)
    assert status["state"] == "succeeded" and status["attempts"] == 2, status
    assert "broker unreachable" in status["last_outage"]
    assert status["summary"]["published"] == 3
    records = await read_all(imports.setup.cfg.kafka_bootstrap, imports.topic)
    assert len(keys_on(records)) == 3


async def test_a_large_upload_goes_to_s3_in_parts(imports: Imports, tmp_path: Path) -> None:
    content = many_invoices(9000, pad=300)
    assert SETTINGS.part_bytes < len(content) < SETTINGS.max_upload_bytes
    posted = await imports.post(content, mapping=None, name="big.csv")
    assert posted.status_code == 202, posted.text
    record = await imports.store.get(posted.json()["import_id"])
    assert record is not None and record.size == len(content)
    downloaded = tmp_path / "back.csv"
    await imports.setup.files.download(record.source_key, downloaded)
    assert downloaded.read_bytes() == content


# --- S3 down ------------------------------------------------------------------------------------------


async def test_s3_stopped_during_an_upload_is_a_503_and_nothing_is_queued(setup: Setup, tmp_path: Path) -> None:
    """S3 of its own (stopping the shared one would lose every other test's objects)."""
    own = Stack(StackConfig.free_ports(tmp_path / "stack"))
    await asyncio.to_thread(own.start_service, "s3")
    try:
        async with AsyncExitStack() as stack:
            files = await ImportFiles.connect(s3_settings(own.cfg), stack, part_bytes=SETTINGS.part_bytes)
            collection = setup.db[f"ingest_imports_{uuid.uuid4().hex[:6]}"]
            store = ImportStore(collection)
            app = app_for(setup, store, files)
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest")
            )

            async def body() -> AsyncIterator[bytes]:
                yield b'--b\r\nContent-Disposition: form-data; name="tenant_id"\r\n\r\nharinas-sur\r\n'
                yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="f.csv"\r\n\r\n'
                for i in range(16):
                    if i == 6:  # the first part (5 MiB) is in S3
                        await asyncio.to_thread(own.stop_server, "s3")
                    yield b"a;b\n" * (MIB // 8)
                yield b"\r\n--b--\r\n"

            headers = INGEST | {"Content-Type": "multipart/form-data; boundary=b"}
            answer = await client.post("/v1/imports", content=body(), headers=headers)
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"].isdigit()
            assert await collection.count_documents({}) == 0
    finally:
        await asyncio.to_thread(own.stop)


# --- the OpenAPI schema -------------------------------------------------------------------------------


async def test_generated_requests_get_only_documented_answers(imports: Imports, tmp_path: Path) -> None:
    """schemathesis (its CLI, as in the e2e test) against these routes served over TCP."""
    app = app_for(imports.setup, imports.store, imports.setup.files)
    port = StackConfig.free_ports(tmp_path / "ports").port("ingest")
    http = server(app, "127.0.0.1", port)
    serving = asyncio.create_task(http.serve())
    try:
        await until_async(_answers(f"http://127.0.0.1:{port}/livez"), 20)
        run = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "schemathesis"), "run", f"http://127.0.0.1:{port}/openapi.json",
            "--max-examples", "30", "--seed", "1", "--exclude-checks", "positive_data_acceptance",
            "--include-path-regex", "/v1/imports", "--header", f"Authorization: {ADMIN['Authorization']}",
            "--no-color", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(run.communicate(), 300)
    finally:
        http.should_exit = True
        await serving
    report = out.decode(errors="replace")
    assert run.returncode == 0, report[-6000:]
    assert "Selected: 3/6" in report and "Tested: 3" in report, report[-3000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", report)
    assert cases and int(cases[1]) == int(cases[2]) >= 100, report[-3000:]


def _answers(url: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        async with httpx.AsyncClient() as client:
            try:
                return (await client.get(url)).status_code == 200
            except httpx.TransportError:
                return False

    return check
