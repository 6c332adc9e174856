"""Reading an ERP message's bytes: anything that is not one JSON object is InvalidMessage on ``$``."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factura.common.erp import MAX_DEPTH, MAX_MESSAGE_BYTES, decode_erp
from factura.common.errors import InvalidMessage
from factura.common.schemas import EXAMPLES_DIR

EXAMPLE = (EXAMPLES_DIR / "erp.invoice.v1.json").read_bytes()


def refusal(raw: bytes) -> dict[str, str]:
    with pytest.raises(InvalidMessage) as info:
        decode_erp(raw)
    assert info.value.reasons
    return {r.field: r.message for r in info.value.reasons}


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"\xff\xfe not utf8", "not valid UTF-8"),
        (b'{"name": "\xed\xa0\x80"}', "not valid UTF-8"),  # an encoded surrogate, which json.loads(bytes) lets through
        (b'{\x00"\x00}\x00', "not valid JSON"),  # UTF-16, which json.loads(bytes) would detect and read
        (b"{not json", "not valid JSON"),
        (b'{"total": NaN}', "NaN is not a JSON number"),
        (b'{"total": -Infinity}', "-Infinity is not a JSON number"),
        (b"[1, 2]", "got an array"),
        (b"42", "got a number"),
        (b'"text"', "got a string"),
        (b"null", "got null"),
        (b"true", "got a boolean"),
        (b"", "empty message"),
        (b"  \n", "empty message"),
        (b"[" * 100_000, f"nested deeper than {MAX_DEPTH} levels"),
        (b'{"a":' * 100_000, f"nested deeper than {MAX_DEPTH} levels"),
        (b'{"x": ' + b"1" * 5000 + b"}", "not valid JSON"),  # past Python's integer digit limit
    ],
)
def test_undecodable(raw: bytes, words: str) -> None:
    reasons = refusal(raw)
    assert list(reasons) == ["$"] and words in reasons["$"]


def test_nesting_limit_is_exact() -> None:
    def nested(depth: int) -> bytes:
        return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)

    assert decode_erp(nested(MAX_DEPTH))
    assert "nested deeper" in refusal(nested(MAX_DEPTH + 1))["$"]


def test_lone_surrogate_escape_names_its_field() -> None:
    reasons = refusal(b'{"customer": {"name": "Luc\\ud800a"}, "lines": [{"description": "\\udfff"}]}')
    assert set(reasons) == {"customer.name", "lines.0.description"}


def test_numbers_keep_every_digit() -> None:
    value = decode_erp(b'{"total": 12345678901234.5678, "quantity": 3, "rate": 19.125}')
    assert value == {"total": Decimal("12345678901234.5678"), "quantity": 3, "rate": Decimal("19.125")}


def test_byte_order_mark_is_ignored() -> None:
    assert decode_erp(b"\xef\xbb\xbf" + EXAMPLE) == decode_erp(EXAMPLE)


def test_example_decodes() -> None:
    assert decode_erp(EXAMPLE)["invoice_number"] == "F-2026-000123"


def _outcome(raw: bytes) -> None:
    try:
        value = decode_erp(raw)
    except InvalidMessage as e:
        assert e.reasons and all(r.field and r.message for r in e.reasons)
    else:
        assert isinstance(value, dict)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=400))
def test_arbitrary_bytes_decode_or_raise_invalid_message(raw: bytes) -> None:
    _outcome(raw)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=json_values,
    cut=st.integers(min_value=0, max_value=2000),
    insert=st.binary(max_size=4),
    depth=st.integers(min_value=0, max_value=3000),
    encoding=st.sampled_from(["utf-8", "utf-16", "utf-32", "latin-1"]),
)
def test_mangled_json_decodes_or_raises_invalid_message(
    value: object, cut: int, insert: bytes, depth: int, encoding: str
) -> None:
    """Near misses reach further into the parser than random bytes: truncated or spliced JSON,
    other encodings, and deep nesting around a real document."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        raw = text.encode(encoding)
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
    _outcome(raw)
    _outcome(raw[:cut] + insert + raw[cut:])
    _outcome(b"[" * depth + EXAMPLE + b"]" * depth)
    _outcome(b'{"a":' * depth + EXAMPLE + b"}" * depth)


def test_a_message_over_the_size_limit_is_refused_before_parsing() -> None:
    raw = b'{"padding": "' + b"x" * MAX_MESSAGE_BYTES + b'"}'
    with pytest.raises(InvalidMessage) as info:
        decode_erp(raw)
    assert info.value.reasons[0].field == "$" and "at most" in info.value.reasons[0].message
