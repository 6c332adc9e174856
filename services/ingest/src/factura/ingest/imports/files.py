"""An import's files in S3, streamed both ways: ``<tenant>/imports/<id>/source.<csv|xlsx>`` and
``<tenant>/imports/<id>/report.csv``.

:class:`~factura.common.storage.DocumentStore` reads and writes whole objects (fine for PDFs); a
bulk file may be 200 MiB, so uploads go through S3 multipart uploads one part (``part_bytes``) at
a time and downloads are written to disk chunk by chunk. Outages surface as
:class:`~factura.common.errors.DependencyDown` ``("s3", ...)``, as in the document store.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from factura.common.settings import S3Settings
from factura.common.storage import CLIENT_CONFIG, MISSING_CODES, DocumentStore, error_code, outages, s3_session
from factura.ingest.imports.settings import MIB
from factura.ingest.imports.store import Format

log = logging.getLogger(__name__)
CHUNK = 1 * MIB
CONTENT_TYPES: dict[str, str] = {
    "csv": "text/csv",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
REPORT_TYPE = "text/csv; charset=utf-8"


def source_key(tenant_id: str, import_id: str, fmt: Format) -> str:
    return f"{tenant_id}/imports/{import_id}/source.{fmt}"


def report_key(tenant_id: str, import_id: str) -> str:
    return f"{tenant_id}/imports/{import_id}/report.csv"


class ObjectWriter:
    """Bytes written in any chunk size become one S3 object: a single PUT when they fit in one
    part, a multipart upload otherwise; at most ``part_bytes`` are held in memory."""

    def __init__(self, client: Any, bucket: str, key: str, *, content_type: str, part_bytes: int) -> None:
        self._s3, self._bucket, self.key = client, bucket, key
        self._type, self._part_bytes = content_type, part_bytes
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._stored = False

    async def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= self._part_bytes:
            part = bytes(self._buffer[: self._part_bytes])
            del self._buffer[: self._part_bytes]
            await self._upload_part(part)

    async def finish(self) -> None:
        """Store what was written."""
        if self._upload_id is None:
            with outages("put_object"):
                await self._s3.put_object(
                    Bucket=self._bucket, Key=self.key, Body=bytes(self._buffer), ContentType=self._type
                )
        else:
            if self._buffer:
                await self._upload_part(bytes(self._buffer))
            with outages("complete_multipart_upload"):
                await self._s3.complete_multipart_upload(
                    Bucket=self._bucket, Key=self.key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
                )
        self._buffer.clear()
        self._stored = True

    async def discard(self) -> None:
        """Best effort: abort the multipart upload, or delete the object if it was stored."""
        try:
            if self._stored:
                await self._s3.delete_object(Bucket=self._bucket, Key=self.key)
            elif self._upload_id is not None:
                await self._s3.abort_multipart_upload(Bucket=self._bucket, Key=self.key, UploadId=self._upload_id)
        except Exception as e:  # noqa: BLE001 - S3 may be what failed; a lifecycle rule can reap leftovers
            log.warning("could not discard %s: %s", self.key, e)

    async def _upload_part(self, part: bytes) -> None:
        if self._upload_id is None:
            with outages("create_multipart_upload"):
                started = await self._s3.create_multipart_upload(
                    Bucket=self._bucket, Key=self.key, ContentType=self._type
                )
            self._upload_id = str(started["UploadId"])
        number = len(self._parts) + 1
        with outages("upload_part"):
            answer = await self._s3.upload_part(
                Bucket=self._bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=part
            )
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})


class ImportFiles:
    def __init__(self, client: Any, bucket: str, *, part_bytes: int = 8 * MIB) -> None:
        self._s3 = client
        self.bucket = bucket
        self._part_bytes = part_bytes

    @classmethod
    async def connect(cls, settings: S3Settings, stack: AsyncExitStack, *, part_bytes: int = 8 * MIB) -> ImportFiles:
        client = await stack.enter_async_context(
            s3_session(settings).client("s3", endpoint_url=settings.endpoint_url, config=CLIENT_CONFIG)
        )
        return cls(client, settings.bucket, part_bytes=part_bytes)

    async def ensure_bucket(self) -> None:
        await DocumentStore(self._s3, self.bucket).ensure_bucket()

    def writer(self, key: str, *, content_type: str) -> ObjectWriter:
        return ObjectWriter(self._s3, self.bucket, key, content_type=content_type, part_bytes=self._part_bytes)

    async def upload(self, key: str, path: Path, *, content_type: str) -> None:
        """Store the file at ``path`` (replacing an object at ``key``), a part at a time."""
        writer = self.writer(key, content_type=content_type)
        try:
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    await writer.write(chunk)
            await writer.finish()
        except BaseException:
            await writer.discard()
            raise

    async def download(self, key: str, path: Path) -> None:
        """Write the object at ``key`` to ``path`` chunk by chunk."""
        with outages("get_object"):
            response = await self._s3.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"]
            async with body:  # entering it yields the bare HTTP response: iterate the body itself
                with path.open("wb") as f:
                    async for chunk in body.iter_chunks(CHUNK):
                        f.write(chunk)

    async def open(self, key: str) -> AsyncIterator[bytes] | None:
        """The object's bytes as they arrive, ``None`` if there is none. The request is made here, so
        an outage raises before any byte is handed on."""
        try:
            with outages("get_object"):
                response = await self._s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if error_code(e) in MISSING_CODES:
                return None
            raise
        return _chunks(response["Body"])


async def _chunks(body: Any) -> AsyncIterator[bytes]:
    async with body:
        with outages("get_object"):
            async for chunk in body.iter_chunks(CHUNK):
                yield chunk
