"""Streaming readers: a bulk file as a header and numbered rows, never the whole file in memory.

CSV: the encoding is UTF-8 (a BOM is dropped) when every byte of the file decodes as UTF-8,
otherwise Windows-1252, or Latin-1 for the few bytes Windows-1252 leaves undefined; checking the
whole file first (in chunks) keeps a cp1252 accent on row 90 000 from being misread. The
delimiter is the one of ``;``, ``,`` and tab the header line uses most. XLSX: openpyxl's
read-only mode, which parses the sheet's XML as it goes.

Row numbers are the spreadsheet's (the header is row 1 when it is the first line), so the
report points where the uploader looks.
"""

from __future__ import annotations

import codecs
import csv
import io
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from openpyxl import load_workbook
from openpyxl.utils.exceptions import InvalidFileException

from factura.ingest.bulk.mapping import Mapping
from factura.ingest.bulk.parse import Cell, is_blank

_CHUNK = 1 << 16
#: Bytes Windows-1252 leaves undefined; a file holding them is read as Latin-1.
_CP1252_HOLES = frozenset(b"\x81\x8d\x8f\x90\x9d")


class BulkFileError(ValueError):
    """The file as a whole cannot be read (format, encoding, header): nothing of it is loaded."""


class Table(Protocol):
    header: list[str]

    def rows(self) -> Iterator[tuple[int, list[Cell]]]:
        """Data rows after the header, numbered, blank rows left out."""
        ...

    def progress(self) -> tuple[int, int]:
        """(done, total) in the reader's own unit (bytes or rows), for a progress bar."""
        ...


def detect_encoding(path: Path) -> str:
    """``utf-8-sig`` (with or without BOM), else ``cp1252``, else ``latin-1``: one pass in chunks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    holes = False
    utf8 = True
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            holes = holes or not _CP1252_HOLES.isdisjoint(chunk)
            if utf8:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError:
                    utf8 = False
            if not utf8 and holes:
                break
    if utf8:
        try:
            decoder.decode(b"", final=True)
            return "utf-8-sig"
        except UnicodeDecodeError:
            pass
    return "latin-1" if holes else "cp1252"


def sniff_delimiter(line: str) -> str:
    """The delimiter the header uses most (headers hold no decimal commas); ``,`` on a tie."""
    counts = {d: line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


@dataclass
class CsvTable:
    header: list[str]
    _reader: Iterator[list[str]]
    _raw: BinaryIO
    _size: int
    _line: int
    _encoding: str

    def rows(self) -> Iterator[tuple[int, list[Cell]]]:
        """The rows; a file that turns unreadable raises :class:`BulkFileError` here, once the rows
        before it were handed over (the loader publishes those)."""
        try:
            for cells in self._reader:
                self._line += 1
                if any(not is_blank(c) for c in cells):
                    yield self._line, list(cells)
        except UnicodeDecodeError as e:
            raise BulkFileError(f"not {self._encoding} text: {e}") from e
        except csv.Error as e:
            raise BulkFileError(f"not a readable CSV file: {e}") from e

    def progress(self) -> tuple[int, int]:
        return self._raw.tell(), self._size


@dataclass
class XlsxTable:
    header: list[str]
    _rows: Iterator[tuple[Cell, ...]]
    _total: int
    _line: int

    def rows(self) -> Iterator[tuple[int, list[Cell]]]:
        """Rows padded to the header's width: a sheet leaves trailing empty cells out."""
        for cells in self._rows:
            self._line += 1
            if any(not is_blank(c) for c in cells):
                yield self._line, [*cells, *[None] * (len(self.header) - len(cells))]

    def progress(self) -> tuple[int, int]:
        return self._line, self._total


@contextmanager
def open_table(path: Path, mapping: Mapping) -> Iterator[Table]:
    """The file's table, by extension (``.xlsx``/``.xlsm`` or anything else as CSV)."""
    if path.suffix.lower() in {".xlsx", ".xlsm"}:
        with _open_xlsx(path, mapping.sheet) as table:
            yield table
    else:
        with _open_csv(path, mapping) as csv_table:
            yield csv_table


@contextmanager
def _open_csv(path: Path, mapping: Mapping) -> Iterator[CsvTable]:
    encoding = mapping.encoding or detect_encoding(path)
    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"  # a BOM is not part of the first column's name
    with path.open("rb") as raw:
        text = io.TextIOWrapper(raw, encoding=encoding, newline="")
        try:
            line = 0
            for first in text:
                line += 1
                if first.strip():
                    break
            else:
                raise BulkFileError("the file has no header line")
            delimiter = mapping.delimiter or sniff_delimiter(first)
            header = next(csv.reader([first], delimiter=delimiter), [])
            reader = csv.reader(text, delimiter=delimiter)
            yield CsvTable([h.strip() for h in header], reader, raw, path.stat().st_size, line, encoding)
        except UnicodeDecodeError as e:
            raise BulkFileError(f"not {encoding} text: {e}") from e
        except csv.Error as e:
            raise BulkFileError(f"not a readable CSV file: {e}") from e
        finally:
            text.detach()


@contextmanager
def _open_xlsx(path: Path, sheet: str | None) -> Iterator[XlsxTable]:
    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, OSError, KeyError, ValueError) as e:
        raise BulkFileError(f"not a readable XLSX file: {e}") from e
    try:
        if sheet is not None and sheet not in book.sheetnames:
            raise BulkFileError(f"no sheet {sheet!r}; the workbook has {', '.join(book.sheetnames)}")
        ws = book[sheet] if sheet is not None else book.worksheets[0]
        rows: Iterator[tuple[Cell, ...]] = ws.iter_rows(values_only=True)  # type: ignore[assignment]
        line = 0
        for cells in rows:
            line += 1
            if any(not is_blank(c) for c in cells):
                header = [str(c).strip() if c is not None else "" for c in cells]
                break
        else:
            raise BulkFileError("the sheet has no header row")
        yield XlsxTable(header, rows, ws.max_row or 0, line)
    finally:
        book.close()
