"""Receiving one ``POST /v1/imports`` form: each part checked as soon as it is complete, the file
sent on to S3 while it arrives (sniffed from its first bytes, hashed, capped).

Refusals are raised as they are found, so the route stops reading: :class:`FormError` (400),
``HTTPException`` 403 (tenant out of scope), 413 (too large) and 415 (not CSV or XLSX), and
:class:`~factura.ingest.bulk.mapping.MappingError` (422).
"""

import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from typing import Final

from fastapi import HTTPException

from factura.common.apikeys import Principal, require_tenant
from factura.common.envelope import TENANT_PATTERN
from factura.ingest.imports.files import CONTENT_TYPES, ImportFiles, ObjectWriter, source_key
from factura.ingest.imports.form import (
    SNIFF_BYTES,
    FormError,
    PartData,
    PartEnd,
    PartStart,
    boundary_of,
    clean_filename,
    form_events,
    parse_flag,
    read_mapping,
    sniff,
)
from factura.ingest.imports.settings import ImportSettings
from factura.ingest.imports.store import Format

FIELDS: Final = ("tenant_id", "mapping", "dry_run", "file")
#: Bytes a short field (tenant_id, dry_run) may have.
MAX_FIELD_BYTES: Final = 256
_TENANT = re.compile(TENANT_PATTERN)


class Source:
    """The file part on its way to S3: sniffed from its first bytes, hashed, capped."""

    def __init__(self, files: ImportFiles, tenant_id: str, import_id: str, filename: str, limit: int) -> None:
        self._files, self._tenant, self._id, self._limit = files, tenant_id, import_id, limit
        self.filename = filename
        self.size = 0
        self.format: Format | None = None
        self._sha = hashlib.sha256()
        self._head = bytearray()
        self.writer: ObjectWriter | None = None

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self._limit:
            raise HTTPException(413, detail=f"the file is larger than {self._limit} bytes")
        self._sha.update(data)
        if self.writer is not None:
            await self.writer.write(data)
            return
        self._head += data
        if len(self._head) >= SNIFF_BYTES:
            await self._start()

    async def finish(self) -> None:
        if self.size == 0:
            raise FormError("file: empty")
        if self.writer is None:
            await self._start()
        assert self.writer is not None
        await self.writer.finish()

    async def _start(self) -> None:
        self.format = sniff(bytes(self._head[:SNIFF_BYTES]))
        if self.format is None:
            raise HTTPException(415, detail="file: not a CSV or XLSX file")
        self.writer = self._files.writer(
            source_key(self._tenant, self._id, self.format), content_type=CONTENT_TYPES[self.format]
        )
        head, self._head = bytes(self._head), bytearray()
        await self.writer.write(head)


class Upload:
    """One POST's form, read part by part."""

    def __init__(self, files: ImportFiles, settings: ImportSettings, principal: Principal) -> None:
        self._files, self._settings, self._principal = files, settings, principal
        self.import_id = str(uuid.uuid4())
        self.fields: dict[str, bytes] = {}
        self.source: Source | None = None

    @property
    def tenant_id(self) -> str:
        return self.fields["tenant_id"].decode()

    @property
    def dry_run(self) -> bool:
        return (
            parse_flag("dry_run", self.fields["dry_run"].decode("utf-8", "replace"))
            if "dry_run" in self.fields
            else False
        )

    @property
    def mapping(self) -> bytes | None:
        return self.fields.get("mapping")

    async def receive(self, content_type: str, chunks: AsyncIterator[bytes]) -> None:
        try:
            boundary_of(content_type)
        except FormError as e:
            raise HTTPException(415, detail=str(e)) from e
        name: str | None = None
        seen: set[str] = set()
        async for event in form_events(content_type, chunks):
            if isinstance(event, PartStart):
                name = event.name
                if name not in FIELDS:
                    raise FormError(f"{name[:50]}: unknown field; the form has {', '.join(FIELDS)}")
                if name in seen:
                    raise FormError(f"{name}: given more than once")
                seen.add(name)
                if name == "file":
                    if "tenant_id" not in self.fields:
                        raise FormError("tenant_id: missing before file")
                    self.source = Source(
                        self._files,
                        self.tenant_id,
                        self.import_id,
                        clean_filename(event.filename),
                        self._settings.max_upload_bytes,
                    )
                else:
                    self.fields[name] = b""
            elif isinstance(event, PartData):
                await self._data(name, event.data)
            elif isinstance(event, PartEnd):
                await self._end(name)
                name = None
        for required in ("tenant_id", "file"):
            if required not in seen:
                raise FormError(f"{required}: missing")

    async def _data(self, name: str | None, data: bytes) -> None:
        if name == "file":
            assert self.source is not None
            await self.source.write(data)
            return
        assert name is not None
        value = self.fields[name] + data
        if name == "mapping" and len(value) > self._settings.max_mapping_bytes:
            raise HTTPException(413, detail=f"mapping: larger than {self._settings.max_mapping_bytes} bytes")
        if name != "mapping" and len(value) > MAX_FIELD_BYTES:
            raise FormError(f"{name}: longer than {MAX_FIELD_BYTES} bytes")
        self.fields[name] = value

    async def _end(self, name: str | None) -> None:
        """Check a part as soon as it is complete, so a bad field stops the upload before the file."""
        if name == "file":
            assert self.source is not None
            await self.source.finish()
        elif name == "tenant_id":
            tenant = self.fields[name].decode("utf-8", "replace")
            if not _TENANT.fullmatch(tenant):
                raise FormError(f"tenant_id: {tenant[:70]!r} does not match {TENANT_PATTERN}")
            require_tenant(self._principal, tenant)
            if self.mapping is not None:  # it came first: check it now
                read_mapping(self.mapping, tenant)
        elif name == "dry_run":
            parse_flag(name, self.fields[name].decode("utf-8", "replace"))
        elif name == "mapping" and "tenant_id" in self.fields:
            read_mapping(self.fields[name], self.tenant_id)

    async def discard(self) -> None:
        if self.source is not None and self.source.writer is not None:
            await self.source.writer.discard()
