"""Who reads and who writes which topic: the one table the Kafka ACLs are generated from.

Each service's bootstrap decides what it consumes (its consumer routes) and its handlers decide
what it publishes; this table states both so the platform can grant exactly that and nothing
more (``python -m factura.common.kafka.strimzi`` turns it into Strimzi ``KafkaUser`` ACLs).
``tests/unit/test_topic_access.py`` checks it against the bootstraps' routes and against what the
handlers publish in the unit tests.

Names are logical (``invoice.created``); a deployment's ``topic_prefix`` and the consumer group's
prefix are applied where the cluster needs physical names.
"""

from __future__ import annotations

from dataclasses import dataclass

from factura.common.topics import (
    DELIVERY_EXHAUSTED,
    DELIVERY_FAILED,
    DELIVERY_OPENED,
    DELIVERY_SUCCEEDED,
    DOCUMENT_DOWNLOADED,
    ERP_CANCELLATIONS,
    ERP_INVOICES,
    ERP_PAYMENTS,
    INVOICE_CANCELLED,
    INVOICE_CREATED,
    INVOICE_REJECTED,
    INVOICE_RENDERED,
    LINK_CLICKED,
    PAYMENT_RECEIVED,
    PAYMENT_UNMATCHED,
    RECEIPT_DUE,
    REMINDER_DUE,
    REPORT_DUE,
    TICKET_DUE,
    TICKET_FAILED,
    TICKET_OPENED,
    Topic,
    dead_letter_topics,
    event_topics,
    resolve,
)


@dataclass(frozen=True)
class ServiceAccess:
    """One service's Kafka principal: what it consumes and what it publishes."""

    service: str
    #: Logical names of the topics its consumer subscribes to.
    reads: tuple[str, ...]
    #: Logical names of the topics it publishes to, besides the dead-letter topics of its reads.
    produces: tuple[str, ...]

    @property
    def group(self) -> str:
        """The consumer group (``factura.common.runtime`` names it after the service)."""
        return f"factura-{self.service}"

    @property
    def principal(self) -> str:
        """The Kafka user (Strimzi ``KafkaUser`` and its Secret carry this name)."""
        return f"factura-{self.service}"

    def dead_letters(self) -> frozenset[str]:
        """The consumer loop dead-letters a message of topic ``t`` to ``t.dlq``; a message of a
        DLQ topic is never dead-lettered again (see ``DeadLetters.send``)."""
        return frozenset(resolve(name).dlq() for name in self.reads if resolve(name).dead_letters_of is None)

    def writes(self) -> frozenset[str]:
        """Every topic this principal may write: its produces and the DLQs of what it reads."""
        return frozenset(self.produces) | self.dead_letters()


def _names(*topics: Topic) -> tuple[str, ...]:
    return tuple(t.name for t in topics)


#: Topics a sender (email or SMS) consumes: anything that can ask it to deliver
#: (``factura.common.delivery.sender.REQUEST_TOPICS``).
_SENDER_READS = _names(INVOICE_RENDERED, REMINDER_DUE, RECEIPT_DUE, REPORT_DUE, DELIVERY_FAILED)
_SENDER_PRODUCES = _names(DELIVERY_SUCCEEDED, DELIVERY_FAILED, DELIVERY_EXHAUSTED)

SERVICES: dict[str, ServiceAccess] = {
    a.service: a
    for a in (
        ServiceAccess(
            "ingest",
            reads=_names(ERP_INVOICES, ERP_PAYMENTS, ERP_CANCELLATIONS),
            # erp.invoices: bulk imports and the SFTP drop re-publish each row as an ERP message,
            # so every door shares one intake.
            produces=_names(ERP_INVOICES, INVOICE_CREATED, INVOICE_REJECTED, INVOICE_CANCELLED, PAYMENT_RECEIVED),
        ),
        ServiceAccess(
            "renderer",
            reads=_names(INVOICE_CREATED),
            # The link host (downloads, short links, open pixel) runs in the renderer.
            produces=_names(INVOICE_RENDERED, INVOICE_REJECTED, DOCUMENT_DOWNLOADED, DELIVERY_OPENED, LINK_CLICKED),
        ),
        ServiceAccess("email-sender", reads=_SENDER_READS, produces=_SENDER_PRODUCES),
        ServiceAccess("sms-sender", reads=_SENDER_READS, produces=_SENDER_PRODUCES),
        ServiceAccess(
            "scheduler",
            # ticket.due only where a helpdesk is configured; granted always so turning it on
            # needs no ACL change.
            reads=_names(
                INVOICE_CREATED,
                INVOICE_REJECTED,
                INVOICE_RENDERED,
                INVOICE_CANCELLED,
                PAYMENT_RECEIVED,
                DELIVERY_SUCCEEDED,
                TICKET_DUE,
            ),
            produces=_names(REMINDER_DUE, RECEIPT_DUE, TICKET_DUE, PAYMENT_UNMATCHED, TICKET_OPENED, TICKET_FAILED),
        ),
        ServiceAccess(
            "audit",
            reads=tuple(t.name for t in (*event_topics(), *dead_letter_topics())),
            produces=_names(REPORT_DUE),
        ),
    )
}


def writers_of(topic: str) -> frozenset[str]:
    """The services that may write ``topic`` (logical name)."""
    return frozenset(a.service for a in SERVICES.values() if topic in a.writes())


def readers_of(topic: str) -> frozenset[str]:
    """The services that consume ``topic`` (logical name)."""
    return frozenset(a.service for a in SERVICES.values() if topic in a.reads)
