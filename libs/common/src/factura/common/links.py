"""Signed, expiring download links (HMAC-SHA256), verifiable without any lookup.

A link is ``<base>/d/<token>`` with ``token = b64url(payload) "." b64url(HMAC-SHA256(secret, b64url(payload)))``.
The payload is compact JSON with one-letter keys (the link often travels by SMS, where every
character costs): ``v`` format version, ``t`` tenant, ``i`` invoice, ``b`` bucket, ``k`` key,
``h`` sha256 (raw digest, base64url), ``n`` channel, ``e`` expiry (unix s), ``l`` link id, and
``f`` filename / ``c`` content type / ``r`` correlation id / ``g`` customer language only when
they differ from their defaults (key basename / ``application/pdf`` / ``<tenant>/<invoice>`` /
``en``). Tokens minted before ``g`` existed still verify: their language is then unknown and the
download endpoint falls back to the browser's ``Accept-Language``.

An expired but authentic token raises :class:`ExpiredLink` (a kind of :class:`InvalidLink`) with its
claims, so the endpoint can say "expired, ask <seller> for a new one" in the customer's language;
a forged one only ever gets the generic refusal.

Client addresses are pseudonymised with a key of their own (``LinkSettings.pseudonym_secret``):
whoever may verify links need not be able to link pseudonyms, and rotating one key leaves the
other alone.

Verification tries the current secret, then any old ones, so the secret can rotate without
breaking links already sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast, get_args

from factura.common.events import LOCALES, DocumentRef, LinkChannel
from factura.common.settings import LinkSettings

CHANNELS: frozenset[str] = frozenset(get_args(LinkChannel))
FORMAT_VERSION = 1
DEFAULT_CONTENT_TYPE = "application/pdf"
DEFAULT_LOCALE = "en"
#: Anything longer was not minted by us: refuse it before doing any work.
MAX_TOKEN_CHARS = 2048

_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED = {"v", "t", "i", "b", "k", "h", "n", "e", "l"}
_OPTIONAL = {"f", "c", "r", "g"}


class InvalidLink(Exception):
    """Any reason a token is refused. The message is for logs only, never for the client."""


class ExpiredLink(InvalidLink):
    """An authentic token past its expiry: the claims may be shown to the customer (who, whom to ask)."""

    def __init__(self, claims: LinkClaims) -> None:
        super().__init__(f"expired at {claims.expires_at}")
        self.claims = claims


@dataclass(frozen=True)
class LinkClaims:
    """What a verified link grants: one document of one invoice, until ``expires_at``."""

    tenant_id: str
    invoice_id: str
    bucket: str
    key: str
    filename: str
    content_type: str
    sha256: str
    channel: LinkChannel
    expires_at: int
    link_id: str
    correlation_id: str
    #: The customer's language; ``None`` for tokens that do not say (older ones).
    locale: str | None = None

    def document(self, size_bytes: int) -> DocumentRef:
        """The document as events describe it (the size is only known once it is fetched)."""
        return DocumentRef.model_validate(
            {
                "bucket": self.bucket,
                "key": self.key,
                "sha256": self.sha256,
                "size_bytes": size_bytes,
                "content_type": self.content_type,
                "filename": self.filename,
            }
        )


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict base64url: alphabet only, and canonical (so one token has exactly one spelling)."""
    if not _B64URL.match(text):
        raise InvalidLink("not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise InvalidLink(f"bad base64: {e}") from e
    if _b64encode(raw) != text:
        raise InvalidLink("non-canonical base64")
    return raw


def _default_filename(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def _default_correlation(tenant_id: str, invoice_id: str) -> str:
    return f"{tenant_id}/{invoice_id}"


class LinkSigner:
    """Mints and checks download links; one instance per process, built from :class:`LinkSettings`."""

    def __init__(
        self,
        secret: bytes,
        default_base_url: str,
        ttl_s: int,
        old_secrets: Sequence[bytes] = (),
        *,
        pseudonym_secret: bytes = b"",
    ) -> None:
        # An empty secret would sign links anyone can forge: fail at startup, not in production traffic.
        if not secret:
            raise ValueError("link secret must not be empty")
        if any(not s for s in old_secrets):
            raise ValueError("old link secrets must not be empty")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        if pseudonym_secret and pseudonym_secret in (secret, *old_secrets):
            raise ValueError("the pseudonym secret must differ from the link secrets")
        self._secrets: tuple[bytes, ...] = (secret, *old_secrets)
        self._pseudonym_secret = pseudonym_secret
        self._base_url = default_base_url.rstrip("/")
        self._ttl_s = ttl_s

    @classmethod
    def from_settings(
        cls, settings: LinkSettings, old_secrets: Sequence[bytes] = (), *, require_pseudonym: bool = False
    ) -> LinkSigner:
        """``require_pseudonym``: the process records client hits (the public link host), so it must
        be able to pseudonymise addresses; checked here so a missing key fails at startup."""
        pseudonym_secret = settings.pseudonym_secret.get_secret_value().encode()
        if require_pseudonym and not pseudonym_secret:
            raise ValueError("links.pseudonym_secret must not be empty where link hits are recorded")
        return cls(
            settings.secret.get_secret_value().encode(),
            settings.base_url,
            settings.ttl_s,
            old_secrets,
            pseudonym_secret=pseudonym_secret,
        )

    def pseudonym(self, value: str) -> str:
        """A keyed hash of personal data (a client IP): comparable, but not reversible by brute force."""
        if not self._pseudonym_secret:
            raise ValueError("no pseudonym secret configured")
        return hmac.new(self._pseudonym_secret, b"pseudonym:" + value.encode(), hashlib.sha256).hexdigest()

    def _mac(self, secret: bytes, payload: str) -> bytes:
        return hmac.new(secret, payload.encode("ascii"), hashlib.sha256).digest()

    def sign(
        self,
        *,
        tenant_id: str,
        invoice_id: str,
        bucket: str,
        key: str,
        sha256: str,
        channel: LinkChannel,
        filename: str | None = None,
        content_type: str = DEFAULT_CONTENT_TYPE,
        correlation_id: str | None = None,
        link_id: str | None = None,
        base_url: str | None = None,
        ttl_s: int | None = None,
        now: float | None = None,
        locale: str | None = None,
    ) -> str:
        """A full link URL. ``base_url`` is the tenant's white-label domain, if it has one.

        Pass a deterministic ``link_id`` (e.g. derived from the causing event) to mint the same
        link again on redelivery; otherwise a random one is drawn.
        """
        if not _SHA256_HEX.match(sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}")
        if locale is not None and locale not in LOCALES:
            raise ValueError(f"unknown locale {locale!r}")
        issued = time.time() if now is None else now
        payload: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "t": tenant_id,
            "i": invoice_id,
            "b": bucket,
            "k": key,
            "h": _b64encode(bytes.fromhex(sha256)),
            "n": channel,
            "e": int(issued) + (self._ttl_s if ttl_s is None else ttl_s),
            "l": link_id or secrets.token_urlsafe(6),
        }
        # Defaults are left out: they are what makes the link fit in fewer SMS segments.
        if filename is not None and filename != _default_filename(key):
            payload["f"] = filename
        if content_type != DEFAULT_CONTENT_TYPE:
            payload["c"] = content_type
        if correlation_id is not None and correlation_id != _default_correlation(tenant_id, invoice_id):
            payload["r"] = correlation_id
        if locale is not None and locale != DEFAULT_LOCALE:
            payload["g"] = locale
        body = _b64encode(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        token = f"{body}.{_b64encode(self._mac(self._secrets[0], body))}"
        return f"{(base_url or self._base_url).rstrip('/')}/d/{token}"

    def sign_document(
        self,
        document: DocumentRef,
        *,
        tenant_id: str,
        invoice_id: str,
        channel: LinkChannel,
        correlation_id: str | None = None,
        link_id: str | None = None,
        base_url: str | None = None,
        ttl_s: int | None = None,
        now: float | None = None,
        locale: str | None = None,
    ) -> str:
        """:meth:`sign` for the :class:`DocumentRef` that senders already hold from ``invoice.rendered``."""
        return self.sign(
            tenant_id=tenant_id,
            invoice_id=invoice_id,
            bucket=document.bucket,
            key=document.key,
            sha256=document.sha256,
            channel=channel,
            filename=document.filename,
            content_type=document.content_type,
            correlation_id=correlation_id,
            link_id=link_id,
            base_url=base_url,
            ttl_s=ttl_s,
            now=now,
            locale=locale,
        )

    def verify(self, token: str, now: float | None = None) -> LinkClaims:
        """The claims of an authentic, unexpired token.

        :class:`ExpiredLink` for an authentic token past its time, :class:`InvalidLink` for anything else.
        """
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise InvalidLink("empty or oversized token")
        parts = token.split(".")
        if len(parts) != 2:
            raise InvalidLink("token is not <payload>.<signature>")
        body, signature = parts
        given, raw = _b64decode(signature), _b64decode(body)
        # Signature before parsing: nothing an attacker wrote reaches the JSON parser.
        if not any(hmac.compare_digest(given, self._mac(secret, body)) for secret in self._secrets):
            raise InvalidLink("bad signature")
        claims = _parse(raw)
        if (time.time() if now is None else now) >= claims.expires_at:
            raise ExpiredLink(claims)
        return claims


def _text(payload: dict[str, Any], name: str) -> str:
    value = payload[name]
    if not isinstance(value, str) or not value:
        raise InvalidLink(f"field {name!r} is not a non-empty string")
    return value


def _parse(raw: bytes) -> LinkClaims:
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidLink(f"payload is not JSON: {e}") from e
    if not isinstance(payload, dict):
        raise InvalidLink("payload is not an object")
    if payload.get("v") != FORMAT_VERSION:
        raise InvalidLink(f"unsupported token version {payload.get('v')!r}")
    missing = _REQUIRED - payload.keys()
    if missing:
        raise InvalidLink(f"missing fields {sorted(missing)}")
    unknown = payload.keys() - _REQUIRED - _OPTIONAL
    if unknown:
        raise InvalidLink(f"unknown fields {sorted(unknown)}")
    expires_at = payload["e"]
    if not isinstance(expires_at, int) or isinstance(expires_at, bool):
        raise InvalidLink("field 'e' is not an integer")
    channel = _text(payload, "n")
    if channel not in CHANNELS:
        raise InvalidLink(f"unknown channel {channel!r}")
    digest = _b64decode(_text(payload, "h"))
    if len(digest) != 32:
        raise InvalidLink("field 'h' is not a sha256 digest")
    tenant_id, invoice_id, key = _text(payload, "t"), _text(payload, "i"), _text(payload, "k")
    locale = _text(payload, "g") if "g" in payload else None
    if locale is not None and locale not in LOCALES:
        raise InvalidLink(f"unknown locale {locale!r}")
    return LinkClaims(
        tenant_id=tenant_id,
        invoice_id=invoice_id,
        bucket=_text(payload, "b"),
        key=key,
        filename=_text(payload, "f") if "f" in payload else _default_filename(key),
        content_type=_text(payload, "c") if "c" in payload else DEFAULT_CONTENT_TYPE,
        sha256=digest.hex(),
        channel=cast(LinkChannel, channel),  # checked against CHANNELS above
        expires_at=expires_at,
        link_id=_text(payload, "l"),
        correlation_id=_text(payload, "r") if "r" in payload else _default_correlation(tenant_id, invoice_id),
        locale=locale,
    )
