"""Packaging: the PDF alone, or one zip of PDF + XML + annexes (as DIAN in Colombia requires).

Zip entries carry a fixed timestamp (the invoice's issue date) so the same inputs always give
the same bytes and the same hash.
"""

from __future__ import annotations

import io
import zipfile
from datetime import date


def build_zip(entries: list[tuple[str, bytes]], stamp: date) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        seen: set[str] = set()
        for name, body in entries:
            unique = name
            n = 1
            while unique in seen:  # two annexes with one file name must not overwrite each other
                n += 1
                stem, dot, ext = name.rpartition(".")
                unique = f"{stem}-{n}.{ext}" if dot else f"{name}-{n}"
            seen.add(unique)
            info = zipfile.ZipInfo(unique, date_time=(stamp.year, stamp.month, stamp.day, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, body)
    return buffer.getvalue()
