"""What the consumer loop treats as poison (DLQ) rather than a transient error.

ERP topics are not decoded by the loop: ingest owns the ERP contract and reads the bytes itself
(its cases are in ``test_ingest_decode.py``).
"""

from __future__ import annotations

import pytest

from factura.common.envelope import Envelope
from factura.common.errors import InvalidMessage
from factura.common.kafka.consumer import decode
from factura.common.schemas import EXAMPLES_DIR
from factura.common.topics import ERP_INVOICES, ERP_PAYMENTS, INVOICE_CREATED


@pytest.mark.parametrize("raw", [b"\xff\xfe not utf8", b"[" * 100_000, b'{"tenant_id": "t1"}'])
def test_erp_topics_reach_the_handler_as_raw_bytes(raw: bytes) -> None:
    assert decode(ERP_INVOICES, raw) == raw
    assert decode(ERP_PAYMENTS, raw) == raw


def test_schema_invalid_envelope_names_the_field() -> None:
    with pytest.raises(InvalidMessage) as info:
        decode(INVOICE_CREATED, b'{"event_id": "nope"}')
    fields = {r.field for r in info.value.reasons}
    assert "event_id" in fields and "tenant_id" in fields


def test_valid_envelope() -> None:
    value = decode(INVOICE_CREATED, (EXAMPLES_DIR / "invoice.created.v1.json").read_bytes())
    assert isinstance(value, Envelope)
