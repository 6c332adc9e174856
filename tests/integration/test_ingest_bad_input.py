"""Generated malformed ERP invoices on the real broker, among valid ones, with ingest running.

Every valid invoice becomes ``invoice.created``; every bad one an ``invoice.rejected`` naming the
field (see :class:`~tests.unit.test_ingest_properties.Bad`) and its raw bytes on
``erp.invoices.dlq``; all on one partition, so a poison message that stalled the loop would hold
back every message behind it, the last valid invoice included.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings

from factura.common.envelope import Envelope
from factura.common.events import InvoiceRejectedV1, parse_event
from factura.devstack.config import StackConfig
from tests.integration.test_ingest import ingest_running
from tests.kafka_helpers import read_topic
from tests.unit.test_ingest_properties import BAD_INPUT, BASE, Bad, bad_batches, to_json

pytestmark = pytest.mark.integration
BAD = 300
VALID = 60
#: Below the producer's 1 MiB request limit, so each record reaches the topic and its DLQ whole.
_LARGEST = 900_000


def malformed(count: int) -> list[Bad]:
    """``count`` distinct malformed records that must be rejected, the same every run."""
    drawn: list[Bad] = []

    @settings(BAD_INPUT, max_examples=count // 50)
    @given(batch=bad_batches(100))
    def collect(batch: list[Bad]) -> None:
        drawn.extend(batch)

    collect()
    distinct = {bad.raw: bad for bad in drawn if bad.fields and len(bad.raw) <= _LARGEST}
    assert len(distinct) >= count, f"only {len(distinct)} distinct records"
    return list(distinct.values())[:count]


def _offset(source: str) -> int:
    """``erp.invoices/<partition>/<offset>``: the offset."""
    return int(source.rsplit("/", 1)[1])


async def test_malformed_messages_are_rejected_and_dead_lettered_and_the_valid_ones_go_through(
    cfg: StackConfig,
) -> None:
    bads = malformed(BAD)
    run = uuid.uuid4().hex[:8]
    valid = [f"OK-{run}-{i}" for i in range(VALID)]
    # Valid invoices spread among the bad ones, and the last message valid.
    every = BAD // VALID
    sent: list[Bad | str] = []
    for i, number in enumerate(valid):
        sent += [*bads[i * every : (i + 1) * every], number]
    assert len(sent) == BAD + VALID and sent[-1] == valid[-1]

    async with ingest_running(cfg) as (settings_, publisher):
        topic = f"{settings_.topic_prefix}erp.invoices"
        for item in sent:  # one key, one partition: offsets are positions in ``sent``
            raw = item.raw if isinstance(item, Bad) else to_json(BASE | {"invoice_number": item}).encode()
            await publisher.send(topic, raw, key=b"harinas-sur/bad-input", headers=[])
        created = await read_topic(cfg.kafka_bootstrap, f"{settings_.topic_prefix}invoice.created", expect=VALID)
        rejected = await read_topic(cfg.kafka_bootstrap, f"{settings_.topic_prefix}invoice.rejected", expect=BAD)
        dead = await read_topic(cfg.kafka_bootstrap, f"{topic}.dlq", expect=BAD, timeout_s=60)

    assert sorted(e.invoice_id or "" for e in map(parse_event, [r.value or b"" for r in created])) == sorted(valid)

    rejections: dict[int, Envelope[Any]] = {}
    for record in rejected:
        event = parse_event(record.value or b"")
        assert isinstance(event.data, InvoiceRejectedV1)
        rejections[_offset(event.data.source_offset)] = event
    assert len(rejections) == len(rejected) == BAD
    for offset, item in enumerate(sent):
        if not isinstance(item, Bad):
            assert offset not in rejections, f"valid invoice {item} rejected: {rejections[offset].data.reasons}"
            continue
        reasons = rejections[offset].data.reasons
        assert reasons and all(r.field and r.message for r in reasons), (item, reasons)
        assert item.named_by(reasons), f"{item} rejected for {reasons}"

    letters = {_offset(dict(r.headers)["dlq.source"].decode()): r for r in dead}
    assert len(letters) == len(dead) == BAD
    for offset, record in letters.items():
        item = sent[offset]
        assert isinstance(item, Bad) and record.value == item.raw, f"offset {offset}: {item}"
        assert dict(record.headers)["dlq.reason"] == b"invalid"
