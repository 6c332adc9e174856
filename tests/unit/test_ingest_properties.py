"""Property: whatever the ERP JSON Schema accepts, ingest accepts or rejects with field reasons.

Never another exception: one would be retried as a bug and dead-lettered with no
``invoice.rejected``, so the audit trail would never learn of the invoice.

Documents come from the checked-in schema itself (what an ERP team validates against), by a small
generator for the keywords that schema uses, and from the example with parts replaced by
schema-generated values, which reaches the rules behind a valid customer (amount arithmetic,
the domain model). hypothesis-jsonschema would do the former, but its release does not run with
the hypothesis pinned here. Every generated document is first checked against the schema with
``jsonschema``, so a generator mistake fails loudly instead of testing something else.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from functools import partial
from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factura.common.erp import decode_erp
from factura.common.errors import InvalidMessage
from factura.common.events import InvoiceRejectedV1
from factura.common.schemas import EXAMPLES_DIR, SCHEMA_DIR
from factura.common.topics import ERP_INVOICES, ERP_PAYMENTS, Topic
from factura.ingest.normalise import invoice_from_erp, payment_from_erp
from tests.unit.test_ingest_handlers import Recorder, erp_message, ingest_handlers

Json = dict[str, Any]
INVOICE_SCHEMA: Json = json.loads((SCHEMA_DIR / "erp.invoice.v1.json").read_text(encoding="utf-8"))
PAYMENT_SCHEMA: Json = json.loads((SCHEMA_DIR / "erp.payment.v1.json").read_text(encoding="utf-8"))
INVOICE_EXAMPLE: Json = json.loads((EXAMPLES_DIR / "erp.invoice.v1.json").read_text(encoding="utf-8"))
PAYMENT_EXAMPLE: Json = json.loads((EXAMPLES_DIR / "erp.payment.v1.json").read_text(encoding="utf-8"))
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

_ZONES = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11))])
_FORMATS: dict[str, st.SearchStrategy[str]] = {
    "date": st.dates().map(date.isoformat),
    "date-time": st.datetimes(timezones=_ZONES).map(datetime.isoformat),
    "email": st.emails(),
}
#: Unknown fields the tolerant reader must ignore, whatever they hold.
_ANY_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)


def _resolve(schema: Json, root: Json) -> Json:
    while "$ref" in schema:
        schema = root["$defs"][schema["$ref"].removeprefix("#/$defs/")]
    return schema


def _number(schema: Json) -> st.SearchStrategy[Any]:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    exclude_low, exclude_high = "exclusiveMinimum" in schema, "exclusiveMaximum" in schema
    low_d = None if low is None else Decimal(str(low))
    high_d = None if high is None else Decimal(str(high))

    def inside(value: Any) -> bool:
        return not (
            (low_d is not None and (value < low_d or (exclude_low and value == low_d)))
            or (high_d is not None and (value > high_d or (exclude_high and value == high_d)))
        )

    return st.one_of(
        st.integers(min_value=None if low is None else int(low), max_value=None if high is None else int(high)).filter(
            inside
        ),
        st.floats(
            min_value=low,
            max_value=high,
            exclude_min=exclude_low and low is not None,
            exclude_max=exclude_high and high is not None,
            allow_nan=False,
            allow_infinity=False,
        ),
        # What decode_erp makes of a JSON number with a fraction: every digit kept.
        st.decimals(min_value=low_d, max_value=high_d, allow_nan=False, allow_infinity=False).filter(inside),
    )


def _string(schema: Json) -> st.SearchStrategy[str]:
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if "format" in schema:
        base = _FORMATS[schema["format"]]
    elif "pattern" in schema:
        base = st.from_regex(str(schema["pattern"]), fullmatch=True)
    else:
        return st.text(min_size=low, max_size=high)
    return base.filter(lambda s: low <= len(s) and (high is None or len(s) <= high))


def from_schema(schema: Json, root: Json) -> st.SearchStrategy[Any]:
    """Values the schema accepts, for the keywords the ERP schemas use (and no others)."""
    schema = _resolve(schema, root)
    if "anyOf" in schema:
        return st.one_of([from_schema(branch, root) for branch in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "object":
        props: Json = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {name: from_schema(sub, root) for name, sub in props.items() if name in required},
            optional={name: from_schema(sub, root) for name, sub in props.items() if name not in required}
            | {"x_erp_extra": _ANY_JSON},
        )
    if kind == "array":
        return st.lists(
            from_schema(schema["items"], root),
            min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", 4), 4),
        )
    if kind == "string":
        return _string(schema)
    if kind == "number":
        return _number(schema)
    if kind == "null":
        return st.none()
    raise AssertionError(f"the generator does not know this schema: {schema}")


def mutated(example: Any, schema: Json, root: Json) -> st.SearchStrategy[Any]:
    """``example`` with some parts (at any depth) replaced by values the schema accepts there."""
    schema = _resolve(schema, root)
    fresh = from_schema(schema, root)
    kept: st.SearchStrategy[Any]
    if isinstance(example, dict) and schema.get("type") == "object":
        props, required = schema["properties"], set(schema.get("required", []))
        kept = st.fixed_dictionaries(
            {k: mutated(v, props[k], root) for k, v in example.items() if k in required},
            optional={k: mutated(v, props[k], root) for k, v in example.items() if k not in required},
        )
    elif isinstance(example, list) and schema.get("type") == "array":
        kept = st.lists(
            st.one_of([mutated(item, schema["items"], root) for item in example]),
            min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", 4), 4),
        )
    elif "anyOf" in schema and isinstance(example, dict):
        branch = next(b for b in schema["anyOf"] if _resolve(b, root).get("type") == "object")
        kept = mutated(example, branch, root)
    else:
        kept = st.just(example)
    return st.integers(0, 7).flatmap(lambda i: fresh if i == 0 else kept)


def _validator(schema: Json) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


INVOICE_VALID = _validator(INVOICE_SCHEMA)
PAYMENT_VALID = _validator(PAYMENT_SCHEMA)
invoices = st.one_of(
    from_schema(INVOICE_SCHEMA, INVOICE_SCHEMA), mutated(INVOICE_EXAMPLE, INVOICE_SCHEMA, INVOICE_SCHEMA)
)
payments = st.one_of(
    from_schema(PAYMENT_SCHEMA, PAYMENT_SCHEMA), mutated(PAYMENT_EXAMPLE, PAYMENT_SCHEMA, PAYMENT_SCHEMA)
)


def to_json(value: Any) -> str:
    """JSON text with Decimals written as the numbers they are (``json.dumps`` cannot)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value)


