"""What one audit record says: built from an event, a dead letter or an API access, before chaining.

A record is a handful of indexed fields (who, which invoice, what happened, through which
channel, why) plus ``raw``: the bytes as audit received them, except the customer's contact data
(:func:`protect`). Its canonical JSON (:func:`canonical`), with its chain position, is what the
hash chain covers, so changing an indexed field, the raw bytes or the position of a stored record
is detectable.

**Personal data.** Before a record is chained, :func:`protect` replaces the contact fields in its
raw JSON (a customer's name, email, phone, push token and address; in delivery events also the
recipient and the provider's text, which quotes the address) by tokens under the customer's data
key (:mod:`factura.common.pii`). The hash covers the tokens, so destroying the key (erasure) leaves
every hash intact and the chain verifying, while the fiscal fields beside them (invoice number,
amounts, dates) stay in the clear. :func:`reveal` is the read side: tokens decrypted for a reader,
``[erased]`` once the key is gone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from factura.common.envelope import TENANT_PATTERN, Envelope, utcnow
from factura.common.kafka.consumer import Message
from factura.common.pii import CONTACT_FIELDS, FieldCipher, is_token

#: The chain of records that name no tenant (reserved: no tenant may use it, see tenants.py).
UNIDENTIFIED_TENANT = "unidentified"
#: ``prev`` of a chain's first record.
GENESIS = "0" * 64

Kind = Literal["event", "dead_letter", "access", "erasure"]
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
#: A customer's data key was destroyed (``POST /v1/customers/{id}/erase``).
ERASURE_TYPE = "customer.erased"
#: Fields of ``delivery.*`` events that name or quote the recipient's address (SMTP replies,
#: DSNs and webhook bodies repeat it).
MESSAGE_FIELDS = frozenset({"recipient", "detail", "evidence"})
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


def erasure(
    *,
    record_id: str,
    tenant_id: str,
    customer_id: str,
    key_id: str,
    role: str,
    data_key_id: str,
    reason: Literal["erasure_request", "contact_retention"] = "erasure_request",
) -> NewRecord:
    """A customer's erasure: who asked (API key and role; ``retention`` for the contact retention
    period), when, which customer (a pseudonymous id) and which data key was destroyed. Kept as
    long as fiscal records: it is what proves the erasure."""
    raw = {"customer_id": customer_id, "key_id": key_id, "role": role, "data_key_id": data_key_id}
    return NewRecord(
        id=record_id,
        tenant_id=tenant_id,
        fields=_fields(
            kind="erasure",
            type=ERASURE_TYPE,
            customer_id=customer_id,
            outcome="erased",
            reason=reason,
            occurred_at=utcnow(),
            source="api",
        ),
        raw=canonical(raw),
    )


async def protect(record: NewRecord, cipher: FieldCipher) -> NewRecord:
    """``record`` with the contact data in its raw JSON encrypted (module docstring): an event's
    data, or the body of a dead letter when it is JSON. A record that names no customer, or whose
    raw holds no contact data, is returned unchanged."""
    kind = record.fields.get("kind")
    if kind == "event":
        envelope = _json(record.raw)
        customer = record.fields.get("customer_id")
        if not isinstance(envelope, dict) or not isinstance(customer, str):
            return record
        sealer = _Sealer(cipher, record.tenant_id, str(record.fields.get("type", "")).startswith("delivery."))
        await sealer.walk(envelope.get("data"), customer)
        return replace(record, raw=_dumps(envelope)) if sealer.customers else record
    if kind == "dead_letter" and record.tenant_id != UNIDENTIFIED_TENANT:
        raw = _json(record.raw)
        body = _json(raw.get("body")) if isinstance(raw, dict) and raw.get("body_encoding") == "utf-8" else None
        if not isinstance(raw, dict) or not isinstance(body, dict):
            return record
        customer = _first_customer(body, None)  # a refused event's recipient belongs to it
        sealer = _Sealer(cipher, record.tenant_id, str(body.get("type", "")).startswith("delivery."))
        await sealer.walk(body, customer)
        if not sealer.customers:
            return record
        fields = record.fields | {"customer_id": customer}
        return replace(record, fields=fields, raw=canonical(raw | {"body": _dumps(body)}))
    return record


async def reveal(doc: Mapping[str, Any], value: Any, cipher: FieldCipher) -> Any:
    """``value`` (a stored record's parsed raw JSON, or part of it) with every token decrypted,
    or ``[erased]`` where the customer's key was destroyed. A dead letter's JSON body is revealed
    inside its text."""
    tenant, customer = str(doc.get("tenant_id")), doc.get("customer_id")
    out = await _reveal(cipher, tenant, value, customer if isinstance(customer, str) else None, None)
    if doc.get("kind") == "dead_letter" and isinstance(out, dict) and isinstance(out.get("body"), str):
        body = _json(out["body"])
        if isinstance(body, dict):
            out["body"] = _dumps(
                await _reveal(cipher, tenant, body, customer if isinstance(customer, str) else None, None)
            )
    return out


def _customer_of(value: Mapping[str, Any], parent_key: str | None) -> str | None:
    """The id of a customer object: ``customer_id`` (events), or ``id`` under ``customer`` (ERP)."""
    own = value.get("customer_id") if "customer_id" in value else value.get("id") if parent_key == "customer" else None
    return own if isinstance(own, str) and own else None


def _first_customer(value: Any, key: str | None) -> str | None:
    """The id of the first customer object in ``value`` (depth first), if any."""
    if isinstance(value, list):
        return next((c for item in value if (c := _first_customer(item, None)) is not None), None)
    if not isinstance(value, dict):
        return None
    own = _customer_of(value, key)
    if own is not None:
        return own
    return next((c for name, item in value.items() if (c := _first_customer(item, name)) is not None), None)


class _Sealer:
    def __init__(self, cipher: FieldCipher, tenant: str, delivery: bool) -> None:
        self._cipher = cipher
        self._tenant = tenant
        self._delivery = delivery
        self.customers: set[str] = set()

    async def walk(self, value: Any, customer: str | None, key: str | None = None) -> None:
        if isinstance(value, list):
            for item in value:
                await self.walk(item, customer)
        if not isinstance(value, dict):
            return
        own = _customer_of(value, key)
        who = own or customer
        for name, item in value.items():
            personal = (own is not None and name in CONTACT_FIELDS) or (self._delivery and name in MESSAGE_FIELDS)
            if personal and who is not None and item is not None and not is_token(item):
                value[name] = await self._cipher.encrypt_value(self._tenant, who, name, item)
                self.customers.add(who)
            else:
                await self.walk(item, who, name)


async def _reveal(cipher: FieldCipher, tenant: str, value: Any, customer: str | None, key: str | None) -> Any:
    if isinstance(value, list):
        return [await _reveal(cipher, tenant, item, customer, key) for item in value]
    if isinstance(value, dict):
        who = _customer_of(value, key) or customer
        return {name: await _reveal(cipher, tenant, item, who, name) for name, item in value.items()}
    if is_token(value) and key is not None:
        return await cipher.reveal(tenant, customer, key, value)
    return value


def _json(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _dumps(value: Any) -> str:
    """JSON as received (key order kept), compact: what a protected raw is stored as."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


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
