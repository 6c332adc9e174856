"""The envelope and the event registry: parsing, versions, deterministic ids."""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import ValidationError

from factura.common.envelope import child_of, derived_event_id
from factura.common.events import CURRENT_VERSION, EVENT_MODELS, InvoiceCreatedV1, UnknownEventType, parse_event
from factura.common.schemas import EXAMPLES_DIR
from factura.common.topics import REGISTRY, all_physical_names, topic_for_event


def example(name: str) -> bytes:
    return (EXAMPLES_DIR / f"{name}.json").read_bytes()


def test_parse_gives_typed_data() -> None:
    event = parse_event(example("invoice.created.v1"))
    assert isinstance(event.data, InvoiceCreatedV1)
    assert event.data.customer.locale == "es"
    assert event.occurred_at.utcoffset() is not None


def test_round_trip_is_lossless() -> None:
    event = parse_event(example("delivery.failed.v1"))
    assert parse_event(event.model_dump_json()) == event


def test_unknown_type_or_version_is_refused() -> None:
    raw = json.loads(example("invoice.created.v1"))
    with pytest.raises(UnknownEventType):
        parse_event(json.dumps(raw | {"schema_version": 99}))
    with pytest.raises(UnknownEventType):
        parse_event(json.dumps(raw | {"type": "invoice.exploded"}))


def test_data_is_validated_against_its_model() -> None:
    raw = json.loads(example("invoice.created.v1"))
    raw["data"]["currency"] = "euro"
    with pytest.raises(ValidationError) as info:
        parse_event(json.dumps(raw))
    assert "currency" in str(info.value)


def test_naive_timestamp_is_refused() -> None:
    raw = json.loads(example("payment.received.v1"))
    raw["occurred_at"] = "2026-11-02T08:15:00"
    with pytest.raises(ValidationError):
        parse_event(json.dumps(raw))


def test_child_event_id_is_deterministic_and_inherits_the_flow() -> None:
    created = parse_event(example("invoice.created.v1"))
    a = child_of(created, type="invoice.created", schema_version=1, data=created.data, producer="x")
    b = child_of(created, type="invoice.created", schema_version=1, data=created.data, producer="x")
    c = child_of(created, type="invoice.created", schema_version=1, data=created.data, producer="y")
    assert a.event_id == b.event_id != c.event_id
    assert a.causation_id == created.event_id
    assert a.correlation_id == created.correlation_id
    assert a.tenant_id == created.tenant_id
    assert derived_event_id(uuid.UUID(int=1), "a") != derived_event_id(uuid.UUID(int=2), "a")


def test_every_event_type_has_a_topic_with_a_dlq() -> None:
    for event_type, _ in EVENT_MODELS:
        topic = topic_for_event(event_type)
        assert topic.enveloped
        assert topic.dlq("p.") == f"p.{event_type}.dlq"
    assert set(CURRENT_VERSION) <= set(REGISTRY)
    names = all_physical_names("run1.")
    assert "run1.erp.invoices.dlq" in names and len(names) == 2 * len(REGISTRY)
