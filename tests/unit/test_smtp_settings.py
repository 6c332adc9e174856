"""SMTP settings: secure choices by default, no credentials in clear, the TLS context they make.

Also the two classifications TLS adds to the SMTP adapter: which failure is a certificate
problem, and a 530 ("STARTTLS or AUTH first") as "relay down", never a bounce.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import aiosmtplib
import pytest
from pydantic import ValidationError

from factura.common.errors import DependencyDown
from factura.devstack.tls import TestPki, make_test_pki
from factura.email_sender.settings import Settings, SmtpSettings
from factura.email_sender.smtp import Undeliverable, smtp_failure, tls_context, tls_failure

ENV = "FACTURA_EMAIL_SENDER_SMTP__"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def smtp_from_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> SmtpSettings:
    for name, value in env.items():
        monkeypatch.setenv(ENV + name.upper(), value)
    return Settings().smtp


def test_defaults_fit_the_local_capture_relay_and_verify_any_tls() -> None:
    s = SmtpSettings()
    assert (s.security, s.port, s.verify_certificate, s.ca_file) == ("none", 25, True, None)
    assert tls_context(s) is None


@pytest.mark.parametrize(("security", "port"), [("none", 25), ("starttls", 587), ("tls", 465)])
def test_the_port_follows_security_unless_set(security: str, port: int) -> None:
    assert SmtpSettings.model_validate({"security": security}).port == port
    assert SmtpSettings.model_validate({"security": security, "port": 2525}).port == 2525


def test_security_and_tls_files_from_the_environment(monkeypatch: pytest.MonkeyPatch, pki: TestPki) -> None:
    s = smtp_from_env(monkeypatch, security="tls", ca_file=str(pki.ca_cert), verify_certificate="true")
    assert (s.security, s.port, s.ca_file) == ("tls", 465, pki.ca_cert)


@pytest.mark.parametrize(("start_tls", "security", "port"), [("true", "starttls", 587), ("false", "none", 25)])
def test_the_old_start_tls_variable_still_works(
    monkeypatch: pytest.MonkeyPatch, start_tls: str, security: str, port: int
) -> None:
    s = smtp_from_env(monkeypatch, start_tls=start_tls)
    assert (s.security, s.port) == (security, port)
    assert "start_tls" not in s.model_dump()


def test_start_tls_contradicting_security_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="start_tls=true contradicts security='tls'"):
        smtp_from_env(monkeypatch, start_tls="true", security="tls")


def test_credentials_over_a_plain_connection_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="in clear") as refused:
        smtp_from_env(monkeypatch, username="mailer", password="hunter2")
    assert refused.value.errors()[0]["loc"] == ("smtp", "username")
    assert "hunter2" not in str(refused.value)  # the error names the field, never the secret


def test_plaintext_auth_only_when_explicitly_allowed() -> None:
    s = SmtpSettings.model_validate({"username": "mailer", "password": "pw", "allow_plaintext_auth": True})
    assert s.security == "none" and s.password is not None


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_credentials_over_tls_are_fine(security: str) -> None:
    s = SmtpSettings.model_validate({"security": security, "username": "mailer", "password": "pw"})
    assert s.username == "mailer"


def test_credentials_with_the_old_start_tls_are_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    s = smtp_from_env(monkeypatch, start_tls="true", username="mailer", password="pw")
    assert s.security == "starttls"


def test_a_password_needs_a_username() -> None:
    with pytest.raises(ValidationError, match="password is set but username is not"):
        SmtpSettings.model_validate({"security": "tls", "password": "pw"})


def test_a_client_key_needs_its_certificate(pki: TestPki) -> None:
    with pytest.raises(ValidationError, match="client_key needs client_cert"):
        SmtpSettings.model_validate({"security": "tls", "client_key": pki.client_key})


def test_a_missing_ca_file_is_refused_at_startup(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as refused:
        SmtpSettings.model_validate({"security": "tls", "ca_file": tmp_path / "nope.pem"})
    assert refused.value.errors()[0]["loc"] == ("ca_file",)


# -- the TLS context ------------------------------------------------------------------------------


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_verifies_chain_and_host_name_with_tls_1_2_or_later(security: str) -> None:
    context = tls_context(SmtpSettings.model_validate({"security": security}))
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_a_ca_file_replaces_the_system_store(pki: TestPki) -> None:
    context = tls_context(SmtpSettings(security="tls", ca_file=pki.ca_cert))
    assert context is not None
    [only] = context.get_ca_certs()
    assert "Factura devstack test CA" in str(only["subject"])


def test_verification_off_checks_nothing() -> None:
    context = tls_context(SmtpSettings(security="starttls", verify_certificate=False))
    assert context is not None
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname


def test_a_client_certificate_is_loaded(pki: TestPki) -> None:
    settings = SmtpSettings(security="tls", client_cert=pki.client_cert, client_key=pki.client_key)
    assert tls_context(settings) is not None
    with pytest.raises(ssl.SSLError):  # a key that does not match its certificate fails at startup
        tls_context(SmtpSettings(security="tls", client_cert=pki.client_cert, client_key=pki.server_key))


# -- classification -------------------------------------------------------------------------------


def test_a_certificate_failure_is_named_even_when_wrapped() -> None:
    cause = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    cause.verify_message = "self-signed certificate"
    try:
        raise aiosmtplib.SMTPConnectError("Error connecting") from cause
    except aiosmtplib.SMTPConnectError as wrapped:
        assert tls_failure(wrapped) == "TLS certificate verification failed: self-signed certificate"
    assert tls_failure(aiosmtplib.SMTPServerDisconnected("gone")) is None


def test_530_asks_for_tls_or_auth_so_the_relay_is_down_not_the_message_refused() -> None:
    error = aiosmtplib.SMTPSenderRefused(530, "5.7.0 Must issue a STARTTLS command first", "a@b.test")
    outcome = smtp_failure(error)
    assert isinstance(outcome, DependencyDown) and "requires TLS" in outcome.detail
    at_rcpt = aiosmtplib.SMTPRecipientRefused(530, "5.7.1 Authentication required", "c@d.test")
    assert isinstance(smtp_failure(aiosmtplib.SMTPRecipientsRefused([at_rcpt])), DependencyDown)
    assert isinstance(smtp_failure(aiosmtplib.SMTPSenderRefused(550, "5.1.0 no", "a@b.test")), Undeliverable)
