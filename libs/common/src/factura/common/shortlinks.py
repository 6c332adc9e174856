"""Short links (``/l/<id>``, ``/o/<id>.gif``) stored in MongoDB, resolved by the public link host.

A signed download link is ~250 characters; an SMS carrying it and a payment link would need
three segments. A short link is ``<base>/l/<8 base62 chars>`` and also lets the link host record
the click before redirecting (and serve the email open pixel).

Ids are the HMAC of a caller-chosen seed (e.g. the delivery's ledger key plus the link kind):
unguessable without the secret, and the same on a retried send, so a redelivered message carries
the very same links. Two seeds whose 8-character prefixes collide get a longer id for the later one.

An expired link still resolves: the endpoint then says "expired" in the customer's language
instead of "unknown". Documents are purged by a TTL index ``PURGE_AFTER`` past their expiry.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, cast

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from factura.common.events import LinkChannel
from factura.common.mongo import Document

LinkKind = Literal["download", "payment", "open"]
ID_CHARS = 8
#: Longest id tried before giving up (each extra character divides the collision odds by 62).
MAX_ID_CHARS = 16
PURGE_AFTER = timedelta(days=90)
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID = re.compile(rf"^[0-9A-Za-z]{{{ID_CHARS},{MAX_ID_CHARS}}}$")


@dataclass(frozen=True)
class ShortLink:
    id: str
    tenant_id: str
    invoice_id: str
    kind: LinkKind
    target: str | None  # None for "open"
    channel: LinkChannel
    purpose: str
    locale: str
    correlation_id: str
    created_at_ms: int
    expires_at_ms: int
    track: bool


def short_url(base_url: str, link_id: str, kind: LinkKind) -> str:
    """``<base>/l/<id>``, or ``<base>/o/<id>.gif`` for the open pixel."""
    base = base_url.rstrip("/")
    return f"{base}/o/{link_id}.gif" if kind == "open" else f"{base}/l/{link_id}"


def _base62(digest: bytes) -> str:
    """All of ``digest`` in base62, least significant digit first, so every prefix is uniform."""
    number, digits = int.from_bytes(digest, "big"), []
    while number:
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(digits)


class ShortLinks:
    """The short-link store; MongoDB errors propagate (senders treat them as an outage)."""

    def __init__(self, collection: AsyncCollection[Document], secret: bytes) -> None:
        if not secret:
            raise ValueError("short-link secret must not be empty")
        self._links = collection
        self._secret = secret

    async def ensure_indexes(self) -> None:
        await self._links.create_index("purge_at", expireAfterSeconds=0)

    async def shorten(
        self,
        *,
        seed: str,
        tenant_id: str,
        invoice_id: str,
        kind: LinkKind,
        target: str | None,
        channel: LinkChannel,
        purpose: str,
        locale: str,
        correlation_id: str,
        expires_at_ms: int,
        track: bool,
    ) -> str:
        """The id of the link for ``seed``: stored on first use, the same id (and record) afterwards."""
        if (target is None) != (kind == "open"):
            raise ValueError("a target is required for download and payment links, and absent for open")
        mac = hmac.new(self._secret, seed.encode(), hashlib.sha256).digest()
        fingerprint, full = mac.hex(), _base62(mac)
        record: Document = {
            "seed": fingerprint,  # the seed itself may carry personal data: keep only its MAC
            "tenant_id": tenant_id,
            "invoice_id": invoice_id,
            "kind": kind,
            "target": target,
            "channel": channel,
            "purpose": purpose,
            "locale": locale,
            "correlation_id": correlation_id,
            "created_at_ms": int(time.time() * 1000),
            "expires_at_ms": expires_at_ms,
            "track": track,
            "purge_at": datetime.fromtimestamp(expires_at_ms / 1000, UTC) + PURGE_AFTER,
        }
        length = ID_CHARS
        for _ in range(2 * MAX_ID_CHARS):  # bounded: each round lengthens the id or saw a purge race
            link_id = full[:length]
            try:
                await self._links.insert_one({"_id": link_id, **record})
                return link_id
            except DuplicateKeyError:
                existing = await self._links.find_one({"_id": link_id}, {"seed": 1})
            if existing is None:
                continue  # purged between our insert and read: try the same id again
            if existing.get("seed") == fingerprint:
                return link_id  # the same seed: a retried send
            length += 1
            if length > MAX_ID_CHARS:
                break
        raise RuntimeError(f"no free short-link id up to {MAX_ID_CHARS} characters")

    async def resolve(self, link_id: str) -> ShortLink | None:
        """The link, expired or not; ``None`` when unknown (or not even shaped like an id)."""
        if not _ID.match(link_id):
            return None
        doc = await self._links.find_one({"_id": link_id})
        if doc is None:
            return None
        return ShortLink(
            id=link_id,
            tenant_id=doc["tenant_id"],
            invoice_id=doc["invoice_id"],
            kind=cast(LinkKind, doc["kind"]),
            target=doc["target"],
            channel=cast(LinkChannel, doc["channel"]),
            purpose=doc["purpose"],
            locale=doc["locale"],
            correlation_id=doc["correlation_id"],
            created_at_ms=doc["created_at_ms"],
            expires_at_ms=doc["expires_at_ms"],
            track=doc["track"],
        )
