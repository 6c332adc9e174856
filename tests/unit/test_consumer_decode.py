"""What the consumer loop treats as poison (DLQ) rather than a transient error."""

from __future__ import annotations

import pytest

from factura.common.envelope import Envelope
from factura.common.errors import InvalidMessage
from factura.common.kafka.consumer import decode
from factura.common.schemas import EXAMPLES_DIR
from factura.common.topics import ERP_INVOICES, INVOICE_CREATED


@pytest.mark.parametrize("raw", [b"\xff\xfe not utf8", b"{not json", b"[1, 2]", b"42"])
def test_undecodable_raw_erp_message(raw: bytes) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode(ERP_INVOICES, raw)
    assert info.value.reasons[0].field == "$"


def test_erp_message_is_a_dict() -> None:
    assert decode(ERP_INVOICES, b'{"tenant_id": "t1"}') == {"tenant_id": "t1"}


def test_schema_invalid_envelope_names_the_field() -> None:
    with pytest.raises(InvalidMessage) as info:
        decode(INVOICE_CREATED, b'{"event_id": "nope"}')
    fields = {r.field for r in info.value.reasons}
    assert "event_id" in fields and "tenant_id" in fields


def test_valid_envelope() -> None:
    value = decode(INVOICE_CREATED, (EXAMPLES_DIR / "invoice.created.v1.json").read_bytes())
    assert isinstance(value, Envelope)
