"""Authentication shared by every webhook the product exposes.

Webhooks are the one place where the outside world writes into Factura over HTTP, so a refusal is
the default: with no secret and no token configured, :func:`authenticate` refuses every request.

Two schemes, either may be configured (both at once during a migration):

* **HMAC** (preferred, Stripe-style): ``X-Factura-Signature: t=<unix>,v1=<hex>`` where
  ``hex = HMAC-SHA256(secret, f"{t}." + raw_body)``. The timestamp is signed so a captured request
  cannot be replayed after ``tolerance_s``; several ``v1`` entries and several secrets are accepted so
  a secret can rotate without dropping traffic.
* **Bearer**: ``Authorization: Bearer <token>``, for senders that cannot sign (many ESP dashboards).

Twilio signs its callbacks its own way (``X-Twilio-Signature``); :func:`verify_twilio` checks that.

Every comparison of secret material is constant-time (:func:`hmac.compare_digest`), and every
comparison is made against every candidate, so timing tells nothing about which secret matched.
Reasons in :class:`WebhookAuthError` are short and never contain secret material: log them,
but answer the client with a bare 401.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr

SIGNATURE_HEADER = "X-Factura-Signature"
TWILIO_HEADER = "X-Twilio-Signature"
DEFAULT_TOLERANCE_S = 300
MAX_BODY_BYTES = 1 << 20
#: Shorter secrets or tokens are guessable; refusing them at start-up beats a weak webhook.
MIN_SECRET_CHARS = 16
#: Longer signature headers were not produced by :func:`sign_hmac`: refuse before parsing.
_MAX_HEADER_CHARS = 4096
_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_UNIX_TIME = re.compile(r"^[0-9]{1,12}$")
_DEFAULT_PORTS = {"https": 443, "http": 80}


class WebhookAuthError(Exception):
    """A request is not authenticated; ``reason`` is short, loggable and free of secrets."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Secret = Annotated[SecretStr, Field(min_length=MIN_SECRET_CHARS)]


class WebhookSettings(BaseModel):
    """One webhook's credentials. Empty lists everywhere mean "refuse everything", never "open"."""

    hmac_secrets: list[Secret] = Field(default=[], description="Current secret first; old ones while rotating.")
    tokens: list[Secret] = Field(default=[], description="Accepted bearer tokens.")
    max_body_bytes: int = Field(default=MAX_BODY_BYTES, gt=0, description="Larger bodies are refused unread.")


def _utf8(text: str) -> bytes:
    # Header values arrive as latin-1-decoded str; surrogatepass keeps any str encodable.
    return text.encode("utf-8", "surrogatepass")


def _matches_any(candidate: bytes, expected: Iterable[bytes]) -> bool:
    """Constant-time comparison against every expected value (no early exit)."""
    results = [hmac.compare_digest(candidate, e) for e in expected]
    return any(results)


def _hmac_hex(secret: bytes, timestamp: int, raw_body: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + raw_body, hashlib.sha256).hexdigest()


def sign_hmac(raw_body: bytes, secret: bytes, now: float | None = None) -> str:
    """The ``X-Factura-Signature`` value for ``raw_body``: what senders of callbacks and tests send."""
    timestamp = int(time.time() if now is None else now)
    return f"t={timestamp},v1={_hmac_hex(secret, timestamp, raw_body)}"


def _parse_signature(header: str) -> tuple[int, list[str]]:
    if len(header) > _MAX_HEADER_CHARS:
        raise WebhookAuthError("signature header too long")
    timestamps: list[str] = []
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise WebhookAuthError("malformed signature header")
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            signatures.append(value)
        # other keys (future schemes such as v2) are ignored, as Stripe does
    if len(timestamps) != 1 or not _UNIX_TIME.match(timestamps[0]):
        raise WebhookAuthError("signature header needs exactly one numeric t=")
    valid = [s for s in signatures if _HEX_SHA256.match(s)]
    if not valid:
        raise WebhookAuthError("signature header has no v1= sha256 hex")
    return int(timestamps[0]), valid


