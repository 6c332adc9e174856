"""A ``multipart/form-data`` body as a stream of part events, never whole in memory.

Starlette's form parser spools every file part to a temporary file before the route sees it, with
no cap on its size; an import's file instead goes to S3 part by part while it arrives, and the
route refuses it (413) the moment it passes the cap. python-multipart's push parser does the
parsing; each chunk of the request yields the events it completed.

Also the pure checks of an upload: what a file is by its first bytes (:func:`sniff`), the mapping
(:func:`read_mapping`), ``dry_run`` values, and the file name kept for people.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from factura.ingest.bulk.load import check_tenant
from factura.ingest.bulk.mapping import Mapping, MappingError, load_mapping
from factura.ingest.imports.store import Format

#: Bytes of a file looked at to tell CSV from anything else.
SNIFF_BYTES = 64 * 1024
_ZIP = b"PK\x03\x04"
#: Binary formats whose first bytes may look like text.
_BINARY_MAGIC = (b"%PDF", b"\x1f\x8b", b"\xd0\xcf\x11\xe0", b"\x89PNG", b"BZh", b"7z\xbc\xaf", b"Rar!")
#: C0 controls no text export holds (tab, LF, VT, FF, CR, SUB and ESC are let through).
_CONTROL = re.compile(rb"[\x00-\x08\x0e-\x19\x1c-\x1f]")
_TRUE, _FALSE = frozenset({"true", "1", "yes", "on"}), frozenset({"false", "0", "no", "off", ""})
MAX_FILENAME = 255


class FormError(ValueError):
    """The body is not the form the route documents (400)."""


@dataclass(frozen=True)
class PartStart:
    name: str
    filename: str | None
    content_type: str | None


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


def boundary_of(content_type: str) -> bytes:
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise FormError("the body must be multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary:
        raise FormError("the multipart/form-data body names no boundary")
    return boundary


class _Collector:
    """Collects the parser's callbacks for one chunk as events."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.ended = False
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""

    def on_part_begin(self) -> None:
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise FormError("a part lacks Content-Disposition: form-data with a name")
        filename = options.get(b"filename")
        content_type = self._headers.get(b"content-type")
        self.events.append(
            PartStart(
                _text(options[b"name"]),
                None if filename is None else _text(filename),
                None if content_type is None else _text(content_type),
            )
        )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self.events.append(PartData(data[start:end]))

    def on_part_end(self) -> None:
        self.events.append(PartEnd())

    def on_end(self) -> None:
        self.ended = True


async def form_events(content_type: str, chunks: AsyncIterator[bytes]) -> AsyncIterator[Event]:
    """The parts of a ``multipart/form-data`` body as events; :class:`FormError` when it is not one
    (including a body cut short before its closing boundary)."""
    collector = _Collector()
    parser = MultipartParser(
        boundary_of(content_type),
        {
            "on_part_begin": collector.on_part_begin,
            "on_header_field": collector.on_header_field,
            "on_header_value": collector.on_header_value,
            "on_header_end": collector.on_header_end,
            "on_headers_finished": collector.on_headers_finished,
            "on_part_data": collector.on_part_data,
            "on_part_end": collector.on_part_end,
            "on_end": collector.on_end,
        },
    )
    try:
        async for chunk in chunks:
            parser.write(chunk)
            for event in collector.events:
                yield event
            collector.events.clear()
        parser.finalize()
    except FormParserError as e:
        raise FormError(f"the body is not valid multipart/form-data: {e}") from e
    for event in collector.events:
        yield event
    if not collector.ended:
        raise FormError("the body ends before the multipart closing boundary")


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def sniff(head: bytes) -> Format | None:
    """``xlsx`` for a zip (an Office Open XML workbook is one), ``csv`` for text, else ``None``.

    Any single-byte text passes as CSV (the reader decodes UTF-8, Windows-1252 or Latin-1 itself);
    UTF-16 has NUL bytes and is refused like binary formats."""
    if head.startswith(_ZIP):
        return "xlsx"
    if not head or head.startswith(_BINARY_MAGIC) or _CONTROL.search(head[:SNIFF_BYTES]):
        return None
    return "csv"


def parse_flag(name: str, value: str) -> bool:
    folded = value.strip().casefold()
    if folded in _TRUE:
        return True
    if folded in _FALSE:
        return False
    raise FormError(f"{name}: expected true or false, not {value[:20]!r}")


def clean_filename(raw: str | None) -> str:
    """The upload's file name for the status: its last path segment, printable, at most 255 characters."""
    name = re.split(r"[\\/]", raw or "")[-1]
    name = "".join(c for c in name if c.isprintable())
    return name[:MAX_FILENAME]


def read_mapping(text: bytes, tenant_id: str) -> Mapping:
    """A mapping part read by the CLI's own loader (so both doors accept the same files) and checked
    against the tenant; :class:`MappingError` names the problem."""
    with tempfile.TemporaryDirectory(prefix="factura-mapping-") as tmp:
        path = Path(tmp) / "mapping.toml"
        path.write_bytes(text)
        try:
            mapping = load_mapping(path)
        except MappingError as e:  # the temporary path means nothing to the uploader
            raise MappingError(str(e).replace(str(path), "mapping")) from None
    check_tenant(tenant_id, mapping)
    return mapping
