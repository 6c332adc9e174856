"""Channel policy: which channel carries a message first, and where it goes after a failure.

A tenant's ``[delivery]`` section (see :class:`ChannelPolicy`) lists its channels, their cost per
message and what each failure reason does. Routing is a pure function of that config, the
message (:class:`~factura.common.events.Notice`) and the chain of earlier failures, so every
sender computes the same answer and the answer is recorded in the event that hands the message
on (``delivery.failed.next_channel``): no two senders can both think it is their turn.

What each reason does (:data:`DEFAULT_ACTIONS`):

* ``next``: hand the message to the next channel now (hard bounce, no address, suppressed, a
  provider refusal, a message the channel cannot build);
* ``retry``: try the same channel again, up to ``soft_bounce_retries`` times, then ``next``;
* ``stop``: no channel may carry it (the stored document is missing or is not the one the event
  names: a link or attachment would hand out the wrong bytes).

A provider outage is not a reason: it raises ``DependencyDown`` and the message waits for the
provider, never falling back. Dynamic state (suppressions, whether the customer has an address
for the channel) is checked by the sender whose turn it is, which then records a ``suppressed``
or ``no_address`` failure and hands on at once without calling any provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from factura.common.events import Attempt, Channel, FailureReason, Notice

Action = Literal["next", "retry", "stop"]

DEFAULT_ACTIONS: dict[FailureReason, Action] = {
    "no_address": "next",
    "rejected_by_server": "next",
    "provider_error": "next",
    "message_invalid": "next",
    "hard_bounce": "next",
    "soft_bounce": "retry",
    "complaint": "next",
    "suppressed": "next",
    "not_mobile": "next",
    "document_mismatch": "stop",
    "document_missing": "stop",
}
#: Reasons after which the address itself is suppressed for the tenant (complaint: for good).
SUPPRESSING: frozenset[FailureReason] = frozenset({"hard_bounce", "complaint"})
DEFAULT_COST: dict[Channel, Decimal] = {
    "email": Decimal("0.001"),
    "sms": Decimal("0.05"),
    "voice": Decimal("0.12"),
    "push": Decimal("0.0005"),
}


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tracking(_Config):
    """Optional proof-of-receipt tracking (see docs/delivery.md for the privacy trade-off)."""

    opens: bool = Field(default=False, description="Open pixel in emails")
    clicks: bool = Field(default=False, description="Tracked redirects for payment and download links")
    minimal_user_agent: bool = Field(default=False, description="Record only the user-agent class, not the string")


class MostEffective(_Config):
    """Learn each customer's most effective channel (see docs/delivery.md for the rule)."""

    window_days: int = Field(default=14, ge=1, le=365, description="A payment this soon after a delivery credits it")
    min_payments: int = Field(default=2, ge=1, description="Credited payments needed before the channel is trusted")


class ChannelPolicy(_Config):
    channels: list[Channel] = Field(default=["email", "sms"], min_length=1, description="Channel order")
    order: Literal["listed", "cost"] = Field(default="listed", description="'cost': cheapest channel first")
    cost: dict[Channel, Decimal] = Field(default_factory=lambda: dict(DEFAULT_COST))
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$", description="Currency of the costs")
    honour_preference: bool = Field(default=True, description="A customer's preferred channel goes first")
    most_effective: MostEffective | None = Field(
        default=None, description="Put the customer's learnt most effective channel first (after a stated preference)"
    )
    actions: dict[FailureReason, Action] = Field(default_factory=dict, description="Overrides of DEFAULT_ACTIONS")
    soft_bounce_retries: int = Field(default=1, ge=0, le=5)
    purposes: dict[str, list[Channel]] = Field(
        default_factory=dict,
        description="Channel order for one purpose ('receipt', 'reminder:after-30') or a family ('reminder')",
    )
    sms_transliterate: bool = Field(default=False, description="Map diacritics to GSM-7 (cheaper, 160 chars)")
    attachment_max_bytes: int = Field(default=10 * 1024 * 1024, ge=0, description="Above this: link only")
    attach_to_reminders: bool = Field(default=False, description="Reminders carry links; the PDF only if true")
    list_unsubscribe: str | None = Field(
        default=None, pattern=r"^(https://|mailto:)", description="List-Unsubscribe target for reminders"
    )
    tracking: Tracking = Tracking()

    @field_validator("channels")
    @classmethod
    def _unique(cls, value: list[Channel]) -> list[Channel]:
        if len(set(value)) != len(value):
            raise ValueError("a channel is listed twice")
        return value

    @field_validator("purposes")
    @classmethod
    def _purposes(cls, value: dict[str, list[Channel]]) -> dict[str, list[Channel]]:
        for purpose, channels in value.items():
            if not channels:
                raise ValueError(f"purposes.{purpose}: needs at least one channel")
            if len(set(channels)) != len(channels):
                raise ValueError(f"purposes.{purpose}: a channel is listed twice")
        return value

    def action(self, reason: FailureReason) -> Action:
        return self.actions.get(reason, DEFAULT_ACTIONS[reason])

    def order_for(self, notice: Notice) -> list[Channel]:
        """The channels this message may use, in the order they are tried."""
        family = notice.purpose.split(":", 1)[0]
        listed = notice.channels or self.purposes.get(notice.purpose) or self.purposes.get(family) or self.channels
        channels = list(listed)
        if self.order == "cost":
            channels.sort(key=lambda c: self.cost.get(c, DEFAULT_COST[c]))
        customer = notice.invoice.customer
        if self.most_effective is not None and customer.effective_channel in channels:
            channels.remove(customer.effective_channel)
            channels.insert(0, customer.effective_channel)
        if self.honour_preference and customer.preferred_channel in channels:  # what the customer asked wins
            channels.remove(customer.preferred_channel)
            channels.insert(0, customer.preferred_channel)
        return channels

    def first(self, notice: Notice) -> Channel:
        return self.order_for(notice)[0]

    def after(self, notice: Notice, chain: Sequence[Attempt]) -> Channel | None:
        """Where the message goes after the last failure in ``chain`` (``None``: exhausted)."""
        last = chain[-1]
        action = self.action(last.reason)
        if action == "stop":
            return None
        if action == "retry":
            retried = sum(1 for a in chain if a.channel == last.channel and a.reason == last.reason)
            if retried <= self.soft_bounce_retries:
                return last.channel
        tried = {a.channel for a in chain}
        return next((c for c in self.order_for(notice) if c not in tried), None)

    def cost_of(self, channel: Channel, units: int = 1) -> Decimal:
        return self.cost.get(channel, DEFAULT_COST[channel]) * units