def _accepted_or_rejected(convert: Any, payload: Json) -> bool:
    """True if accepted; False if InvalidMessage with reasons; any other exception fails the test."""
    try:
        convert(payload)
    except InvalidMessage as e:
        assert e.reasons, "InvalidMessage without a reason"
        assert all(r.field and r.message for r in e.reasons)
        return False
    return True


@PROPERTY
@given(doc=invoices)
def test_invoices_the_schema_accepts_are_normalised_or_rejected_with_reasons(doc: Json) -> None:
    INVOICE_VALID.validate(doc)
    for allow_test_domains in (False, True):
        _accepted_or_rejected(partial(invoice_from_erp, allow_test_domains=allow_test_domains), doc)
    # The same document on the wire: what decode_erp reads from its bytes.
    _accepted_or_rejected(invoice_from_erp, decode_erp(to_json(doc).encode()))


@PROPERTY
@given(doc=payments)
def test_payments_the_schema_accepts_are_normalised_or_rejected_with_reasons(doc: Json) -> None:
    PAYMENT_VALID.validate(doc)
    _accepted_or_rejected(payment_from_erp, doc)
    _accepted_or_rejected(payment_from_erp, decode_erp(to_json(doc).encode()))


def _handled(topic: Topic, doc: Json) -> None:
    """The handler end to end: an accepted message publishes its event, any other is rejected on record."""
    recorder = Recorder()
    handlers = ingest_handlers(recorder, allow_test_email_domains=True)
    handler = handlers.on_erp_invoice if topic is ERP_INVOICES else handlers.on_erp_payment
    try:
        asyncio.run(handler(erp_message(to_json(doc).encode(), topic)))
    except InvalidMessage as e:
        [event] = recorder.events
        assert isinstance(event.data, InvoiceRejectedV1) and event.data.reasons == e.reasons
    else:
        [event] = recorder.events
        assert event.type == ("invoice.created" if topic is ERP_INVOICES else "payment.received")


@PROPERTY
@given(doc=invoices)
def test_invoice_handler_publishes_or_rejects(doc: Json) -> None:
    _handled(ERP_INVOICES, doc)


@PROPERTY
@given(doc=payments)
def test_payment_handler_publishes_or_rejects(doc: Json) -> None:
    _handled(ERP_PAYMENTS, doc)


def test_the_generators_reach_acceptance() -> None:
    """A property whose documents were all rejected early would prove little: check some pass."""
    seen = {"accepted": 0, "rejected": 0}

    @settings(max_examples=200, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(doc=mutated(INVOICE_EXAMPLE, INVOICE_SCHEMA, INVOICE_SCHEMA))
    def count(doc: Json) -> None:
        ok = _accepted_or_rejected(partial(invoice_from_erp, allow_test_domains=True), doc)
        seen["accepted" if ok else "rejected"] += 1

    count()
    assert seen["accepted"] >= 10 and seen["rejected"] >= 10, seen
