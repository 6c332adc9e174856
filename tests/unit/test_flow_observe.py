"""How the demo and the e2e tests read an invoice's outcome from its audit timeline."""

from __future__ import annotations

from factura.devstack.flow import observe


def test_observe_reduces_a_timeline() -> None:
    events = [
        {"type": "delivery.failed", "data": {"channel": "email", "reason": "rejected_by_server", "detail": "550"}},
        {"type": "delivery.succeeded", "data": {"channel": "sms", "recipient": "+34600000000"}},
    ]
    o = observe(events)
    assert o.outcome == "sms" and "rejected_by_server" in o.detail and not o.reminder


def test_rejection_and_reminder_are_seen() -> None:
    events = [
        {"type": "invoice.rejected", "data": {"reasons": [{"field": "currency", "message": "bad"}]}},
        {"type": "reminder.due", "data": {}},
    ]
    o = observe(events)
    assert o.outcome == "rejected" and o.detail == "currency: bad" and o.reminder and not o.payment


def test_exhaustion_is_a_failed_outcome_and_reminder_outcomes_do_not_count() -> None:
    reminder = {"purpose": "reminder:overdue"}
    events = [
        {"type": "delivery.succeeded", "data": {"channel": "email", "recipient": "a@b.test", "notice": reminder}},
        {"type": "delivery.failed", "data": {"channel": "email", "reason": "hard_bounce", "detail": "550"}},
        {
            "type": "delivery.exhausted",
            "data": {
                "notice": {"purpose": "invoice"},
                "chain": [
                    {"channel": "email", "reason": "hard_bounce", "detail": "550 5.1.1"},
                    {"channel": "sms", "reason": "no_address", "detail": "no phone"},
                ],
            },
        },
    ]
    o = observe(events)
    assert o.outcome == "failed"
    assert o.detail == "email: hard_bounce (550 5.1.1) → sms: no_address (no phone)"
