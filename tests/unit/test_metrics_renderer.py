"""The renderer counts each invoice it is done with, and times each render, by engine."""

from __future__ import annotations

from typing import Any, cast

from prometheus_client import REGISTRY

from factura.common.events import FieldError
from factura.common.kafka.producer import Publisher
from factura.common.storage import DocumentStore
from factura.common.tenants import TenantDirectory
from factura.renderer.handlers import RenderHandlers
from factura.renderer.limits import DocumentRejected
from factura.renderer.pipeline import ENGINE, Produced
from factura.renderer.pool import RenderPool
from factura.renderer.settings import RenderLimits
from tests.unit.test_render_worker_deaths import Events, message


class Pool:
    """Renders instantly (a made-up PDF, 0.2 s of worker time), or refuses the invoice."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse

    async def run(self, *_: Any) -> Produced:
        if self.refuse:
            raise DocumentRejected([FieldError(field="lines", message="too many")])
        return Produced(b"%PDF-1.7 made up", None, 1, seconds=0.2)


class Store:
    bucket = "documents"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def get_if_exists(self, key: str) -> bytes | None:
        return self.objects.get(key)

    async def put(self, key: str, body: bytes, **_: Any) -> None:
        self.objects[key] = body


def handlers(pool: Pool) -> RenderHandlers:
    return RenderHandlers(
        cast(Publisher, Events()),
        cast(DocumentStore, Store()),
        TenantDirectory(None),
        cast(RenderPool, pool),
        RenderLimits(),
    )


def rendered(outcome: str) -> float:
    value = REGISTRY.get_sample_value("factura_invoices_rendered_total", {"outcome": outcome})
    assert value is not None, f"{outcome} is not exposed"
    return value


def render_seconds(suffix: str) -> float:
    return REGISTRY.get_sample_value(f"factura_render_seconds_{suffix}", {"engine": ENGINE}) or 0.0


async def test_a_render_is_counted_and_timed_with_the_workers_time() -> None:
    subject = handlers(Pool())
    for outcome in ("rendered", "supplied", "rejected"):
        rendered(outcome)
    before, count, total = rendered("rendered"), render_seconds("count"), render_seconds("sum")
    await subject.on_invoice_created(message())
    assert rendered("rendered") == before + 1
    assert render_seconds("count") == count + 1
    assert abs(render_seconds("sum") - total - 0.2) < 1e-9


async def test_a_redelivered_render_is_not_counted_again() -> None:
    subject, again = handlers(Pool()), message()
    await subject.on_invoice_created(again)
    before = rendered("rendered")
    await subject.on_invoice_created(again)  # finds its manifest: re-published, not rendered again
    assert rendered("rendered") == before


async def test_a_refused_invoice_is_counted_rejected() -> None:
    before = rendered("rejected")
    await handlers(Pool(refuse=True)).on_invoice_created(message())
    assert rendered("rejected") == before + 1
