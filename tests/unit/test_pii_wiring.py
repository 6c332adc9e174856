"""One PII settings group for audit and the senders: which KEKs each setting gives, the audit's old
setting names refused, the devstack's services sharing their KEKs, and whose data key an outcome
is stored under."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from factura.audit.settings import Settings as AuditSettings
from factura.common.events import parse_event
from factura.common.ledger import customer_of
from factura.common.pii import (
    FileKeyStore,
    KeyStore,
    KeyStoreError,
    NoKeyStore,
    SecretKeyStore,
    new_kek_line,
    pii_keystore,
)
from factura.common.schemas import EXAMPLES_DIR
from factura.common.settings import PiiSettings
from factura.devstack.config import StackConfig, service_env
from factura.email_sender.settings import Settings as EmailSettings

SECRET = b"p" * 32


async def round_trip(store: KeyStore, other: KeyStore) -> bool:
    """Whether a data key wrapped by ``store`` unwraps with ``other``."""
    wrapped = await store.wrap("acme", b"d" * 32, {"customer_id": "C1"})
    try:
        return await other.unwrap("acme", wrapped, {"customer_id": "C1"}) == b"d" * 32
    except KeyStoreError:
        return False


async def test_keys_dir_wins_then_the_secret_then_the_services_fallback(tmp_path: Path) -> None:
    (tmp_path / "acme.kek").write_text(new_kek_line("k1") + "\n")
    assert isinstance(pii_keystore(PiiSettings(keys_dir=tmp_path, secret=SecretStr("s" * 32)), SECRET), FileKeyStore)

    from_secret = pii_keystore(PiiSettings(secret=SecretStr(SECRET.decode())), b"f" * 32)
    assert await round_trip(from_secret, SecretKeyStore(SECRET))

    fallback = pii_keystore(PiiSettings(), b"f" * 32)
    assert await round_trip(fallback, SecretKeyStore(b"f" * 32))
    assert not await round_trip(fallback, SecretKeyStore(SECRET))


async def test_without_any_kek_every_wrap_fails_as_an_outage_naming_the_setting() -> None:
    store = pii_keystore(PiiSettings())
    assert isinstance(store, NoKeyStore)
    with pytest.raises(KeyStoreError, match="keys_dir"):
        await store.wrap("acme", b"d" * 32, {})


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="secret"):
        PiiSettings(secret=SecretStr("short"))


def test_audit_and_senders_read_the_same_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACTURA_AUDIT_PII__KEYS_DIR", "/run/secrets/pii-keys")
    monkeypatch.setenv("FACTURA_EMAIL_SENDER_PII__KEYS_DIR", "/run/secrets/pii-keys")
    monkeypatch.setenv("FACTURA_EMAIL_SENDER_PII__CACHE_TTL_S", "5")
    assert AuditSettings().pii.keys_dir == Path("/run/secrets/pii-keys")
    email = EmailSettings().pii
    assert (email.keys_dir, email.cache_ttl_s) == (Path("/run/secrets/pii-keys"), 5)


@pytest.mark.parametrize("old", ["FACTURA_AUDIT_PII_KEYS_DIR", "FACTURA_AUDIT_PII_CACHE_TTL_S"])
def test_audits_old_setting_names_stop_the_start(monkeypatch: pytest.MonkeyPatch, old: str) -> None:
    monkeypatch.setenv(old, "/run/secrets/pii-keys" if old.endswith("DIR") else "30")
    with pytest.raises(ValidationError, match=f"{old} was renamed {old.replace('_PII_', '_PII__')}"):
        AuditSettings()


def test_the_devstack_gives_audit_and_both_senders_one_pii_secret(tmp_path: Path) -> None:
    cfg = StackConfig(data_dir=tmp_path)
    secrets = {
        service_env(name, cfg)[f"FACTURA_{name.upper().replace('-', '_')}_PII__SECRET"]
        for name in ("audit", "email-sender", "sms-sender")
    }
    assert secrets == {cfg.pii_secret} and len(cfg.pii_secret) >= 32


@pytest.mark.parametrize(
    ("example", "customer"),
    [
        ("invoice.rendered.v1.json", "C-1042"),
        ("delivery.succeeded.v2.json", "C-1042"),
        ("delivery.failed.v2.json", "C-1042"),
        ("invoice.created.v1.json", "C-1042"),
        ("ticket.opened.v1.json", None),
    ],
)
def test_the_customer_an_outcome_is_encrypted_for(example: str, customer: str | None) -> None:
    assert customer_of(parse_event((EXAMPLES_DIR / example).read_bytes())) == customer
