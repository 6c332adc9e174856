"""The HTTP door under malformed invoices: a documented 4xx or a per-item answer naming the field, never a 500.

One record per request: 202; or 422 with every field error (and ``invoice.rejected`` published);
or 400 for a body that is no JSON object (or holds text that is not Unicode), naming the field
where there is one; or 413 past the cap. A batch mixing valid invoices with malformed ones that
are JSON themselves: each valid one accepted, each bad one its own errors, in order; a batch that is
not JSON as a whole is refused whole. The records come from :func:`bad_invoices` and count toward
issue 10's 10 000 (``QUOTAS["api"]``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, cast

import httpx
import pytest
from hypothesis import given, settings

from factura.common.apikeys import authenticator
from factura.common.erp import MAX_MESSAGE_BYTES
from factura.common.events import FieldError, InvoiceRejectedV1
from factura.common.http import Health, create_app
from factura.common.tenants import TenantDirectory
from factura.ingest.api import router
from factura.ingest.handlers import Intake
from factura.ingest.versions import IdempotencyStore, InvoiceVersions
from tests.unit.test_ingest_api import ADMIN, AdminKeys, Memory
from tests.unit.test_ingest_handlers import NoHistory, Recorder
from tests.unit.test_ingest_properties import (
    BAD_INPUT,
    BASE,
    EMBEDDABLE_KINDS,
    KINDS,
    QUOTAS,
    STALL_S,
    Bad,
    Tally,
    bad_batches,
    bad_invoices,
    is_json_text,
    judge,
    to_json,
)

SINGLES = 1_000
BATCH_BAD = 20
#: Where the valid invoices go among a batch's malformed ones: first, last and between.
VALID_AT: Final = (0, 3, 9, 10, 17, BATCH_BAD)
#: Unique valid invoices across the whole run, so none is a duplicate of an earlier one.
_numbers = itertools.count()


class IngestApi:
    """The ingest router with in-memory versions and idempotency and a recording publisher, built once:
    building a FastAPI app costs more than a hundred requests."""

    def __init__(self) -> None:
        self.recorder, memory = Recorder(), Memory()
        intake = Intake(
            self.recorder, TenantDirectory(None), NoHistory(), allow_test_email_domains=True, versions=memory
        )
        routes = router(
            intake, cast(InvoiceVersions, memory), cast(IdempotencyStore, memory), auth=authenticator(AdminKeys())
        )
        self.app = create_app("ingest", Health(), [routes])

    @asynccontextmanager
    async def client(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client for this event loop, the recorder emptied."""
        self.recorder.events.clear()
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield client


