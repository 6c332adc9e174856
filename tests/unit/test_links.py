"""Signed download links: round trip, and every way a token must be refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from pydantic import SecretStr

from factura.common.events import DocumentRef
from factura.common.links import ExpiredLink, InvalidLink, LinkSigner
from factura.common.settings import LinkSettings

SECRET = b"s3cret-s3cret-s3cret-s3cret-0001"
BASE = "https://links.factura.test"
NOW = 1_790_000_000.0
SHA = hashlib.sha256(b"%PDF-1.7 fake").hexdigest()
KEY = "harinas-sur/2026/11/F-2026-000123.pdf"


def signer(secret: bytes = SECRET, old: tuple[bytes, ...] = ()) -> LinkSigner:
    return LinkSigner(secret, BASE, ttl_s=3600, old_secrets=old)


def link(s: LinkSigner | None = None, **overrides: object) -> str:
    args: dict[str, object] = {
        "tenant_id": "harinas-sur",
        "invoice_id": "F-2026-000123",
        "bucket": "factura-documents",
        "key": KEY,
        "sha256": SHA,
        "channel": "sms",
        "now": NOW,
    } | overrides
    return (s or signer()).sign(**args)  # type: ignore[arg-type]


def token_of(url: str) -> str:
    return url.rsplit("/d/", 1)[1]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(payload: object, secret: bytes = SECRET) -> str:
    """A correctly signed token around an arbitrary payload: tests the checks after the signature."""
    body = b64(json.dumps(payload).encode())
    return f"{body}.{b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())}"


def test_round_trip_with_defaults_restored() -> None:
    url = link()
    assert url.startswith(f"{BASE}/d/")
    claims = signer().verify(token_of(url), now=NOW + 10)
    assert (claims.tenant_id, claims.invoice_id, claims.bucket, claims.key) == (
        "harinas-sur",
        "F-2026-000123",
        "factura-documents",
        KEY,
    )
    assert claims.sha256 == SHA
    assert claims.channel == "sms"
    assert claims.expires_at == int(NOW) + 3600
    assert claims.filename == "F-2026-000123.pdf"
    assert claims.content_type == "application/pdf"
    assert claims.correlation_id == "harinas-sur/F-2026-000123"
    assert len(claims.link_id) >= 8


def test_round_trip_with_explicit_values() -> None:
    url = link(
        filename="Factura Pastelería F-2026-000123.zip",
        content_type="application/zip",
        correlation_id="0b9a7c1e-5f0e-5d7a-9a43-1f2e3d4c5b6a",
        link_id="fixed-id",
        channel="email",
        ttl_s=60,
    )
    claims = signer().verify(token_of(url), now=NOW)
    assert claims.filename == "Factura Pastelería F-2026-000123.zip"
    assert claims.content_type == "application/zip"
    assert claims.correlation_id == "0b9a7c1e-5f0e-5d7a-9a43-1f2e3d4c5b6a"
    assert claims.link_id == "fixed-id"
    assert claims.channel == "email"
    assert claims.expires_at == int(NOW) + 60


def test_sign_document_and_claims_document_agree() -> None:
    doc = DocumentRef(bucket="factura-documents", key=KEY, sha256=SHA, size_bytes=1234, filename="Factura 123.pdf")
    url = signer().sign_document(doc, tenant_id="harinas-sur", invoice_id="F-2026-000123", channel="portal", now=NOW)
    assert signer().verify(token_of(url), now=NOW).document(1234) == doc


def test_tampered_payload_is_refused() -> None:
    body, sig = token_of(link()).split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["k"] = "other-tenant/2026/11/F-1.pdf"
    with pytest.raises(InvalidLink):
        signer().verify(f"{b64(json.dumps(payload).encode())}.{sig}", now=NOW)


def test_tampered_signature_is_refused() -> None:
    body, sig = token_of(link()).split(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    with pytest.raises(InvalidLink):
        signer().verify(f"{body}.{flipped}", now=NOW)
    with pytest.raises(InvalidLink):
        signer().verify(f"{body}.{sig[:-2]}", now=NOW)  # truncated MAC


def test_other_secret_is_refused() -> None:
    with pytest.raises(InvalidLink):
        signer(b"another-secret").verify(token_of(link()), now=NOW)


def test_old_secret_still_verifies_after_rotation() -> None:
    old_url = link(signer(b"old-secret"))
    rotated = signer(SECRET, old=(b"old-secret",))
    assert rotated.verify(token_of(old_url), now=NOW).key == KEY
    # New links are signed with the current secret only: a verifier without the old one accepts them.
    assert signer().verify(token_of(link(rotated)), now=NOW).key == KEY


def test_expired_is_refused_with_its_claims() -> None:
    token = token_of(link(locale="es"))
    signer().verify(token, now=NOW + 3599)
    with pytest.raises(ExpiredLink, match="expired") as raised:
        signer().verify(token, now=NOW + 3600)
    assert isinstance(raised.value, InvalidLink)  # callers that only know InvalidLink still refuse it
    assert (raised.value.claims.tenant_id, raised.value.claims.locale) == ("harinas-sur", "es")


def test_forged_expired_token_is_not_reported_as_expired() -> None:
    """Only an authentic token may say "expired": a forged one must not reach the claims."""
    body, sig = token_of(link()).split(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    with pytest.raises(InvalidLink) as raised:
        signer().verify(f"{body}.{flipped}", now=NOW + 7200)
    assert not isinstance(raised.value, ExpiredLink)


def test_locale_travels_only_when_not_english() -> None:
    spanish, english = link(locale="es"), link(locale="en")
    assert signer().verify(token_of(spanish), now=NOW).locale == "es"
    assert signer().verify(token_of(english), now=NOW).locale is None
    assert len(english) == len(link())  # English costs no characters
    payload = json.loads(base64.urlsafe_b64decode(token_of(spanish).split(".")[0] + "=="))
    assert payload["g"] == "es"


def test_old_tokens_without_locale_still_verify() -> None:
    good = json.loads(base64.urlsafe_b64decode(token_of(link()).split(".")[0] + "=="))
    assert "g" not in good
    assert signer().verify(forge(good), now=NOW).locale is None


def test_bad_locales_are_refused() -> None:
    with pytest.raises(ValueError, match="locale"):
        link(locale="fr")
    good = json.loads(base64.urlsafe_b64decode(token_of(link()).split(".")[0] + "=="))
    for bad in ("fr", "", 3):
        with pytest.raises(InvalidLink):
            signer().verify(forge(good | {"g": bad}), now=NOW)


def test_pseudonym_uses_its_own_key() -> None:
    pseudo = LinkSigner(SECRET, BASE, ttl_s=60, pseudonym_secret=b"pseudonym-key")
    value = pseudo.pseudonym("203.0.113.7")
    assert value == hmac.new(b"pseudonym-key", b"pseudonym:203.0.113.7", hashlib.sha256).hexdigest()
    assert value != hmac.new(SECRET, b"pseudonym:203.0.113.7", hashlib.sha256).hexdigest()
    assert pseudo.pseudonym("203.0.113.7") == value != pseudo.pseudonym("203.0.113.8")


def test_pseudonym_key_is_required_where_hits_are_recorded() -> None:
    with pytest.raises(ValueError, match="pseudonym"):
        signer().pseudonym("203.0.113.7")
    settings = LinkSettings(secret=SecretStr("link-secret"))
    LinkSigner.from_settings(settings)  # senders do not pseudonymise: fine without the key
    with pytest.raises(ValueError, match="pseudonym_secret"):
        LinkSigner.from_settings(settings, require_pseudonym=True)
    keyed = LinkSettings(secret=SecretStr("link-secret"), pseudonym_secret=SecretStr("other"))
    assert LinkSigner.from_settings(keyed, require_pseudonym=True).pseudonym("x")
    with pytest.raises(ValueError, match="differ"):
        LinkSigner(SECRET, BASE, ttl_s=60, pseudonym_secret=SECRET)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "no-dot-at-all",
        "a.b.c",
        ".",
        "abc.",
        ".abc",
        "not base64!.abc",
        "abc.not base64!",
        "abcde.abc",  # length 5 is never valid base64
        "x" * 5000,
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidLink):
        signer().verify(token, now=NOW)


@pytest.mark.parametrize(
    "payload",
    [
        [1, 2, 3],
        "a string",
        42,
        None,
        {"v": 2, "t": "x"},
        {"v": 1, "t": "harinas-sur"},  # missing fields
    ],
)
def test_signed_but_unusable_payloads_are_refused(payload: object) -> None:
    with pytest.raises(InvalidLink):
        signer().verify(forge(payload), now=NOW)


def test_signed_non_json_is_refused() -> None:
    body = b64(b"\xff\xfe not json")
    token = f"{body}.{b64(hmac.new(SECRET, body.encode(), hashlib.sha256).digest())}"
    with pytest.raises(InvalidLink, match="not JSON"):
        signer().verify(token, now=NOW)


def test_field_types_are_checked() -> None:
    good = json.loads(base64.urlsafe_b64decode(token_of(link()).split(".")[0] + "=="))
    for change in ({"e": "1790003600"}, {"e": True}, {"n": "fax"}, {"h": b64(b"short")}, {"t": ""}, {"zz": 1}):
        with pytest.raises(InvalidLink):
            signer().verify(forge(good | change), now=NOW)


def test_white_label_base_url_is_used() -> None:
    url = link(base_url="https://facturas.harinas-sur.es/")
    assert url.startswith("https://facturas.harinas-sur.es/d/")
    assert signer().verify(token_of(url), now=NOW).key == KEY


def test_empty_secret_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="empty"):
        LinkSigner(b"", BASE, ttl_s=60)
    with pytest.raises(ValueError, match="empty"):
        LinkSigner.from_settings(LinkSettings())
    with pytest.raises(ValueError, match="empty"):
        LinkSigner(SECRET, BASE, ttl_s=60, old_secrets=[b""])


def test_bad_sign_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="sha256"):
        link(sha256="ABC")
    with pytest.raises(ValueError, match="channel"):
        link(channel="fax")


def test_token_fits_a_few_sms_segments() -> None:
    token = token_of(link())
    print(f"typical token: {len(token)} chars, url: {len(link())} chars")
    assert len(token) <= 360
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
