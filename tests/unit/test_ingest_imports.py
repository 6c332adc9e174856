"""The pure parts of ``POST /v1/imports``: the streaming form reader, sniffing, the mapping part,
the S3 writer's parts, and a run's progress and stop between the load thread and the loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factura.ingest.bulk.mapping import MappingError
from factura.ingest.imports.files import ObjectWriter, report_key, source_key
from factura.ingest.imports.form import (
    FormError,
    PartData,
    PartEnd,
    PartStart,
    clean_filename,
    form_events,
    parse_flag,
    read_mapping,
    sniff,
)
from factura.ingest.imports.worker import _MainLoopSender, _Run, _Stopped
from tests.waiting import until

CONTENT_TYPE = "multipart/form-data; boundary=XyZ"
BODY = (
    b"--XyZ\r\n"
    b'Content-Disposition: form-data; name="tenant_id"\r\n\r\n'
    b"harinas-sur\r\n"
    b"--XyZ\r\n"
    b'Content-Disposition: form-data; name="file"; filename="facturas.csv"\r\n'
    b"Content-Type: text/csv\r\n\r\n"
    b"a;b\r\n1;2\r\n\r\n"
    b"--XyZ--\r\n"
)


async def chunked(body: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


async def parts(body: bytes, size: int, content_type: str = CONTENT_TYPE) -> list[tuple[str, str | None, bytes]]:
    """(name, filename, content) per part, from the events."""
    out: list[tuple[str, str | None, bytes]] = []
    async for event in form_events(content_type, chunked(body, size)):
        if isinstance(event, PartStart):
            out.append((event.name, event.filename, b""))
        elif isinstance(event, PartData):
            name, filename, content = out[-1]
            out[-1] = (name, filename, content + event.data)
        else:
            assert isinstance(event, PartEnd)
    return out


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
async def test_parts_come_out_whole_whatever_the_chunking(size: int) -> None:
    assert await parts(BODY, size) == [
        ("tenant_id", None, b"harinas-sur"),
        ("file", "facturas.csv", b"a;b\r\n1;2\r\n"),
    ]


async def test_file_data_is_handed_on_as_it_arrives() -> None:
    events = [e async for e in form_events(CONTENT_TYPE, chunked(BODY, 8))]
    data = [e for e in events if isinstance(e, PartData)]
    assert len(data) > 2 and all(len(d.data) <= 8 for d in data)


@pytest.mark.parametrize(
    ("body", "content_type", "named"),
    [
        (BODY[:-12], CONTENT_TYPE, "closing boundary"),
        (BODY.replace(b"form-data; name", b"attachment; name"), CONTENT_TYPE, "Content-Disposition"),
        (BODY.replace(b' name="tenant_id"', b""), CONTENT_TYPE, "Content-Disposition"),
        (BODY, "application/json", "multipart/form-data"),
        (BODY, "multipart/form-data", "boundary"),
    ],
)
async def test_what_is_not_a_form_is_a_form_error(body: bytes, content_type: str, named: str) -> None:
    with pytest.raises(FormError, match=named):
        await parts(body, 16, content_type)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_bodies_raise_form_error_or_parse(body: bytes) -> None:
    with contextlib.suppress(FormError):
        asyncio.run(parts(body, 13))


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"PK\x03\x04\x14\x00\x06\x00", "xlsx"),
        ("Nº Factura;Fecha\r\nF-1;05/01/2026\r\n".encode("cp1252"), "csv"),
        (b"\xef\xbb\xbfinvoice_number,total\n", "csv"),
        (b"a\tb\x0c\x1a\n", "csv"),
        (b"%PDF-1.7\n", None),
        (b"\x1f\x8b\x08\x00", None),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", None),  # legacy .xls
        (b"\xff\xfei\x00n\x00", None),  # UTF-16
        (b"abc\x00def", None),
        (b"", None),
    ],
)
def test_sniff_tells_csv_and_xlsx_from_anything_else(head: bytes, expected: str | None) -> None:
    assert sniff(head) == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("1", True), (" On ", True), ("false", False), ("", False)]
)
def test_flags(value: str, expected: bool) -> None:
    assert parse_flag("dry_run", value) is expected


def test_a_flag_that_is_neither_names_the_field() -> None:
    with pytest.raises(FormError, match="dry_run"):
        parse_flag("dry_run", "maybe")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("C:\\exports\\facturas.csv", "facturas.csv"),
        ("../../etc/passwd", "passwd"),
        ("a\x1b[31mb.csv", "a[31mb.csv"),
        (None, ""),
        ("x" * 300 + ".csv", "x" * 255),
    ],
)
def test_filenames_are_kept_for_people_only(raw: str | None, expected: str) -> None:
    assert clean_filename(raw) == expected


def test_a_mapping_part_is_read_like_a_mapping_file() -> None:
    mapping = read_mapping(b'decimal_mark = ","\n[columns]\n"Factura" = "invoice_number"\n', "harinas-sur")
    assert mapping.decimal_mark == "," and mapping.columns == {"Factura": "invoice_number"}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (b"[columns\n", "mapping: "),
        (b'[columns]\n"F" = "invoice_nmber"\n', "invoice_nmber"),
        (b'tenant_id = "otra"\n[columns]\n"F" = "invoice_number"\n', "otra"),
        (b"\xff\xfe", "mapping: "),
    ],
)
def test_a_bad_mapping_names_the_problem_not_a_temporary_path(text: bytes, named: str) -> None:
    with pytest.raises(MappingError, match=named) as refused:
        read_mapping(text, "harinas-sur")
    assert "factura-mapping-" not in str(refused.value)


def test_keys_stay_in_the_tenants_prefix() -> None:
    assert source_key("harinas-sur", "abc", "xlsx") == "harinas-sur/imports/abc/source.xlsx"
    assert report_key("harinas-sur", "abc") == "harinas-sur/imports/abc/report.csv"


class FakeS3:
    """Records the calls an :class:`ObjectWriter` makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        async def call(**kwargs: Any) -> dict[str, Any]:
            self.calls.append((name, kwargs))
            return {"UploadId": "u-1", "ETag": f'"{len(self.calls)}"'}

        return call