async def _post(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    started = time.monotonic()
    response = await asyncio.wait_for(client.post("/v1/invoices", content=body, headers=ADMIN), STALL_S)
    took = time.monotonic() - started
    assert took < STALL_S, f"{took:.1f} s for {len(body)} bytes"
    return response


def _judge_single(bad: Bad, response: httpx.Response, recorder: Recorder) -> None:
    status, events = response.status_code, recorder.events
    assert status in {202, 400, 413, 422}, (bad, status, response.text)
    if status in {400, 413}:
        assert bad.fields, f"refused whole, though the record may be accepted: {bad}"
        assert status == 400 or len(bad.raw) > MAX_MESSAGE_BYTES, bad
        detail = response.json()["detail"]
        assert "$" in bad.fields or any(f in detail for f in bad.fields), (bad, detail)
        assert events == [], "a body refused whole is no record: nothing is published"
        return
    body = response.json()
    errors = [FieldError.model_validate(e) for e in body["errors"]] if status == 422 else None
    assert "$" not in bad.fields, f"{bad} answered {status}: a body that is no JSON object is a 400"
    judge(bad, errors, events)
    assert body["event_id"] == str(events[0].event_id)


async def _singles(api: IngestApi, batch: list[Bad], tally: Tally) -> None:
    async with api.client() as client:
        for bad in batch:
            api.recorder.events.clear()
            response = await _post(client, bad.raw)
            _judge_single(bad, response, api.recorder)
            tally.add(bad.kind, bad.raw, rejected=response.status_code != 202)


def test_malformed_single_invoices_get_a_documented_answer_naming_the_field() -> None:
    tally, api = Tally(), IngestApi()

    @settings(BAD_INPUT, max_examples=SINGLES // 20)
    @given(batch=bad_batches(20))
    def run(batch: list[Bad]) -> None:
        asyncio.run(_singles(api, batch, tally))

    @settings(BAD_INPUT, max_examples=2)
    @given(bad=bad_invoices(kinds={"ten_mb"}))
    def ten_mb(bad: Bad) -> None:
        asyncio.run(_singles(api, [bad], tally))

    run()
    ten_mb()
    tally.check(SINGLES, KINDS)


def _valid() -> tuple[str, bytes]:
    number = f"OK-{next(_numbers)}"
    return number, to_json(BASE | {"invoice_number": number}).encode()


def _batch(bads: list[Bad], valid_at: Sequence[int]) -> tuple[list[Bad | str], bytes]:
    """The items in order (a bad record, or the number of a valid invoice) and the request body."""
    items: list[Bad | str] = list(bads)
    texts = [bad.raw for bad in bads]
    for at in sorted(valid_at, reverse=True):
        number, raw = _valid()
        items.insert(at, number)
        texts.insert(at, raw)
    return items, b'{"invoices": [' + b", ".join(texts) + b"]}"


def _judge_batch(items: list[Bad | str], response: httpx.Response, recorder: Recorder) -> None:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    results = body["results"]
    assert [r["index"] for r in results] == list(range(len(items)))
    assert len(recorder.events) == len(items), "one event per item"
    # Equal items get equal event ids (the id is derived from the content), so one event stands for both.
    events = {str(e.event_id): e for e in recorder.events}
    for item, result in zip(items, results, strict=True):
        event = events[result["event_id"]]
        if isinstance(item, str):
            assert (result["status"], event.type, event.invoice_id) == ("accepted", "invoice.created", item), result
            continue
        if result["status"] == "rejected":
            errors = [FieldError.model_validate(e) for e in result["errors"]]
            assert isinstance(event.data, InvoiceRejectedV1) and event.data.reasons == errors
            judge(item, errors, [event])
        else:
            judge(item, None, [event])
    assert body["rejected"] == sum(r["status"] == "rejected" for r in results)


async def _batches(api: IngestApi, bads: list[Bad], valid_at: Sequence[int], tally: Tally) -> None:
    items, body = _batch(bads, valid_at)
    async with api.client() as client:
        response = await _post(client, body)
    _judge_batch(items, response, api.recorder)
    for bad, result in zip(items, response.json()["results"], strict=True):
        if isinstance(bad, Bad):
            tally.add(bad.kind, bad.raw, rejected=result["status"] == "rejected")


def test_a_batch_answers_each_malformed_item_and_the_valid_ones_go_through() -> None:
    tally, api = Tally(), IngestApi()
    batches = (QUOTAS["api"] - SINGLES) // BATCH_BAD

    @settings(BAD_INPUT, max_examples=batches)
    @given(bads=bad_batches(BATCH_BAD, embeddable=True))  # one argument: with two, hypothesis repeats records
    def run(bads: list[Bad]) -> None:
        asyncio.run(_batches(api, bads, VALID_AT, tally))

    run()
    tally.check(QUOTAS["api"] - SINGLES, EMBEDDABLE_KINDS)


#: Kinds whose records are not JSON text: inside a batch, they make the whole body unreadable.
_NOT_JSON = {"bad_bytes", "long_int", "truncated", "garbage", "reencoded"}


@pytest.fixture(scope="module")
def broken_api() -> IngestApi:
    return IngestApi()


@settings(BAD_INPUT, max_examples=100)
@given(bad=bad_invoices(kinds=_NOT_JSON).filter(lambda bad: not is_json_text(bad)))
def test_a_batch_that_is_not_json_as_a_whole_is_refused_whole(broken_api: IngestApi, bad: Bad) -> None:
    """Broken bytes or a cut item make the body itself unreadable: a 400, never a 500, nothing published."""
    _, body = _batch([bad], [0, 1])

    async def post() -> httpx.Response:
        async with broken_api.client() as client:
            return await _post(client, body)

    response = asyncio.run(post())
    assert response.status_code == 400, (bad, response.status_code, response.text)
    assert broken_api.recorder.events == [], "nothing of a batch refused whole is published"
