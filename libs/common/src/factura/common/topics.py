"""The topic registry: every topic the product uses, in one place.

Logical names (``invoice.created``) are what code and docs use; the physical name adds the
deployment's prefix (``staging.invoice.created``) so several environments or test runs can share
one cluster. Every topic that a consumer reads has a dead-letter topic ``<physical>.dlq``.

Partition counts live here too, for every environment (Strimzi's manifests, the devstack, the
tests): a consumer handles one message at a time per partition, so the count is how many
invoices a service can have in hand at once. Topics that carry a message per invoice get
:data:`HOT_PARTITIONS`; those with a message per exception (cancellations, unmatched payments,
exhausted deliveries, tickets, daily reports) and the DLQs get :data:`COLD_PARTITIONS`. See
``docs/operations.md``, "Scale", for why the numbers are fixed up front.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: 12 pods of a consumer at most, and 1, 2, 3, 4 or 6 pods share them evenly.
HOT_PARTITIONS = 12
#: One per broker of a 3-broker cluster: enough for a message per exception.
COLD_PARTITIONS = 3


@dataclass(frozen=True)
class Topic:
    name: str
    description: str
    partitions: int = HOT_PARTITIONS
    #: False for inbound ERP topics (raw JSON in the ERP contract) and dead-letter topics.
    enveloped: bool = True
    #: For a dead-letter topic, the logical name of the topic its messages came from.
    dead_letters_of: str | None = None

    def physical(self, prefix: str = "") -> str:
        return f"{prefix}{self.name}"

    def dead_letter_topic(self) -> Topic:
        return Topic(
            f"{self.name}.dlq",
            f"Messages of {self.name} that were invalid or hit a bug, with dlq.* headers saying why.",
            COLD_PARTITIONS,
            enveloped=False,
            dead_letters_of=self.name,
        )

    def dlq(self, prefix: str = "") -> str:
        return self.dead_letter_topic().physical(prefix)


ERP_INVOICES = Topic("erp.invoices", "Raw invoices from ERP systems (ERP contract erp.invoice v1).", enveloped=False)
ERP_PAYMENTS = Topic("erp.payments", "Raw payments from ERP systems (ERP contract erp.payment v1).", enveloped=False)
ERP_CANCELLATIONS = Topic(
    "erp.cancellations",
    "Raw cancellations and credit notes from ERP systems (erp.cancellation v1).",
    enveloped=False,
    partitions=COLD_PARTITIONS,
)
INVOICE_CANCELLED = Topic(
    "invoice.cancelled", "An invoice cancelled or fully credited by its ERP.", partitions=COLD_PARTITIONS
)
INVOICE_CREATED = Topic("invoice.created", "A validated, normalised invoice.")
INVOICE_REJECTED = Topic("invoice.rejected", "An ERP message refused, with field-level reasons.")
INVOICE_RENDERED = Topic("invoice.rendered", "The invoice PDF is stored in S3.")
DELIVERY_SUCCEEDED = Topic("delivery.succeeded", "A channel delivered a message (invoice, reminder, receipt).")
DELIVERY_FAILED = Topic("delivery.failed", "A channel did not deliver a message, why, and which channel is next.")
DELIVERY_EXHAUSTED = Topic(
    "delivery.exhausted",
    "Every allowed channel failed for a message; the chain of reasons.",
    partitions=COLD_PARTITIONS,
)
DELIVERY_OPENED = Topic("delivery.opened", "An email's open pixel was fetched (tracking, where the tenant asks).")
LINK_CLICKED = Topic("link.clicked", "A tracked payment or download link was followed.")
DOCUMENT_DOWNLOADED = Topic("document.downloaded", "A customer opened a signed download link.")
PAYMENT_RECEIVED = Topic("payment.received", "A validated payment against an invoice.")
PAYMENT_UNMATCHED = Topic(
    "payment.unmatched", "A payment not counted toward its invoice, with the reason.", partitions=COLD_PARTITIONS
)
REMINDER_DUE = Topic("reminder.due", "A reminder step is due for an unpaid invoice.")
RECEIPT_DUE = Topic("receipt.due", "An invoice was paid in full; thank the customer.")
REPORT_DUE = Topic(
    "report.due",
    "A tenant's daily summary is due to its process owner (audit publishes it).",
    partitions=COLD_PARTITIONS,
)
TICKET_DUE = Topic("ticket.due", "An invoice long overdue needs a helpdesk ticket.", partitions=COLD_PARTITIONS)
TICKET_OPENED = Topic("ticket.opened", "The helpdesk accepted a ticket.", partitions=COLD_PARTITIONS)
TICKET_FAILED = Topic("ticket.failed", "The helpdesk refused a ticket for good.", partitions=COLD_PARTITIONS)

REGISTRY: dict[str, Topic] = {
    t.name: t
    for t in (
        ERP_INVOICES,
        ERP_PAYMENTS,
        ERP_CANCELLATIONS,
        INVOICE_CREATED,
        INVOICE_CANCELLED,
        INVOICE_REJECTED,
        INVOICE_RENDERED,
        DELIVERY_SUCCEEDED,
        DELIVERY_FAILED,
        DELIVERY_EXHAUSTED,
        DELIVERY_OPENED,
        LINK_CLICKED,
        DOCUMENT_DOWNLOADED,
        PAYMENT_RECEIVED,
        PAYMENT_UNMATCHED,
        REMINDER_DUE,
        RECEIPT_DUE,
        REPORT_DUE,
        TICKET_DUE,
        TICKET_OPENED,
        TICKET_FAILED,
    )
}


def dead_letter_topics() -> list[Topic]:
    """One dead-letter topic per registered topic (audit records them, the DLQ tool replays them)."""
    return [t.dead_letter_topic() for t in REGISTRY.values()]


def resolve(name: str) -> Topic:
    """A registered topic or a registered topic's dead-letter topic, by logical name."""
    if name in REGISTRY:
        return REGISTRY[name]
    source = name.removesuffix(".dlq")
    if source != name and source in REGISTRY:
        return REGISTRY[source].dead_letter_topic()
    raise KeyError(f"unknown topic {name!r}")


def topic_for_event(event_type: str) -> Topic:
    """Each event type is published on the topic of the same name."""
    return REGISTRY[event_type]


def event_topics() -> list[Topic]:
    """Topics that carry enveloped events (what audit records)."""
    return [t for t in REGISTRY.values() if t.enveloped]


def all_physical_names(prefix: str = "", topics: Iterable[Topic] | None = None) -> list[str]:
    """Every topic and its DLQ, as the cluster must have them."""
    names: list[str] = []
    for t in topics if topics is not None else REGISTRY.values():
        names += [t.physical(prefix), t.dlq(prefix)]
    return names