def verify_hmac(
    raw_body: bytes,
    header: str | None,
    secrets: Sequence[bytes],
    now: float | None = None,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> None:
    """Accept ``raw_body`` if ``header`` is a fresh signature by any of ``secrets``, else raise."""
    keys = [s for s in secrets if s]
    if not keys:
        raise WebhookAuthError("no HMAC secret configured")
    if header is None:
        raise WebhookAuthError(f"missing {SIGNATURE_HEADER}")
    timestamp, signatures = _parse_signature(header)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookAuthError("signature timestamp outside tolerance")
    expected = [_hmac_hex(k, timestamp, raw_body).encode() for k in keys]
    results = [_matches_any(s.encode(), expected) for s in signatures]
    if not any(results):
        raise WebhookAuthError("signature does not match")


def verify_bearer(header: str | None, tokens: Sequence[str]) -> None:
    """Accept an ``Authorization: Bearer <token>`` naming one of ``tokens``, else raise."""
    expected = [_utf8(t) for t in tokens if t]
    if not expected:
        raise WebhookAuthError("no bearer token configured")
    if header is None:
        raise WebhookAuthError("missing Authorization")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise WebhookAuthError("Authorization is not a Bearer token")
    if not _matches_any(_utf8(token.strip()), expected):
        raise WebhookAuthError("bearer token does not match")


def authenticate(request_headers: Mapping[str, str], raw_body: bytes, settings: WebhookSettings) -> str:
    """Authenticate one webhook request; the scheme that verified it (``"hmac"`` or ``"bearer"``).

    Each configured scheme whose header is present is tried, HMAC first. The error names every
    scheme's reason, so a misconfigured sender can be told apart from an attacker in logs.
    """
    if not settings.hmac_secrets and not settings.tokens:
        raise WebhookAuthError("no webhook secret or token configured: refusing")
    if len(raw_body) > settings.max_body_bytes:
        raise WebhookAuthError(f"body over {settings.max_body_bytes} bytes")
    headers = {k.lower(): v for k, v in request_headers.items()}
    signature = headers.get(SIGNATURE_HEADER.lower())
    authorization = headers.get("authorization")
    reasons: list[str] = []
    if settings.hmac_secrets and signature is not None:
        try:
            verify_hmac(raw_body, signature, [_utf8(s.get_secret_value()) for s in settings.hmac_secrets])
        except WebhookAuthError as e:
            reasons.append(f"hmac: {e.reason}")
        else:
            return "hmac"
    if settings.tokens and authorization is not None:
        try:
            verify_bearer(authorization, [t.get_secret_value() for t in settings.tokens])
        except WebhookAuthError as e:
            reasons.append(f"bearer: {e.reason}")
        else:
            return "bearer"
    if not reasons:
        wanted = [SIGNATURE_HEADER] * bool(settings.hmac_secrets) + ["Authorization"] * bool(settings.tokens)
        reasons.append(f"missing {' or '.join(wanted)}")
    raise WebhookAuthError("; ".join(reasons))


def _twilio_urls(url: str) -> set[str]:
    """``url`` as Twilio may have signed it: with and without the scheme's default port.

    Twilio's own validator accepts both, because proxies add or drop an explicit ``:443``.
    """
    variants = {url}
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return variants
    host = parts.netloc.rpartition("@")[2]
    if port is not None and not host.endswith("]"):
        variants.add(urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0])))
    elif port is None and parts.scheme in _DEFAULT_PORTS:
        variants.add(urlunsplit(parts._replace(netloc=f"{parts.netloc}:{_DEFAULT_PORTS[parts.scheme]}")))
    return variants


def _twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> bytes:
    payload = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(_utf8(auth_token), _utf8(payload), hashlib.sha1).digest())


def verify_twilio(url: str, params: Mapping[str, str], header: str | None, auth_token: str) -> None:
    """Accept a Twilio callback whose ``X-Twilio-Signature`` signs ``url`` and the form ``params``.

    ``url`` must be the full URL Twilio called (scheme, host, path, query), as configured at Twilio,
    not as rewritten by a proxy.
    """
    if not auth_token:
        raise WebhookAuthError("no Twilio auth token configured")
    if header is None:
        raise WebhookAuthError(f"missing {TWILIO_HEADER}")
    expected = [_twilio_signature(auth_token, u, params) for u in sorted(_twilio_urls(url))]
    if not _matches_any(_utf8(header.strip()), expected):
        raise WebhookAuthError("Twilio signature does not match")
