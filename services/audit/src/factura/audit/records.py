"""What one audit record says: built from an event, a dead letter or an API access, before chaining.

A record is a handful of indexed fields (who, which invoice, what happened, through which
channel, why) plus ``raw``: the bytes exactly as audit received them. Its canonical JSON
(:func:`canonical`), with its chain position, is what the hash chain covers, so changing an
indexed field, the raw bytes or the position of a stored record is detectable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from factura.common.envelope import TENANT_PATTERN, Envelope, utcnow
from factura.common.kafka.consumer import Message

#: The chain of records that name no tenant (reserved: no tenant may use it, see tenants.py).
UNIDENTIFIED_TENANT = "unidentified"
#: ``prev`` of a chain's first record.
GENESIS = "0" * 64

Kind = Literal["event", "dead_letter", "access"]
RetentionClass = Literal["fiscal", "engagement", "access"]

#: The status an event settles for its invoice, as compliance searches for it.
OUTCOMES: Mapping[str, str] = {
    "invoice.created": "pending",
    "invoice.rendered": "pending",
    "invoice.rejected": "rejected",
    "invoice.cancelled": "cancelled",
    "delivery.succeeded": "delivered",
    "delivery.failed": "failed",
    "delivery.exhausted": "exhausted",
    "payment.received": "paid",
}
#: Events about how a customer engaged with a message: kept for a shorter period than fiscal ones.
ENGAGEMENT = frozenset({"delivery.opened", "link.clicked", "document.downloaded"})
#: Indexed fields a record carries beside its raw bytes; all of them are inside the hashed JSON.
FIELDS = (
    "kind",
    "type",
    "schema_version",
    "invoice_id",
    "customer_id",
    "channel",
    "purpose",
    "outcome",
    "reason",
    "occurred_at",
    "recorded_at",
    "day",
    "class",
    "source",
)


@dataclass(frozen=True)
class NewRecord:
    """A record before the chain writer gives it a position."""

    id: str
    tenant_id: str
    fields: dict[str, Any]
    raw: str


def canonical(value: Mapping[str, Any]) -> str:
    """Sorted keys, no spaces, UTF-8 text: the same mapping always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_iso)


def to_ms(moment: datetime) -> datetime:
    """UTC, truncated to the millisecond: what a BSON date keeps, so a stored record re-hashes equal."""
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return to_ms(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    raise TypeError(f"not JSON: {type(value).__name__}")


def _fields(
    *,
    kind: Kind,
    type: str,
    occurred_at: datetime,
    source: str,
    schema_version: int | None = None,
    invoice_id: str | None = None,
    customer_id: str | None = None,
    channel: str | None = None,
    purpose: str | None = None,
    outcome: str | None = None,
    reason: str | None = None,
    retention: RetentionClass = "fiscal",
) -> dict[str, Any]:
    occurred = to_ms(occurred_at)
    return {
        "kind": kind,
        "type": type,
        "schema_version": schema_version,
        "invoice_id": invoice_id,
        "customer_id": customer_id,
        "channel": channel,
        "purpose": purpose,
        "outcome": outcome,
        "reason": reason,
        "occurred_at": occurred,
        "recorded_at": to_ms(utcnow()),
        "day": occurred.date().isoformat(),
        "class": retention,
        "source": source,
    }


def from_event(message: Message[Envelope[Any]]) -> NewRecord:
    """An event as received: its envelope bytes verbatim, its facts lifted into indexed fields."""
    event = message.value
    data = event.data
    notice = getattr(data, "notice", None)
    invoice = getattr(data, "invoice", None) or getattr(notice, "invoice", None)
    customer = getattr(data, "customer", None) or getattr(invoice, "customer", None)
    purpose = getattr(notice, "purpose", None) or getattr(data, "purpose", None)
    if purpose is None and event.type == "invoice.rendered":
        purpose = "invoice"
    channel = getattr(data, "channel", None)
    reason = getattr(data, "reason", None)
    if reason is None and event.type == "invoice.rejected":
        reason = "invalid"
    return NewRecord(
        id=str(event.event_id),
        tenant_id=event.tenant_id,
        fields=_fields(
            kind="event",
            type=event.type,
            schema_version=event.schema_version,
            invoice_id=event.invoice_id,
            customer_id=getattr(customer, "customer_id", None) or getattr(data, "customer_id", None),
            channel=str(channel) if channel is not None else None,
            purpose=str(purpose) if purpose is not None else None,
            outcome=OUTCOMES.get(event.type),
            reason=str(reason) if reason is not None else None,
            occurred_at=event.occurred_at,
            source=message.source,
            retention="engagement" if event.type in ENGAGEMENT else "fiscal",
        ),
        raw=message.raw.decode(),
    )


def from_dead_letter(message: Message[bytes]) -> NewRecord:
    """A DLQ arrival: why it was refused (headers), and the body as received (text, or hex if binary)."""
    headers = {k: v.decode(errors="replace") for k, v in message.headers.items()}
    tenant, invoice = _identify(message.raw)
    try:
        body, encoding = message.raw.decode(), "utf-8"
    except UnicodeDecodeError:
        body, encoding = message.raw.hex(), "hex"
    source = headers.get("dlq.source", message.source)
    service = headers.get("dlq.service", "unknown")
    raw = {
        "dlq_topic": message.topic.name,
        "dlq_position": message.source,
        "source_topic": message.topic.dead_letters_of or message.topic.name,
        "service": service,
        "error": headers.get("dlq.error", ""),
        "attempts": _count(headers.get("dlq.attempts")),
        "key": message.key.decode(errors="replace") if message.key else None,
        "headers": headers,
        "body": body,
        "body_encoding": encoding,
    }
    return NewRecord(
        id=f"dlq:{service}:{source}",
        tenant_id=tenant or UNIDENTIFIED_TENANT,
        fields=_fields(
            kind="dead_letter",
            type="dead_letter",
            invoice_id=invoice,
            outcome="dead_lettered",
            reason=headers.get("dlq.reason", "unknown"),
            occurred_at=utcnow(),
            source=source,
        ),
        raw=canonical(raw),
    )


def access(
    *, record_id: str, tenant_id: str, key_id: str, role: str, method: str, path: str, query: str, status: int
) -> NewRecord:
    """One API call: who (key and role), what (method, path, query), when, and what it was answered."""
    raw = {"key_id": key_id, "role": role, "method": method, "path": path, "query": query, "status": status}
    return NewRecord(
        id=record_id,
        tenant_id=tenant_id,
        fields=_fields(kind="access", type="api.access", occurred_at=utcnow(), source="api", retention="access"),
        raw=canonical(raw),
    )


def _count(value: str | None) -> int | None:
    """A header that should hold a count; None if it does not (audit records what it got, never fails)."""
    return int(value) if value is not None and value.isdigit() and len(value) < 10 else None


def _identify(raw: bytes) -> tuple[str | None, str | None]:
    """Tenant and invoice from an envelope or an ERP message, if the body is readable JSON."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(value, dict):
        return None, None
    tenant = value.get("tenant_id")
    invoice = value.get("invoice_id") or value.get("invoice_number")
    return (
        tenant if isinstance(tenant, str) and re.fullmatch(TENANT_PATTERN, tenant) else None,
        invoice if isinstance(invoice, str) and len(invoice) <= 200 and _text(invoice) else None,
    )


def _text(value: str) -> bool:
    """Encodable as UTF-8: JSON may carry a lone surrogate (``"\\ud800"``) that no record can hold."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True
