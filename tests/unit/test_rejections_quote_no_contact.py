"""A rejection names the contact field that is wrong and why, never its value: ingest keeps its
first answer to an idempotent request (``ingest_idempotency``, 24 h) and publishes the reasons in
``invoice.rejected``, which the audit trail keeps, and neither can be erased per customer."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from factura.common.errors import InvalidMessage
from factura.common.schemas import EXAMPLES_DIR
from factura.ingest.normalise import invoice_from_erp

BASE: dict[str, Any] = json.loads((EXAMPLES_DIR / "erp.invoice.v1.json").read_text(encoding="utf-8"))
#: A marker in every refused value: no reason may contain it.
WHO = "zorrogarcia"


def answer_to(customer: dict[str, Any]) -> str:
    """The rejection reasons as the API answers and stores them."""
    payload = copy.deepcopy(BASE)
    payload["customer"] |= customer
    with pytest.raises(InvalidMessage) as info:
        invoice_from_erp(payload)
    return json.dumps([r.model_dump() for r in info.value.reasons], ensure_ascii=False)


@pytest.mark.parametrize(
    "customer",
    [
        {"email": f"{WHO}"},
        {"email": f"{WHO} x@{WHO}.es"},
        {"email": f"{WHO}@{WHO}"},
        {"email": f"{WHO}..x@{WHO}.es"},
        {"email": f"{WHO}@{WHO}_x.es"},
        {"email": f"{WHO}@{WHO}.invalid"},
        {"name": f"{WHO}\x07"},
        {"address": {"lines": [f"Calle {WHO}\x01"], "city": f"{WHO}\u200b"}},
        {"phone": f"+34 {WHO}"},
    ],
)
def test_a_refused_contact_value_is_not_quoted(customer: dict[str, Any]) -> None:
    answer = answer_to(customer)
    assert "customer." in answer
    assert WHO not in answer.casefold()


def test_an_internationalised_domain_is_not_quoted_either() -> None:
    answer = answer_to({"email": f"ana@\u0663\u0661{WHO}.es"})
    assert "customer.email" in answer
    assert WHO not in answer
