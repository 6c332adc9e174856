"""The schedule store's figures for the scheduler's metrics, on the real MongoDB-wire server:
whether a payment lowered what its invoice owes (``factura_payments_applied_total``) and the
overdue aggregation (``factura_overdue_invoices`` / ``factura_overdue_amount``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from factura.common.mongo import create_client, database
from factura.devstack.config import StackConfig
from factura.scheduler.schedule import Overdue, Schedules
from tests.conftest import mongo_settings
from tests.pii_keys import pii_cipher
from tests.unit.test_scheduler import TODAY, invoice_cancelled, invoice_created, payment_received

pytestmark = pytest.mark.integration


@pytest.fixture
async def schedules(cfg: StackConfig) -> AsyncIterator[Schedules]:
    mongo = mongo_settings(cfg)
    client = create_client(mongo)
    try:
        db = database(client, mongo)
        store = Schedules(db[f"schedules_{uuid.uuid4().hex[:6]}"], pii_cipher(db))
        await store.ensure_indexes()
        yield store
    finally:
        await client.close()


async def test_a_payment_lowers_what_is_owed_once_and_only_in_the_invoices_currency(schedules: Schedules) -> None:
    await schedules.record_invoice(invoice_created("F-1", total="100.00"))
    payment = payment_received("F-1", "40.00")
    assert (await schedules.apply_payment(payment, "F-1"))[1]
    assert not (await schedules.apply_payment(payment, "F-1"))[1]  # redelivered
    assert not (await schedules.apply_payment(payment_received("F-1", "10.00", "USD"), "F-1"))[1]
    assert (await schedules.apply_payment(payment_received("F-1", "60.00"), "F-1"))[1]  # paid in full
    assert not (await schedules.apply_payment(payment_received("F-2", "5.00"), "F-2"))[1]  # no invoice yet


async def test_payments_that_came_before_their_invoice_lower_it_when_it_arrives_once(schedules: Schedules) -> None:
    # Payments and invoices travel on different topics: an ERP's payment often overtakes its invoice.
    assert not (await schedules.apply_payment(payment_received("G", "30.00"), "G"))[1]
    state, lowered = await schedules.record_invoice_owed(invoice_created("G", total="100.00"))
    assert lowered and state.invoice is not None
    assert not (await schedules.record_invoice_owed(invoice_created("G", total="100.00")))[1]  # redelivered
    assert not (await schedules.record_invoice_owed(invoice_created("H", total="10.00")))[1]  # nothing paid


async def test_overdue_sums_open_invoices_due_before_today_per_currency(schedules: Schedules) -> None:
    late = TODAY - timedelta(days=3)
    await schedules.record_invoice(invoice_created("A", due=late, total="100.00"))
    await schedules.apply_payment(payment_received("A", "30.00"), "A")
    await schedules.record_invoice(invoice_created("B", due=late, total="50.00", currency="RON"))
    await schedules.record_invoice(invoice_created("C", due=late, total="20.00"))
    await schedules.apply_payment(payment_received("C", "20.00"), "C")  # paid: not overdue
    await schedules.record_invoice(invoice_created("D", due=late, total="20.00"))
    await schedules.record_cancellation(invoice_cancelled("D"), "D")  # cancelled: not overdue
    await schedules.record_invoice(invoice_created("E", due=TODAY, total="999.00"))  # due today: not yet
    assert await schedules.overdue(TODAY) == {"EUR": Overdue(1, 70.0), "RON": Overdue(1, 50.0)}
