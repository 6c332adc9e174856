"""Channel policy: first channel, fallback order, retries, stops; and what each event asks for."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from factura.common.delivery.policy import ChannelPolicy
from factura.common.delivery.sender import request_of
from factura.common.envelope import Envelope
from factura.common.events import Attempt, Channel, FailureReason, InvoiceSummary, Notice, parse_event
from factura.common.outcomes import undelivered
from factura.common.schemas import EXAMPLES_DIR
from factura.common.tenants import TenantConfig


def example(name: str) -> Envelope[Any]:
    return parse_event((EXAMPLES_DIR / name).read_bytes())


def notice(purpose: str = "invoice", preferred: Channel | None = None, channels: list[Channel] | None = None) -> Notice:
    raw = json.loads((EXAMPLES_DIR / "invoice.rendered.v1.json").read_text())["data"]["invoice"]
    raw["customer"]["preferred_channel"] = preferred
    return Notice(purpose=purpose, invoice=InvoiceSummary.model_validate(raw), channels=channels)


def failed(channel: Channel, reason: FailureReason) -> Attempt:
    return Attempt(channel=channel, reason=reason, detail="x")


def test_listed_order_with_preference_first() -> None:
    policy = ChannelPolicy(channels=["email", "sms", "voice"])
    assert policy.order_for(notice()) == ["email", "sms", "voice"]
    assert policy.order_for(notice(preferred="sms")) == ["sms", "email", "voice"]
    assert policy.order_for(notice(preferred="push")) == ["email", "sms", "voice"]  # not allowed: ignored
    assert ChannelPolicy(channels=["email", "sms"], honour_preference=False).first(notice(preferred="sms")) == "email"


def test_cost_order_sorts_cheapest_first() -> None:
    policy = ChannelPolicy(
        channels=["voice", "sms", "email"], order="cost", cost={"voice": Decimal("0.2"), "sms": Decimal("0.05")}
    )
    assert policy.order_for(notice()) == ["email", "sms", "voice"]  # email keeps its default cost


def test_purpose_and_step_overrides() -> None:
    policy = ChannelPolicy(channels=["email", "sms"], purposes={"reminder": ["sms"], "reminder:final": ["voice"]})
    assert policy.order_for(notice("reminder:after-3")) == ["sms"]
    assert policy.order_for(notice("reminder:final")) == ["voice"]
    assert policy.order_for(notice("invoice")) == ["email", "sms"]
    assert policy.order_for(notice("reminder:after-3", channels=["push", "email"])) == ["push", "email"]


@pytest.mark.parametrize(
    ("chain", "expected"),
    [
        ([failed("email", "hard_bounce")], "sms"),
        ([failed("email", "no_address")], "sms"),
        ([failed("email", "suppressed")], "sms"),
        ([failed("email", "soft_bounce")], "email"),  # retried once first
        ([failed("email", "soft_bounce"), failed("email", "soft_bounce")], "sms"),
        ([failed("email", "hard_bounce"), failed("sms", "not_mobile")], "voice"),
        ([failed("email", "hard_bounce"), failed("sms", "not_mobile"), failed("voice", "provider_error")], None),
        ([failed("email", "document_mismatch")], None),
        ([failed("email", "document_missing")], None),
    ],
)
def test_after_a_failure(chain: list[Attempt], expected: Channel | None) -> None:
    assert ChannelPolicy(channels=["email", "sms", "voice"]).after(notice(), chain) == expected


def test_actions_can_be_overridden() -> None:
    policy = ChannelPolicy(channels=["email", "sms"], actions={"complaint": "stop"}, soft_bounce_retries=0)
    assert policy.after(notice(), [failed("email", "complaint")]) is None
    assert policy.after(notice(), [failed("email", "soft_bounce")]) == "sms"


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValidationError, match="listed twice"):
        ChannelPolicy(channels=["email", "email"])
    with pytest.raises(ValidationError):
        ChannelPolicy.model_validate({"channels": ["fax"]})
    with pytest.raises(ValidationError):
        ChannelPolicy(channels=[])
    with pytest.raises(ValidationError, match=r"purposes\.receipt"):
        ChannelPolicy(purposes={"receipt": []})


def test_rendered_invoice_asks_the_first_channel() -> None:
    request = request_of(example("invoice.rendered.v1.json"), TenantConfig.default("harinas-sur"))
    assert request is not None and request.channel == "email" and request.notice.purpose == "invoice"
    sms_first = TenantConfig(tenant_id="harinas-sur", delivery=ChannelPolicy(channels=["sms", "email"]))
    request = request_of(example("invoice.rendered.v1.json"), sms_first)
    assert request is not None and request.channel == "sms" and request.chain == ()


def test_reminder_asks_with_its_step_purpose() -> None:
    request = request_of(example("reminder.due.v2.json"), TenantConfig.default("harinas-sur"))
    assert request is not None and request.notice.purpose == "reminder:after-3"
    assert request.notice.document is not None and request.notice.days_from_due == 3


def test_a_v1_reminder_still_in_the_topic_reads_as_v2() -> None:
    event = example("reminder.due.v1.json")
    assert event.schema_version == 2
    request = request_of(event, TenantConfig.default("harinas-sur"))
    assert request is not None and request.notice.purpose == "reminder:overdue"


def test_a_failure_hands_on_to_its_next_channel_with_the_chain() -> None:
    first = example("delivery.failed.v2.json")
    request = request_of(first, TenantConfig.default("harinas-sur"))
    assert request is not None and request.channel == "sms"
    assert [a.channel for a in request.chain] == ["email"] and request.chain[0].reason == "hard_bounce"
    last = undelivered(
        first,
        channel="sms",
        reason="no_address",
        detail="no phone",
        recipient=None,
        notice=first.data.notice,
        chain=request.chain,
        next_channel=None,
        producer="sms-sender",
    )
    assert request_of(last, TenantConfig.default("harinas-sur")) is None


def test_a_v1_failure_from_email_reads_as_a_hand_over_to_sms() -> None:
    event = example("delivery.failed.v1.json")
    assert event.schema_version == 2 and event.data.next_channel == "sms"
    assert event.data.notice.purpose == "invoice"
