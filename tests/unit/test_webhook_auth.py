"""Webhook authentication: HMAC (with rotation and replay window), bearer tokens, Twilio, and the
refuse-by-default rule."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from factura.common.webhooks import (
    WebhookAuthError,
    WebhookSettings,
    authenticate,
    sign_hmac,
    verify_bearer,
    verify_hmac,
    verify_twilio,
)
from factura.devstack.sms_capture import twilio_signature

BODY = b'{"message_id": "<a@b>", "type": "hard"}'
OLD = b"old-secret-0123456789"
NEW = b"new-secret-0123456789"
TOKEN = "token-abcdefghijklmnop"
NOW = 1_737_000_000.0


def reason(excinfo: pytest.ExceptionInfo[WebhookAuthError]) -> str:
    return excinfo.value.reason


def test_hmac_round_trip_and_format() -> None:
    header = sign_hmac(BODY, NEW, now=NOW)
    assert header.startswith(f"t={int(NOW)},v1=")
    assert len(header.partition("v1=")[2]) == 64
    verify_hmac(BODY, header, [NEW], now=NOW)


def test_hmac_matches_stripe_construction() -> None:
    """Senders in other languages build it as hex(HMAC-SHA256(secret, "<t>.<body>"))."""
    import hashlib
    import hmac

    expected = hmac.new(NEW, f"{int(NOW)}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign_hmac(BODY, NEW, now=NOW) == f"t={int(NOW)},v1={expected}"


def test_hmac_accepts_any_configured_secret_for_rotation() -> None:
    verify_hmac(BODY, sign_hmac(BODY, OLD, now=NOW), [NEW, OLD], now=NOW)
    verify_hmac(BODY, sign_hmac(BODY, NEW, now=NOW), [NEW, OLD], now=NOW)


def test_hmac_accepts_several_v1_entries() -> None:
    """A sender mid-rotation may sign with both secrets, Stripe-style."""
    other = sign_hmac(BODY, b"unknown-secret-0123456", now=NOW).partition("v1=")[2]
    header = sign_hmac(BODY, NEW, now=NOW) + f",v1={other},v0=ignored"
    verify_hmac(BODY, header, [NEW], now=NOW)


@pytest.mark.parametrize(
    ("body", "secret", "signed_at", "want"),
    [
        (BODY + b" ", NEW, NOW, "signature does not match"),
        (BODY, b"wrong-secret-0123456789", NOW, "signature does not match"),
        (BODY, NEW, NOW - 301, "signature timestamp outside tolerance"),
        (BODY, NEW, NOW + 301, "signature timestamp outside tolerance"),
    ],
)
def test_hmac_refusals(body: bytes, secret: bytes, signed_at: float, want: str) -> None:
    header = sign_hmac(BODY, secret, now=signed_at)
    with pytest.raises(WebhookAuthError) as excinfo:
        verify_hmac(body, header, [NEW], now=NOW)
    assert reason(excinfo) == want


def test_hmac_tolerance_edge_is_inclusive_and_configurable() -> None:
    verify_hmac(BODY, sign_hmac(BODY, NEW, now=NOW - 300), [NEW], now=NOW)
    with pytest.raises(WebhookAuthError, match="outside tolerance"):
        verify_hmac(BODY, sign_hmac(BODY, NEW, now=NOW - 60), [NEW], now=NOW, tolerance_s=30)


@pytest.mark.parametrize(
    ("header", "want"),
    [
        (None, "missing X-Factura-Signature"),
        ("", "malformed signature header"),
        ("garbage", "malformed signature header"),
        ("v1=" + "a" * 64, "signature header needs exactly one numeric t="),
        (f"t={int(NOW)},t={int(NOW)},v1=" + "a" * 64, "signature header needs exactly one numeric t="),
        ("t=-5,v1=" + "a" * 64, "signature header needs exactly one numeric t="),
        (f"t={int(NOW)}", "signature header has no v1= sha256 hex"),
        (f"t={int(NOW)},v1=xyz", "signature header has no v1= sha256 hex"),
        (f"t={int(NOW)},v1=" + "é" * 64, "signature header has no v1= sha256 hex"),
        ("t=1," + "v1=" * 2000, "signature header too long"),
    ],
)
def test_hmac_malformed_headers(header: str | None, want: str) -> None:
    with pytest.raises(WebhookAuthError) as excinfo:
        verify_hmac(BODY, header, [NEW], now=NOW)
    assert reason(excinfo) == want


def test_hmac_without_secrets_refuses() -> None:
    header = sign_hmac(BODY, b"", now=NOW)
    for secrets in ([], [b""]):
        with pytest.raises(WebhookAuthError, match="no HMAC secret configured"):
            verify_hmac(BODY, header, secrets, now=NOW)


def test_bearer() -> None:
    verify_bearer(f"Bearer {TOKEN}", ["other-token-abcdefgh", TOKEN])
    verify_bearer(f"bearer  {TOKEN} ", [TOKEN])
    cases = [
        (None, "missing Authorization"),
        (f"Basic {TOKEN}", "Authorization is not a Bearer token"),
        ("Bearer", "Authorization is not a Bearer token"),
        ("Bearer wrong", "bearer token does not match"),
        (f"Bearer {TOKEN}x", "bearer token does not match"),
        ("Bearer \udcff", "bearer token does not match"),
    ]
    for header, want in cases:
        with pytest.raises(WebhookAuthError) as excinfo:
            verify_bearer(header, [TOKEN])
        assert reason(excinfo) == want
    with pytest.raises(WebhookAuthError, match="no bearer token configured"):
        verify_bearer("Bearer ", [""])


def settings(**kwargs: object) -> WebhookSettings:
    return WebhookSettings.model_validate(kwargs)


def test_authenticate_by_hmac_or_bearer_with_any_header_case() -> None:
    both = settings(hmac_secrets=[NEW.decode()], tokens=[TOKEN])
    signature = sign_hmac(BODY, NEW)
    assert authenticate({"X-Factura-Signature": signature}, BODY, both) == "hmac"
    assert authenticate({"x-factura-signature": signature}, BODY, both) == "hmac"
    assert authenticate({"authorization": f"Bearer {TOKEN}"}, BODY, both) == "bearer"
    # a bad signature does not stop a good token from verifying
    assert authenticate({"X-Factura-Signature": "t=1,v1=" + "0" * 64, "Authorization": f"Bearer {TOKEN}"}, BODY, both)


def test_authenticate_ignores_schemes_that_are_not_configured() -> None:
    hmac_only = settings(hmac_secrets=[NEW.decode()])
    with pytest.raises(WebhookAuthError) as excinfo:
        authenticate({"Authorization": f"Bearer {TOKEN}"}, BODY, hmac_only)
    assert reason(excinfo) == "missing X-Factura-Signature"
    bearer_only = settings(tokens=[TOKEN])
    with pytest.raises(WebhookAuthError) as excinfo:
        authenticate({"X-Factura-Signature": sign_hmac(BODY, NEW)}, BODY, bearer_only)
    assert reason(excinfo) == "missing Authorization"


def test_authenticate_names_every_failed_scheme() -> None:
    both = settings(hmac_secrets=[NEW.decode()], tokens=[TOKEN])
    with pytest.raises(WebhookAuthError) as excinfo:
        authenticate({}, BODY, both)
    assert reason(excinfo) == "missing X-Factura-Signature or Authorization"
    headers = {"X-Factura-Signature": sign_hmac(BODY, OLD), "Authorization": "Bearer nope"}
    with pytest.raises(WebhookAuthError) as excinfo:
        authenticate(headers, BODY, both)
    assert reason(excinfo) == "hmac: signature does not match; bearer: bearer token does not match"


def test_authenticate_refuses_everything_when_nothing_is_configured() -> None:
    headers = {"X-Factura-Signature": sign_hmac(BODY, b""), "Authorization": "Bearer "}
    with pytest.raises(WebhookAuthError, match="no webhook secret or token configured"):
        authenticate(headers, BODY, WebhookSettings())


def test_authenticate_refuses_oversized_bodies_before_verifying() -> None:
    small = settings(tokens=[TOKEN], max_body_bytes=10)
    with pytest.raises(WebhookAuthError, match="body over 10 bytes"):
        authenticate({"Authorization": f"Bearer {TOKEN}"}, b"x" * 11, small)
    assert authenticate({"Authorization": f"Bearer {TOKEN}"}, b"x" * 10, small) == "bearer"


def test_settings_refuse_short_secrets_and_hide_them() -> None:
    with pytest.raises(ValidationError, match="hmac_secrets"):
        settings(hmac_secrets=["short"])
    with pytest.raises(ValidationError, match="tokens"):
        settings(tokens=[""])
    configured = settings(hmac_secrets=[NEW.decode()], tokens=[TOKEN])
    assert NEW.decode() not in repr(configured)
    assert TOKEN not in repr(configured)
    assert configured.hmac_secrets == [SecretStr(NEW.decode())]
    assert WebhookSettings().max_body_bytes == 1024 * 1024


URL = "https://factura.example.com/sms/status?tenant=acme"
PARAMS = {"MessageSid": "SM123", "MessageStatus": "delivered", "To": "+34600000000", "AccountSid": "AC1"}
AUTH_TOKEN = "twilio-auth-token"


def test_twilio_accepts_what_the_devstack_provider_signs() -> None:
    verify_twilio(URL, PARAMS, twilio_signature(AUTH_TOKEN, URL, dict(PARAMS)), AUTH_TOKEN)


def test_twilio_accepts_url_with_or_without_the_default_port() -> None:
    with_port = "https://factura.example.com:443/sms/status?tenant=acme"
    verify_twilio(URL, PARAMS, twilio_signature(AUTH_TOKEN, with_port, dict(PARAMS)), AUTH_TOKEN)
    verify_twilio(with_port, PARAMS, twilio_signature(AUTH_TOKEN, URL, dict(PARAMS)), AUTH_TOKEN)


@pytest.mark.parametrize(
    ("url", "params", "token", "want"),
    [
        (URL, {**PARAMS, "MessageStatus": "failed"}, AUTH_TOKEN, "Twilio signature does not match"),
        (URL.replace("acme", "other"), PARAMS, AUTH_TOKEN, "Twilio signature does not match"),
        (URL, PARAMS, "another-token", "Twilio signature does not match"),
        ("https://factura.example.com:99999/x", PARAMS, AUTH_TOKEN, "Twilio signature does not match"),
    ],
)
def test_twilio_refusals(url: str, params: dict[str, str], token: str, want: str) -> None:
    header = twilio_signature(AUTH_TOKEN, URL, dict(PARAMS))
    with pytest.raises(WebhookAuthError) as excinfo:
        verify_twilio(url, params, header, token)
    assert reason(excinfo) == want


def test_twilio_needs_a_header_and_a_token() -> None:
    with pytest.raises(WebhookAuthError, match="missing X-Twilio-Signature"):
        verify_twilio(URL, PARAMS, None, AUTH_TOKEN)
    with pytest.raises(WebhookAuthError, match="no Twilio auth token configured"):
        verify_twilio(URL, PARAMS, twilio_signature("", URL, dict(PARAMS)), "")
