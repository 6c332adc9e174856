"""The most effective channel rule as pure functions, and where ingest and the scheduler apply it.

The store itself runs on the real MongoDB-wire server in ``tests/integration/test_effectiveness.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymongo.errors
import pytest

from factura.common.delivery.effectiveness import (
    Delivery,
    credited_delivery,
    epoch_ms,
    most_credited,
    tenant_order,
)
from factura.common.delivery.policy import ChannelPolicy
from factura.common.envelope import Envelope
from factura.common.erp import ErpCustomer
from factura.common.errors import ErrorKind, InvalidMessage, classify
from factura.common.events import Channel, InvoiceCreatedV1, PaymentReceivedV1
from factura.common.schemas import EXAMPLES_DIR
from factura.common.tenants import TenantDirectory
from factura.ingest.handlers import IngestHandlers
from factura.ingest.normalise import invoice_from_erp
from factura.scheduler.handlers import paid_in_full_at
from tests.unit.test_ingest_handlers import Recorder, erp_message
from tests.unit.test_scheduler import invoice_created, payment_received, state_of

DAY = 86_400_000
EXAMPLE: dict[str, Any] = json.loads((EXAMPLES_DIR / "erp.invoice.v1.json").read_text(encoding="utf-8"))

# --- which delivery a payment credits --------------------------------------------------------------


def test_the_last_delivery_before_the_payment_is_credited() -> None:
    found = [Delivery("a", "email", 1 * DAY), Delivery("b", "sms", 3 * DAY), Delivery("c", "voice", 2 * DAY)]
    assert credited_delivery(found, 5 * DAY, 14 * DAY) == Delivery("b", "sms", 3 * DAY)


def test_a_delivery_after_or_at_the_payment_is_not_credited() -> None:
    found = [Delivery("a", "email", 1 * DAY), Delivery("b", "sms", 5 * DAY), Delivery("c", "push", 6 * DAY)]
    assert credited_delivery(found, 5 * DAY, 14 * DAY) == Delivery("a", "email", 1 * DAY)


def test_the_window_includes_its_first_day_and_nothing_before() -> None:
    paid = 20 * DAY
    assert credited_delivery([Delivery("a", "sms", paid - 14 * DAY)], paid, 14 * DAY) is not None
    assert credited_delivery([Delivery("a", "sms", paid - 14 * DAY - 1)], paid, 14 * DAY) is None
    assert credited_delivery([], paid, 14 * DAY) is None


# --- the customer's most effective channel ---------------------------------------------------------


def test_most_credits_win() -> None:
    assert most_credited({"email": 1, "sms": 3}, ["email", "sms"], 2) == "sms"


def test_a_tie_goes_to_the_channel_the_tenant_lists_first() -> None:
    assert most_credited({"email": 2, "sms": 2}, ["sms", "email"], 2) == "sms"
    assert most_credited({"email": 2, "sms": 2}, ["email", "sms"], 2) == "email"


def test_too_few_credits_decide_nothing() -> None:
    assert most_credited({"sms": 1}, ["email", "sms"], 2) is None
    assert most_credited({}, ["email", "sms"], 1) is None
    assert most_credited({"email": 1, "sms": 1}, ["email", "sms"], 2) == "email"


def test_credits_for_channels_the_tenant_no_longer_uses_do_not_count() -> None:
    assert most_credited({"voice": 5, "sms": 1}, ["email", "sms"], 2) is None
    assert most_credited({"voice": 5, "sms": 2}, ["email", "sms"], 2) == "sms"


def test_tenant_order_is_the_listed_or_the_cheapest_first_order() -> None:
    listed = ChannelPolicy(channels=["sms", "email", "push"])
    assert tenant_order(listed) == ["sms", "email", "push"]
    cheapest = ChannelPolicy(channels=["sms", "email", "push"], order="cost")
    assert tenant_order(cheapest) == ["push", "email", "sms"]


def test_epoch_ms_is_utc_milliseconds() -> None:
    assert epoch_ms(datetime(1970, 1, 2, tzinfo=UTC)) == DAY


# --- when the scheduler credits: the payment that completed the invoice ----------------------------


def paid(invoice_id: str, amount: str, at: datetime, currency: str = "EUR") -> Envelope[PaymentReceivedV1]:
    event = payment_received(invoice_id, amount, currency)
    return event.model_copy(update={"data": event.data.model_copy(update={"paid_at": at})})


T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def test_paid_in_full_at_the_payment_that_completes_the_invoice_whatever_the_arrival_order() -> None:
    created = invoice_created("F-1", total="100.00")
    first, second = paid("F-1", "40.00", T0), paid("F-1", "60.00", T0 + timedelta(days=2))
    assert paid_in_full_at(state_of(created, [second, first])) == T0 + timedelta(days=2)
    assert paid_in_full_at(state_of(created, [first, second])) == T0 + timedelta(days=2)


def test_not_paid_in_full_is_not_credited() -> None:
    created = invoice_created("F-1", total="100.00")
    assert paid_in_full_at(state_of(created, [paid("F-1", "99.99", T0)])) is None
    assert paid_in_full_at(state_of(None, [paid("F-1", "100.00", T0)])) is None  # invoice not seen yet


def test_a_payment_in_another_currency_does_not_complete_the_invoice() -> None:
    created = invoice_created("F-1", total="100.00")
    state = state_of(created, [paid("F-1", "100.00", T0, "USD"), paid("F-1", "100.00", T0 + timedelta(days=1))])
    assert paid_in_full_at(state) == T0 + timedelta(days=1)


def test_an_overpayment_completes_at_the_first_payment_that_covers_the_total() -> None:
    created = invoice_created("F-1", total="100.00")
    state = state_of(created, [paid("F-1", "150.00", T0 + timedelta(days=1)), paid("F-1", "20.00", T0)])
    assert paid_in_full_at(state) == T0 + timedelta(days=1)


# --- the ERP contract ------------------------------------------------------------------------------


def customer(**fields: Any) -> dict[str, Any]:
    return EXAMPLE | {"customer": EXAMPLE["customer"] | fields}


def test_preferred_channel_and_push_token_reach_the_invoice() -> None:
    _, invoice = invoice_from_erp(customer(preferred_channel="push", push_token="fcm:APA91b-x_y"))
    assert invoice.customer.preferred_channel == "push"
    assert invoice.customer.push_token == "fcm:APA91b-x_y"
    assert invoice.customer.effective_channel is None


def test_a_blank_push_token_is_no_token() -> None:
    _, invoice = invoice_from_erp(customer(push_token="   "))
    assert invoice.customer.push_token is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"preferred_channel": "fax"}, "customer.preferred_channel"),
        ({"preferred_channel": "portal"}, "customer.preferred_channel"),
        ({"push_token": "x" * 4097}, "customer.push_token"),
        ({"push_token": "tok\nen"}, "customer.push_token"),
        ({"push_token": "tokén"}, "customer.push_token"),
    ],
)
def test_bad_channel_fields_are_refused_with_the_field_named(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        invoice_from_erp(customer(**fields))
    assert [r.field for r in info.value.reasons] == [field]


def test_a_push_token_of_4096_printable_characters_is_accepted() -> None:
    token = ("ab:-_~ " * 600)[:4095] + "z"
    assert ErpCustomer.model_validate(EXAMPLE["customer"] | {"push_token": token}).push_token == token


# --- ingest: asks only for tenants with the mode, only without a stated preference -----------------


@dataclass
class History:
    answer: Channel | None = "sms"
    error: Exception | None = None
    asked: list[dict[str, Any]] = field(default_factory=list)

    async def best_channel(
        self, tenant_id: str, customer_id: str, *, before: datetime, order: Sequence[Channel], min_payments: int
    ) -> Channel | None:
        self.asked.append(
            {"tenant": tenant_id, "customer": customer_id, "before": before, "order": list(order), "min": min_payments}
        )
        if self.error is not None:
            raise self.error
        return self.answer


def tenants(root: Path) -> TenantDirectory:
    """``learning``: the mode on, cheapest channel first; ``harinas-sur``: defaults (mode off)."""
    (root / "learning").mkdir()
    (root / "learning" / "tenant.toml").write_text(
        '[delivery]\nchannels = ["sms", "email"]\norder = "cost"\n[delivery.most_effective]\nmin_payments = 3\n',
        encoding="utf-8",
    )
    return TenantDirectory(root)


def ingest(root: Path, history: History, **changes: Any) -> InvoiceCreatedV1:
    recorder = Recorder()
    handlers = IngestHandlers(recorder, tenants(root), history)
    payload = EXAMPLE | changes
    asyncio.run(handlers.on_erp_invoice(erp_message(json.dumps(payload).encode())))
    [event] = recorder.events
    assert isinstance(event.data, InvoiceCreatedV1)
    return event.data


def test_ingest_sets_the_learnt_channel_for_a_tenant_with_the_mode(tmp_path: Path) -> None:
    history = History(answer="sms")
    invoice = ingest(tmp_path, history, tenant_id="learning")
    assert invoice.customer.effective_channel == "sms"
    assert history.asked == [
        {
            "tenant": "learning",
            "customer": "C-1042",
            "before": datetime(2026, 11, 2, tzinfo=UTC),  # the issue date: a redelivery gets the same answer
            "order": ["email", "sms"],
            "min": 3,
        }
    ]


def test_ingest_leaves_the_channel_unset_when_history_has_no_answer(tmp_path: Path) -> None:
    invoice = ingest(tmp_path, History(answer=None), tenant_id="learning")
    assert invoice.customer.effective_channel is None


def test_ingest_does_not_ask_for_a_tenant_without_the_mode(tmp_path: Path) -> None:
    history = History()
    assert ingest(tmp_path, history).customer.effective_channel is None
    assert history.asked == []


def test_ingest_does_not_ask_when_the_customer_stated_a_preference(tmp_path: Path) -> None:
    history = History()
    payload_customer = EXAMPLE["customer"] | {"preferred_channel": "email"}
    invoice = ingest(tmp_path, history, tenant_id="learning", customer=payload_customer)
    assert invoice.customer.preferred_channel == "email" and invoice.customer.effective_channel is None
    assert history.asked == []


def test_a_mongodb_outage_makes_the_invoice_wait_not_rejected(tmp_path: Path) -> None:
    recorder = Recorder()
    history = History(error=pymongo.errors.ServerSelectionTimeoutError("no servers"))
    handlers = IngestHandlers(recorder, tenants(tmp_path), history)
    raw = json.dumps(EXAMPLE | {"tenant_id": "learning"}).encode()
    with pytest.raises(pymongo.errors.PyMongoError) as info:
        asyncio.run(handlers.on_erp_invoice(erp_message(raw)))
    assert classify(info.value) == (ErrorKind.TRANSIENT, "mongo")
    assert recorder.events == []  # no invoice.rejected, no invoice.created: the loop retries