async def test_a_small_object_is_one_put() -> None:
    s3 = FakeS3()
    writer = ObjectWriter(s3, "b", "k", content_type="text/csv", part_bytes=10)
    await writer.write(b"abc")
    await writer.write(b"def")
    await writer.finish()
    assert [(name, kw.get("Body")) for name, kw in s3.calls] == [("put_object", b"abcdef")]


async def test_a_large_object_goes_up_in_parts_of_the_set_size() -> None:
    s3 = FakeS3()
    writer = ObjectWriter(s3, "b", "k", content_type="text/csv", part_bytes=4)
    for chunk in (b"abc", b"defghij", b"k"):
        await writer.write(chunk)
    await writer.finish()
    names = [name for name, _ in s3.calls]
    assert names == [
        "create_multipart_upload",
        "upload_part",
        "upload_part",
        "upload_part",
        "complete_multipart_upload",
    ]
    bodies = [kw["Body"] for name, kw in s3.calls if name == "upload_part"]
    assert bodies == [b"abcd", b"efgh", b"ijk"]
    parts_listed = s3.calls[-1][1]["MultipartUpload"]["Parts"]
    assert [p["PartNumber"] for p in parts_listed] == [1, 2, 3]


async def test_discarding_aborts_an_unfinished_upload_or_deletes_a_stored_object() -> None:
    s3 = FakeS3()
    writer = ObjectWriter(s3, "b", "k", content_type="text/csv", part_bytes=4)
    await writer.write(b"abcdefgh")
    await writer.discard()
    assert s3.calls[-1][0] == "abort_multipart_upload"
    stored = ObjectWriter(s3, "b", "k", content_type="text/csv", part_bytes=4)
    await stored.write(b"ab")
    await stored.finish()
    await stored.discard()
    assert s3.calls[-1][0] == "delete_object"


async def test_a_run_counts_invoices_asks_for_a_flush_every_n_and_stops_between_invoices() -> None:
    run = _Run(asyncio.get_running_loop(), progress_every=3)
    for done in (10, 20):
        run.advance(done, 100)
    await asyncio.sleep(0)
    assert not run.flush.is_set()
    run.advance(30, 100)
    await asyncio.sleep(0)
    assert run.flush.is_set()
    assert run.progress().model_dump() == {"invoices": 3, "problems": 0, "percent": 30.0}
    run.stop()
    with pytest.raises(_Stopped):
        run.advance(40, 100)
    assert run.progress().invoices == 3


async def test_the_load_threads_sends_run_on_the_main_loop_and_stop_with_the_run() -> None:
    loop = asyncio.get_running_loop()
    sent: list[bytes] = []
    hung = asyncio.Event()

    class Sender:
        async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Any) -> None:
            assert asyncio.get_running_loop() is loop
            if value == b"hang":
                hung.set()
                await asyncio.Event().wait()  # a broker that never answers
            sent.append(value)

    bridge = _MainLoopSender(Sender(), loop)

    async def thread_side() -> str:
        await bridge.send("t", b"one", key=None, headers=[])
        try:
            await bridge.send("t", b"hang", key=None, headers=[])
        except asyncio.CancelledError:
            return "cancelled"
        return "sent"

    outcome = asyncio.ensure_future(asyncio.to_thread(asyncio.run, thread_side()))
    await until(hung.is_set)
    bridge.cancel()
    assert await outcome == "cancelled"
    assert sent == [b"one"]
