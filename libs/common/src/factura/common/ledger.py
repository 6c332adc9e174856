"""Delivery ledger: a lease per delivery, so "send once" survives redelivery, restarts and zombies.

A sender claims ``<source event_id>:<channel>`` in MongoDB before it talks to the provider. The
claim is a lease: it names its **owner** (one id per ledger, i.e. per sender process) and
**expires** ``expiry_s`` after it was taken or last renewed; its holder renews it while the delivery
runs, up to ``lease_s`` after it was taken. So a crashed sender's deliveries are taken over
``expiry_s`` (15 s) after its last renewal, not after the longest a delivery may take. Every
change is a compare-and-set (``insert_one`` on the unique ``_id``, or ``find_one_and_update``
filtered on state, owner and expiry), so of two processes racing for one delivery exactly one gets
the claim:

* no record yet → insert ``state="sending"``; the insert that loses the race gets
  ``DuplicateKeyError`` and reads what the winner wrote;
* ``sending``, held by this process (an earlier attempt that failed), or expired → take it over
  (an attempt that fails before the provider accepted ends its lease at once, so the retry,
  whoever runs it, does not wait for the expiry);
* ``sending``, live and held by another owner → :class:`DependencyDown` ``("ledger", ...)``: the
  consumer loop retries later, and by then the claim is either ``done`` or expired;
* ``done`` → re-publish the stored outcome event (same event_id, so audit keeps one copy).

A delivery runs under a deadline ``expiry_s - clock_margin_s`` after the claim (or its last
confirmed renewal) was requested, and never past ``lease_s - clock_margin_s`` after the claim
(:meth:`DeliveryLedger.deliver_once` cancels it then), so a holder stops before anyone else may
take its claim over, as long as the two hosts' clocks differ by less than ``clock_margin_s``; a
holder that cannot renew (MongoDB unreachable) stops too.

"done" is written by :meth:`Claim.record`, which the sender awaits the moment the provider has
accepted (after the SMTP server's 250 to DATA and before QUIT; after the SMS provider's 2xx). The
outcome is also kept in memory until that write is acknowledged, so if MongoDB fails at that
moment this process's retry only repeats the write, never the send.

The remaining duplicate window, i.e. the only ways one delivery is handed to a provider twice:

1. the "done" write is not acknowledged after the provider accepted, and this process does not
   get to retry it: it dies (SIGKILL, OOM, node loss) within that MongoDB round trip (measured
   by the ``factura_delivery_unrecorded_seconds`` histogram), or MongoDB stays unreachable until
   the partition moved to another process. That process takes the claim over once it expired
   and sends again.
2. the provider accepted, but its answer never reached the sender (connection lost or timed out
   after the end of DATA, or after the HTTP request was written): the sender cannot tell this
   from a refusal in transit, so it retries and the provider gets the message again.
3. a holder frozen (stopped, swapped out) past its deadline, or clocks further apart than
   ``clock_margin_s``: the lease expires while the holder can still send.

The first two close where the provider can be asked what it took: a claim taken over (from a
dead owner, or this process's own failed attempt) carries :attr:`Claim.retry_since`, the first
claim's time, and the sender asks the provider whether it accepted the message since then before
it sends again (``ChannelAdapter.accepted_earlier``; the delivery is then recorded, not sent). A
provider that cannot be asked leaves them open.

Claims are compared with each process's wall clock (``lease_expires_ms``, epoch milliseconds,
stored as a number: nx-27017 turns datetimes written by ``$set`` into strings).

Personal data: the stored outcomes (``outcome``, ``late_outcome``) name the recipient and carry the
customer's name, email, phone and address, and the provider's text about them, and they outlive
Kafka's retention. With a :class:`~factura.common.pii.FieldCipher`, each is stored as one token
under the customer's data key (``customer_id`` beside it, in the clear like audit's), so erasing
the customer makes them unreadable. The customer's key is loaded before the provider is called,
so the encryption between "accepted" and the "done" write adds no round trip on the way, and a
missing KEK stops the delivery before anything was sent. Outcomes stored in the clear (written
before, or naming no customer) are read as they are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Self

from prometheus_client import Histogram
from pydantic import BaseModel, Field, model_validator
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from factura.common.envelope import Envelope, utcnow
from factura.common.errors import DependencyDown
from factura.common.events import parse_event
from factura.common.metrics import PREFIX
from factura.common.mongo import Document, process_owner
from factura.common.pii import Erased, FieldCipher, KeyStoreError, is_token

log = logging.getLogger(__name__)

UNRECORDED_SECONDS = Histogram(
    f"{PREFIX}delivery_unrecorded_seconds",
    "Time from the provider accepting a message to the ledger acknowledging it as done: "
    "a crash inside this window sends the message again.",
    ["channel"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)


class LedgerSettings(BaseModel):
    lease_s: float = Field(
        default=60.0,
        gt=0,
        description="The longest a claim stays exclusive, renewals included: a delivery must finish within it.",
    )
    expiry_s: float = Field(
        default=15.0,
        gt=0,
        description="A claim's expiry unless renewed (its holder renews it while delivering): "
        "a crashed sender's deliveries wait this long to be taken over.",
    )
    clock_margin_s: float = Field(
        default=5.0,
        ge=0,
        description="A delivery must finish this long before its lease ends; bounds tolerated clock skew.",
    )

    @model_validator(mode="after")
    def _margin_fits(self) -> Self:
        if self.clock_margin_s >= min(self.lease_s, self.expiry_s):
            raise ValueError("ledger.clock_margin_s must be shorter than lease_s and expiry_s")
        return self

    @property
    def ttl_s(self) -> float:
        """How long one claim or renewal keeps other owners away."""
        return min(self.expiry_s, self.lease_s)


def _now_ms() -> int:
    return int(time.time() * 1000)


class OutcomeErased(Erased):
    """The stored outcome belongs to a customer since erased: it cannot be read, nor published again."""


def customer_of(event: Envelope[Any]) -> str | None:
    """The id of the customer an event is about (its invoice's customer), if it names one."""
    data = event.data
    invoice = getattr(data, "invoice", None) or getattr(getattr(data, "notice", None), "invoice", None)
    customer = getattr(invoice, "customer", None) or getattr(data, "customer", None)
    found = getattr(customer, "customer_id", None)
    return found if isinstance(found, str) else None


class Claim:
    """This process's lease on one delivery; hand the outcome to :meth:`record` once the provider accepted."""

    def __init__(
        self, ledger: DeliveryLedger, key: str, channel: str, lease_ends_ms: int, retry_since: datetime | None = None
    ) -> None:
        self._ledger = ledger
        self.key = key
        self.channel = channel
        #: Wall-clock end of the whole lease (epoch ms): renewals never store a later expiry.
        self.lease_ends_ms = lease_ends_ms
        #: None on a delivery's first attempt. On a later one, an earlier attempt may have reached
        #: the provider without its "done" being written (it died, or lost the provider's answer):
        #: ask the provider what it accepted since then before sending again.
        self.retry_since = retry_since
        self.outcome: Envelope[Any] | None = None

    async def record(self, outcome: Envelope[Any]) -> None:
        """Store ``outcome`` as done. Idempotent: a second call keeps the first outcome."""
        if self.outcome is None:
            self.outcome = await self._ledger.finish(self.key, self.channel, outcome)


Deliver = Callable[[Claim], Awaitable[Envelope[Any]]]


class DeliveryLedger:
    def __init__(
        self,
        collection: AsyncCollection[Document],
        settings: LedgerSettings | None = None,
        *,
        owner: str | None = None,
        cipher: FieldCipher | None = None,
    ) -> None:
        """``cipher``: encrypt stored outcomes under the customer's data key (see the module docstring)."""
        self._deliveries = collection
        self._settings = settings or LedgerSettings()
        self.owner = owner or process_owner()
        self._cipher = cipher
        #: Outcomes the provider accepted whose "done" write has not been acknowledged yet.
        self._accepted: dict[str, Envelope[Any]] = {}
        #: Deliveries this process is running now (a timed-out attempt may still be unwinding).
        self._active: set[str] = set()

    async def ensure_indexes(self) -> None:
        await self._deliveries.create_index([("tenant_id", 1), ("invoice_id", 1)])
        await self._deliveries.create_index("provider_message_id")

    async def _sealed(self, event: Envelope[Any], field: str) -> Document:
        """The ``$set`` that stores ``event`` as ``field``: one token under its customer's data key."""
        text = event.model_dump_json()
        customer = customer_of(event)
        if self._cipher is None or customer is None:
            return {field: text}
        token = await self._cipher.encrypt_field(event.tenant_id, customer, f"ledger.{field}", text)
        return {field: token, "customer_id": customer}

    async def _stored(self, doc: Document, field: str) -> Envelope[Any]:
        """The event stored as ``field``; :class:`OutcomeErased` if its customer was erased."""
        value = doc[field]
        if is_token(value):
            if self._cipher is None:
                raise KeyStoreError(f"delivery {doc['_id']} holds an encrypted {field}, and this ledger has no cipher")
            try:
                value = await self._cipher.decrypt_field(
                    str(doc["tenant_id"]), str(doc["customer_id"]), f"ledger.{field}", value
                )
            except Erased as e:
                raise OutcomeErased(f"the {field} of delivery {doc['_id']} belongs to an erased customer") from e
        return parse_event(value)

    async def accepted_message(self, provider_message_id: str) -> Envelope[Any] | None:
        """The recorded outcome of the delivery the provider knows as ``provider_message_id``
        (an SMTP Message-ID, an SMS sid): how a later bounce or status report finds its message.
        None also when its customer was erased: a report about their message is then ignored."""
        doc = await self._deliveries.find_one({"provider_message_id": provider_message_id, "state": "done"})
        if doc is None:
            return None
        try:
            return await self._stored(doc, "outcome")
        except OutcomeErased:
            log.info("a report names a message to a customer since erased; ignored", extra={"key": doc["_id"]})
            return None

    async def report_once(self, delivered: Envelope[Any], failed: Envelope[Any]) -> Envelope[Any]:
        """Record ``failed`` as what became of the accepted ``delivered`` message, unless a report
        was recorded first: then that one is returned. One hand-over per message, however many
        reports (a soft bounce, then a hard one) name it, and a report posted twice re-publishes
        the same event. :class:`OutcomeErased` if the recorded one's customer was erased since
        ``delivered`` was read (nothing to re-publish then; a retry finds no ``delivered``)."""
        key = f"{delivered.causation_id}:{getattr(delivered.data, 'channel', '')}"
        before = await self._deliveries.find_one_and_update(
            {"_id": key, "late_outcome": {"$exists": False}},
            {"$set": await self._sealed(failed, "late_outcome")},
            return_document=ReturnDocument.BEFORE,
        )
        if before is not None:
            return failed
        doc = await self._deliveries.find_one({"_id": key})
        if doc is None or not doc.get("late_outcome"):
            raise DependencyDown("ledger", f"could not record the later report of delivery {key}")
        return await self._stored(doc, "late_outcome")

    async def deliver_once(
        self,
        cause: Envelope[Any],
        channel: str,
        deliver: Deliver,
        publish: Callable[[Envelope[Any]], Awaitable[None]],
        *,
        dependency: str,
    ) -> None:
        """Run ``deliver`` at most once per (cause, channel) and publish the recorded outcome.

        ``deliver`` gets the :class:`Claim` and should call :meth:`Claim.record` as soon as the
        provider accepted; an outcome it only returns (a refusal, no address) is recorded after it
        returns. ``dependency`` names the provider in the :class:`DependencyDown` raised when the
        delivery outlives its deadline.

        A delivery found done whose customer was erased since is not published again, only logged:
        its outcome was published (and audited) when it was recorded, and what it said about the
        customer is what the erasure destroyed.
        """
        key = f"{cause.event_id}:{channel}"
        try:
            if key in self._accepted:  # sent before, but the "done" write failed: write it, do not send
                outcome = await self.finish(key, channel, self._accepted[key])
            else:
                started = asyncio.get_running_loop().time()
                begun = await self.begin(key, cause, channel)
                if isinstance(begun, Claim):
                    outcome = await self._run(begun, cause, deliver, started, dependency)
                else:
                    log.info("already delivered; re-publishing the recorded outcome", extra={"key": key})
                    outcome = begun
        except OutcomeErased:
            self._accepted.pop(key, None)  # recorded as done (by another owner): nothing left to write
            log.info("already delivered to a customer since erased; nothing to re-publish", extra={"key": key})
            return
        await publish(outcome)

    async def _run(
        self, claim: Claim, cause: Envelope[Any], deliver: Deliver, started: float, dependency: str
    ) -> Envelope[Any]:
        budget = self._settings.lease_s - self._settings.clock_margin_s
        self._active.add(claim.key)
        try:
            try:
                async with asyncio.timeout_at(
                    started + self._settings.ttl_s - self._settings.clock_margin_s
                ) as deadline:
                    renewing = asyncio.create_task(self._renew(claim, deadline, started + budget))
                    try:
                        if self._cipher is not None and (customer := customer_of(cause)) is not None:
                            await self._cipher.prepare(cause.tenant_id, customer)
                        returned = await deliver(claim)
                        await claim.record(returned)
                    finally:
                        renewing.cancel()
                        await asyncio.wait([renewing])
            except TimeoutError as e:
                if not deadline.expired():
                    raise
                if claim.key in self._accepted:
                    raise DependencyDown("ledger", f"recording delivery {claim.key} as done timed out") from e
                if claim.outcome is None and (deadline.when() or 0) < started + budget:
                    raise DependencyDown("ledger", f"the claim on delivery {claim.key} could not be renewed") from e
                if claim.outcome is None:
                    raise DependencyDown(dependency, f"delivery did not finish within its lease ({budget:g} s)") from e
                # recorded as done; only the provider's goodbye (e.g. SMTP QUIT) ran out of time
        except Exception:
            if claim.outcome is None and claim.key not in self._accepted:
                await self._release(claim.key)
            raise
        finally:
            self._active.discard(claim.key)
        if claim.outcome is None:  # pragma: no cover - record() either set it or raised
            raise RuntimeError(f"delivery {claim.key} finished without an outcome")
        log.info("delivery finished", extra={"key": claim.key, "outcome": claim.outcome.type})
        return claim.outcome

    async def _renew(self, claim: Claim, deadline: asyncio.Timeout, cap: float) -> None:
        """Extend the claim while its delivery runs, and the delivery's ``deadline`` with it (up to ``cap``).

        Only a renewal MongoDB confirmed moves the deadline, to ``ttl_s - clock_margin_s`` after it
        was asked for: a holder that cannot renew stops before its claim can be taken over.
        """
        loop = asyncio.get_running_loop()
        ttl, margin = self._settings.ttl_s, self._settings.clock_margin_s
        while (deadline.when() or cap) < cap:
            await asyncio.sleep((ttl - margin) / 3)  # so two renewals may fail before the deadline
            asked = loop.time()
            expires = min(_now_ms() + int(ttl * 1000), claim.lease_ends_ms)
            try:
                renewed = await self._deliveries.update_one(
                    {"_id": claim.key, "state": "sending", "owner": self.owner}, {"$set": {"lease_expires_ms": expires}}
                )
            except PyMongoError as e:  # the next beat tries again while the deadline allows
                log.warning("could not renew delivery claim %s: %s", claim.key, e)
                continue
            if renewed.matched_count == 0 or deadline.expired():  # recorded as done, or already stopping
                return
            deadline.reschedule(min(asked + ttl - margin, cap))

    async def _release(self, key: str) -> None:
        """End our lease now: this attempt failed and has stopped, so the next one need not wait.

        Not after the provider accepted (the "done" write is what failed then): the lease keeps
        other owners away while this process retries that write.
        """
        try:
            await self._deliveries.update_one(
                {"_id": key, "state": "sending", "owner": self.owner}, {"$set": {"lease_expires_ms": 0}}
            )
        except PyMongoError as e:  # the lease then simply runs out
            log.warning("could not release delivery claim %s: %s", key, e)

    async def begin(self, key: str, cause: Envelope[Any], channel: str) -> Claim | Envelope[Any]:
        """Claim ``key`` (a :class:`Claim`), or the stored outcome if this delivery is done.

        Raises :class:`DependencyDown` ``("ledger", ...)`` while another owner holds a live claim.
        """
        if key in self._active:
            raise DependencyDown("ledger", f"claim {key} is still being delivered by this process")
        now = _now_ms()
        expires = now + int(self._settings.ttl_s * 1000)
        lease_ends = now + int(self._settings.lease_s * 1000)
        try:
            await self._deliveries.insert_one(
                {
                    "_id": key,
                    "tenant_id": cause.tenant_id,
                    "invoice_id": cause.invoice_id,
                    "channel": channel,
                    "state": "sending",
                    "owner": self.owner,
                    "lease_expires_ms": expires,
                    "claimed_at": utcnow(),
                    "first_claimed_ms": now,
                    "attempts": 1,
                }
            )
            return Claim(self, key, channel, lease_ends)
        except DuplicateKeyError:
            pass
        # One compare-and-set per condition: nx-27017 applies an ``$or`` in findAndModify to the
        # wrong documents, and each plain filter is atomic on MongoDB and nx-27017 alike.
        for takeover in (
            {"owner": self.owner},  # our own earlier attempt, which ended (see ``_active``)
            {"lease_expires_ms": {"$lt": now}},
            {"lease_expires_ms": {"$exists": False}},  # claims written before leases existed
        ):
            taken = await self._deliveries.find_one_and_update(
                {"_id": key, "state": "sending", **takeover},
                {
                    "$set": {"owner": self.owner, "lease_expires_ms": expires},
                    "$inc": {"attempts": 1},
                    "$currentDate": {"claimed_at": True},
                },
                return_document=ReturnDocument.BEFORE,
            )
            if taken is not None:
                if taken.get("owner") != self.owner:
                    log.warning(
                        "took over an expired delivery claim", extra={"key": key, "previous_owner": taken.get("owner")}
                    )
                return Claim(self, key, channel, lease_ends, self._retry_since(taken))
        doc = await self._deliveries.find_one({"_id": key})
        if doc is not None and doc.get("state") == "done":
            return await self._stored(doc, "outcome")
        if doc is None:  # removed between our insert and our read: nothing to wait for
            raise DependencyDown("ledger", f"claim {key} vanished while being claimed")
        remaining = (int(doc.get("lease_expires_ms", 0)) - now) / 1000
        raise DependencyDown("ledger", f"claim held by {doc.get('owner')} for {max(remaining, 0):.1f} s more")

    def _retry_since(self, taken: Document) -> datetime:
        """Since when a provider may hold this delivery: its first claim, less the clock margin
        (the claim's host and the provider may keep different time). The epoch for a claim
        written before ``first_claimed_ms`` was."""
        first_ms = int(taken.get("first_claimed_ms", 0)) - int(self._settings.clock_margin_s * 1000)
        return datetime.fromtimestamp(max(first_ms, 0) / 1000, UTC)

    async def finish(self, key: str, channel: str, outcome: Envelope[Any]) -> Envelope[Any]:
        """Record ``outcome`` as done and return the outcome to publish.

        Records even when this process's lease was lost: the provider accepted, and "done" stops
        any further attempt. If another owner recorded first, its outcome is kept and returned
        (:class:`OutcomeErased` if its customer was erased meanwhile).
        """
        accepted_at = time.perf_counter()
        self._accepted[key] = outcome
        before = await self._deliveries.find_one_and_update(
            {"_id": key, "state": "sending"},
            {
                "$set": {
                    "state": "done",
                    **await self._sealed(outcome, "outcome"),
                    "owner": self.owner,
                    "provider_message_id": getattr(outcome.data, "provider_message_id", None),
                },
                "$currentDate": {"done_at": True},
            },
            return_document=ReturnDocument.BEFORE,
        )
        if before is not None:
            UNRECORDED_SECONDS.labels(channel=channel).observe(time.perf_counter() - accepted_at)
            if before.get("owner") != self.owner:
                log.warning(
                    "recorded a delivery whose claim another owner had taken over; it may send it again",
                    extra={"key": key, "other_owner": before.get("owner")},
                )
            del self._accepted[key]
            return outcome
        doc = await self._deliveries.find_one({"_id": key})
        if doc is None or doc.get("state") != "done":
            raise DependencyDown("ledger", f"could not record delivery {key} as done")
        if doc.get("owner") != self.owner:  # else our own earlier write landed but its answer was lost
            log.warning(
                "another owner recorded this delivery first; the provider got it twice",
                extra={"key": key, "other_owner": doc.get("owner")},
            )
        del self._accepted[key]
        return await self._stored(doc, "outcome")
