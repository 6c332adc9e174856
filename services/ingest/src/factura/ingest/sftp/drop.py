"""One dropped file, taken from a tenant's inbox to ``processed/`` or ``failed/``.

Independent of SSH: the server and the inbox scanner only say "this file is complete".

* ``.csv``/``.xlsx`` go through the bulk loader with the tenant's mapping; the per-row report
  goes beside the file. Any rejected row sends the file to ``failed/`` (its valid invoices are
  published all the same, as for an upload).
* ``.pdf``/``.zip``/``.xml`` are stored as the tenant's documents; ``<name>.ref.json`` beside
  the file names the S3 key to put in the invoice.
* Anything else, and any problem of the file's own, goes to ``failed/`` with ``<name>.error.txt``.

A dependency outage (broker, S3) is not the file's problem: the file stays in the inbox and is
taken again by a later scan. That is safe because processing is idempotent: a re-run publishes
the same invoices again, and ingest recognises them as duplicates by content.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from factura.common.envelope import utcnow
from factura.common.errors import ErrorKind, InvalidMessage, classify
from factura.common.kafka.producer import Headers
from factura.common.metrics import counter
from factura.ingest.bulk.load import Sender, load
from factura.ingest.bulk.mapping import DEFAULT_MAPPING, Mapping, MappingError, load_mapping
from factura.ingest.bulk.report import ReportWriter
from factura.ingest.sftp.layout import FAILED, PROCESSED, Layout

BULK_SUFFIXES = frozenset({".csv", ".xlsx"})
DOCUMENT_SUFFIXES = frozenset({".pdf", ".zip", ".xml"})
#: An unexpected error (a bug, or a file that trips one) is retried this often before the file is failed.
MAX_BUG_ATTEMPTS = 3
MAPPING_FILE = "mapping.toml"
FILES = counter(
    "sftp_files_total",
    "Files taken from SFTP inboxes, by outcome (deferred: a dependency is down, the file waits in the inbox).",
    ("outcome",),
)
log = logging.getLogger(__name__)


class Outcome(StrEnum):
    PROCESSED = "processed"
    FAILED = "failed"
    DEFERRED = "deferred"
    GONE = "gone"


class StoredLike(Protocol):
    """What the drop reads of ``documents.StoredDocument``."""

    @property
    def s3_key(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def content_type(self) -> str: ...


#: ``(tenant_id, filename, data) -> stored document``: ``documents.store_document`` bound to a store.
DocumentSink = Callable[[str, str, bytes], Awaitable[StoredLike]]


class FileProblem(Exception):
    """The file itself cannot be ingested (its type, its content); the message is for the tenant."""


class BoundedSender:
    """A sender whose every send gives up after ``timeout_s``: a broker that hangs becomes a retried outage.

    A send given up on may still reach the broker later; ingest deduplicates it like any re-run.
    """

    def __init__(self, sender: Sender, timeout_s: float) -> None:
        self._sender, self._timeout_s = sender, timeout_s

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Headers) -> None:
        async with asyncio.timeout(self._timeout_s):
            await self._sender.send(topic, value, key=key, headers=headers)


class Drop:
    def __init__(
        self,
        layout: Layout,
        *,
        sender: Sender,
        topic: str,
        documents: DocumentSink,
        max_document_bytes: int,
        mappings_dir: Path | None = None,
        allow_test_domains: bool = False,
    ) -> None:
        self.layout, self.sender, self.topic, self.documents = layout, sender, topic, documents
        self.max_document_bytes, self.mappings_dir = max_document_bytes, mappings_dir
        self.allow_test_domains = allow_test_domains
        self._bug_attempts: dict[Path, int] = {}

    async def process(self, tenant_id: str, path: Path) -> Outcome:
        """Ingest ``path`` (a file in ``tenant_id``'s inbox) and move it where it belongs.

        Raises only what moving the file raises (the disk); the file then stays in the inbox.
        """
        if not _present(path):
            return Outcome.GONE  # taken already, or removed by the tenant
        self.layout.ensure(tenant_id)
        sidecars: dict[str, Path] = {}
        try:
            outcome = await self._process(tenant_id, path, sidecars)
        finally:
            _discard(sidecars)  # what was not moved beside the file (deferred, cancelled)
        if outcome is not Outcome.DEFERRED:
            self._bug_attempts.pop(path, None)
        return self._count(outcome)

    async def _process(self, tenant_id: str, path: Path, sidecars: dict[str, Path]) -> Outcome:
        try:
            error = await self._ingest(tenant_id, path, sidecars)
        except FileNotFoundError:
            return Outcome.GONE
        except Exception as e:  # noqa: BLE001 - outages wait, bugs are retried, then failed
            if classify(e)[0] is ErrorKind.TRANSIENT:
                log.warning("dependency down; the file waits in the inbox", extra=_where(tenant_id, path, e))
                return Outcome.DEFERRED
            error = self._unexpected(tenant_id, path, e)
            if error is None:
                return Outcome.DEFERRED
        if error is not None:
            sidecars[".error.txt"] = self._write(f"{error}\n".encode())
        folder = FAILED if error is not None else PROCESSED
        moved = self._move(path, self.layout.tenant_dir(tenant_id) / folder, sidecars)
        log.info("dropped file %s", folder, extra={"tenant_id": tenant_id, "file": path.name, "to": moved.name})
        return Outcome.FAILED if error is not None else Outcome.PROCESSED

    async def _ingest(self, tenant_id: str, path: Path, sidecars: dict[str, Path]) -> str | None:
        """Ingest the file; returns why it failed (``None``: processed). Sidecars land in ``sidecars``."""
        suffix = path.suffix.lower()
        try:
            if suffix in BULK_SUFFIXES:
                return await self._bulk(tenant_id, path, sidecars)
            if suffix in DOCUMENT_SUFFIXES:
                await self._document(tenant_id, path, sidecars)
                return None
            raise FileProblem(
                f"files of type {suffix or '(none)'} are not ingested: drop invoices as "
                f"{', '.join(sorted(BULK_SUFFIXES))} and documents as {', '.join(sorted(DOCUMENT_SUFFIXES))}"
            )
        except (FileProblem, InvalidMessage, ValueError) as e:  # ValueError: MappingError, BulkFileError, ...
            return f"{path.name}: {e}"

    async def _bulk(self, tenant_id: str, path: Path, sidecars: dict[str, Path]) -> str | None:
        mapping = self._mapping(tenant_id)
        report = sidecars[".report.csv"] = self._work_file()
        with report.open("w", encoding="utf-8-sig", newline="") as out:
            writer = ReportWriter(out)
            summary = await load(
                path,
                tenant_id=tenant_id,
                mapping=mapping,
                sender=self.sender,
                topic=self.topic,
                report=writer.write,
                allow_test_domains=self.allow_test_domains,
            )
        if not summary.rejected:
            return None
        return (
            f"{path.name}: {summary.rejected} of {summary.invoices} invoices rejected "
            f"({summary.problems} problems, row by row in the .report.csv beside this file); "
            f"the other {summary.published} were published. Drop the corrected file again: "
            "invoices already accepted are recognised as duplicates."
        )

    async def _document(self, tenant_id: str, path: Path, sidecars: dict[str, Path]) -> None:
        data = await asyncio.to_thread(_read, path, self.max_document_bytes)
        stored = await self.documents(tenant_id, path.name, data)
        ref = {
            "s3_key": stored.s3_key,
            "sha256": stored.sha256,
            "size": stored.size,
            "content_type": stored.content_type,
        }
        sidecars[".ref.json"] = self._write(json.dumps(ref, indent=2).encode())

    def _mapping(self, tenant_id: str) -> Mapping:
        """The tenant's mapping: its folder's ``mapping.toml``, else ``<mappings_dir>/<tenant>.toml``, else default."""
        candidates = [self.layout.tenant_dir(tenant_id) / MAPPING_FILE]
        if self.mappings_dir is not None:
            candidates.append(self.mappings_dir / f"{tenant_id}.toml")
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            return DEFAULT_MAPPING
        try:
            return load_mapping(found)
        except MappingError as e:  # named by its file name: the server's paths are not the tenant's business
            raise FileProblem(f"the column mapping {found.name} is invalid: {str(e).removeprefix(f'{found}: ')}") from e

    def _unexpected(self, tenant_id: str, path: Path, error: Exception) -> str | None:
        """A bug: retried by later scans, then failed with a reason that leaks no internals."""
        attempts = self._bug_attempts[path] = self._bug_attempts.get(path, 0) + 1
        log.exception("unexpected error ingesting a dropped file", extra=_where(tenant_id, path, error))
        if attempts < MAX_BUG_ATTEMPTS:
            return None
        return f"{path.name}: internal error while ingesting the file; the operators have the details in the logs"

    def _move(self, path: Path, folder: Path, sidecars: dict[str, Path]) -> Path:
        """Sidecars first, then the file: a crash in between leaves the file in the inbox to be redone."""
        target = _free_name(folder, path.name, tuple(sidecars))
        for suffix, written in list(sidecars.items()):
            os.replace(written, folder / f"{target.name}{suffix}")
            del sidecars[suffix]
        os.rename(path, target)
        return target

    def _work_file(self) -> Path:
        return self.layout.work / f"{uuid.uuid4().hex}.tmp"

    def _write(self, data: bytes) -> Path:
        work = self._work_file()
        work.write_bytes(data)
        return work

    @staticmethod
    def _count(outcome: Outcome) -> Outcome:
        FILES.labels(outcome=outcome.value).inc()
        return outcome


def _free_name(folder: Path, name: str, sidecar_suffixes: tuple[str, ...]) -> Path:
    """``folder/name``, or with a UTC timestamp before its extension if that (or a sidecar of it) is taken."""
    target = folder / name
    stem, dot, extension = name.rpartition(".")
    if not dot:
        stem, extension = name, ""
    while any(p.exists() for p in (target, *(folder / f"{target.name}{s}" for s in sidecar_suffixes))):
        stamp = utcnow().strftime("%Y%m%dT%H%M%S%fZ")
        target = folder / (f"{stem}.{stamp}.{extension}" if dot else f"{stem}.{stamp}")
    return target


def _present(path: Path) -> bool:
    return path.is_file()


def _read(path: Path, max_bytes: int) -> bytes:
    """The document's bytes; refused by its size before it sits in memory."""
    if (size := path.stat().st_size) > max_bytes:
        raise FileProblem(f"{size} bytes; documents of at most {max_bytes} bytes are accepted")
    return path.read_bytes()


def _discard(sidecars: dict[str, Path]) -> None:
    for written in sidecars.values():
        with suppress(FileNotFoundError):
            written.unlink()


def _where(tenant_id: str, path: Path, error: Exception) -> dict[str, str]:
    return {"tenant_id": tenant_id, "file": path.name, "error": type(error).__name__}
