"""An invoice in flight at every one of several render-worker deaths is rejected, not retried for ever.

The pool and the stores are fakes here; the real pool's replacement after a SIGKILL is covered by
``tests/integration/test_render_pool.py``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, cast

import pytest

from factura.common.envelope import Envelope, make_event
from factura.common.events import InvoiceCreatedV1
from factura.common.kafka.consumer import Message
from factura.common.kafka.producer import Publisher
from factura.common.schemas import EXAMPLES_DIR
from factura.common.storage import DocumentStore
from factura.common.tenants import TenantDirectory
from factura.common.topics import INVOICE_CREATED
from factura.renderer.handlers import RenderHandlers
from factura.renderer.pool import RenderPool, WorkerDied
from factura.renderer.settings import RenderLimits

EXAMPLE = json.loads((EXAMPLES_DIR / "invoice.created.v1.json").read_text(encoding="utf-8"))


class DyingPool:
    """Every render ends with the worker's death, as a poison invoice would make it."""

    def __init__(self) -> None:
        self.calls = 0

    async def run(self, *_: Any) -> Any:
        self.calls += 1
        raise WorkerDied


class NoRecords:
    async def get_if_exists(self, key: str) -> bytes | None:
        return None


class Events:
    def __init__(self) -> None:
        self.published: list[Envelope[Any]] = []

    async def publish(self, event: Envelope[Any]) -> None:
        self.published.append(event)


def message() -> Message[Envelope[InvoiceCreatedV1]]:
    data = InvoiceCreatedV1.model_validate(EXAMPLE["data"] | {"invoice_number": f"P-{uuid.uuid4().hex[:6]}"})
    event = make_event(
        event_id=uuid.uuid4(),
        type="invoice.created",
        schema_version=1,
        data=data,
        tenant_id="harinas-sur",
        invoice_id=data.invoice_number,
        correlation_id="c",
        causation_id=None,
        producer="ingest",
    )
    return Message(INVOICE_CREATED, 0, 1, None, {}, b"", event)


async def test_rejected_after_max_worker_crashes_each_earlier_death_is_transient() -> None:
    pool, events = DyingPool(), Events()
    handlers = RenderHandlers(
        cast(Publisher, events),
        cast(DocumentStore, NoRecords()),
        TenantDirectory(None),
        cast(RenderPool, pool),
        RenderLimits(max_worker_crashes=3),
    )
    poison = message()
    for _ in range(2):
        with pytest.raises(WorkerDied):
            await handlers.on_invoice_created(poison)
    assert events.published == []
    await handlers.on_invoice_created(poison)
    [rejected] = events.published
    assert rejected.type == "invoice.rejected" and pool.calls == 3
    [reason] = rejected.data.reasons
    assert reason.field == "$" and "render worker died on each of 3 attempts" in reason.message
