"""The SFTP drop as one of ingest's background tasks: the server and the inbox scanner."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from functools import partial

from factura.common.runtime import BackgroundTask
from factura.common.storage import DocumentStore
from factura.ingest.bulk.load import Sender
from factura.ingest.documents import DEFAULT_MAX_BYTES, store_document
from factura.ingest.sftp.drop import BoundedSender, Drop
from factura.ingest.sftp.inbox import Inbox
from factura.ingest.sftp.keys import host_key
from factura.ingest.sftp.layout import Layout
from factura.ingest.sftp.server import listen
from factura.ingest.sftp.settings import SftpSettings


def sftp_task(
    settings: SftpSettings,
    *,
    sender: Sender,
    topic: str,
    store: DocumentStore,
    allow_test_domains: bool = False,
    max_document_bytes: int = DEFAULT_MAX_BYTES,
) -> BackgroundTask:
    """The drop, ready to run until ``stopping`` is set: bulk files are published to ``topic``
    (``erp.invoices``, physical name) through ``sender``, documents stored in ``store``.

    Reads the host key here, so a missing key stops the service at startup, not later.
    """
    key = host_key(settings)
    layout = Layout.at(settings.root)
    drop = Drop(
        layout,
        sender=BoundedSender(sender, settings.publish_timeout_s),
        topic=topic,
        documents=partial(store_document, store, max_bytes=max_document_bytes),
        max_document_bytes=max_document_bytes,
        mappings_dir=settings.mappings_dir,
        allow_test_domains=allow_test_domains,
    )
    inbox = Inbox(drop, layout, scan_interval_s=settings.scan_interval_s)

    async def run(stopping: asyncio.Event) -> None:
        layout.work.mkdir(exist_ok=True)
        for leftover in layout.work.iterdir():  # reports of a run that died mid-file; its file is redone
            with suppress(FileNotFoundError):
                leftover.unlink()
        acceptor = await listen(settings, host_key=key, layout=layout, inbox=inbox)
        try:
            await inbox.run(stopping)
        finally:
            acceptor.close()
            await acceptor.wait_closed()

    return run
