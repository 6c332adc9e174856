"""SMTP over TLS: the email sender against the capture relay speaking STARTTLS and implicit TLS.

Real TCP and real handshakes on loopback. Each test makes its own relay endpoints (in-process
aiosmtpd, or the capture CLI as the devstack starts it) with certificates from a throwaway CA
made at run time. The issue's "TLS with an invalid certificate refused" is
:func:`test_tls_with_an_invalid_certificate_is_refused`: no mail crosses, the sender reports the
relay down with a detail that names the certificate, and readiness says the same.

Absence is never waited for: after a refusal, a control message goes through a good endpoint
into the same Maildir, and only then is the Maildir checked to hold that message alone.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

import pytest

from factura.common.errors import DependencyDown
from factura.devstack.smtp_capture import CaptureHandler, read_messages, server_tls_context, start_server
from factura.devstack.tls import WRONG_HOST, TestPki, make_test_pki
from factura.email_sender.settings import SmtpSettings
from factura.email_sender.smtp import SmtpMailer

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
Cert = Literal["server", "untrusted", "wrong-host"]
Mode = Literal["plain", "starttls", "tls"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Relay:
    """Capture endpoints sharing one Maildir, closed when the test ends."""

    pki: TestPki
    maildir: Path
    servers: list[asyncio.Server] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.handler = CaptureHandler(self.maildir)

    async def endpoint(
        self, mode: Mode, cert: Cert = "server", *, require_starttls: bool = False, client_ca: bool = False
    ) -> int:
        context = None
        if mode != "plain":
            pem, key = {
                "server": (self.pki.server_cert, self.pki.server_key),
                "untrusted": (self.pki.untrusted_cert, self.pki.untrusted_key),
                "wrong-host": (self.pki.wrong_host_cert, self.pki.wrong_host_key),
            }[cert]
            context = server_tls_context(pem, key, self.pki.ca_cert if client_ca else None)
        server = await start_server(
            self.handler, HOST, 0, tls_context=context, implicit_tls=mode == "tls", require_starttls=require_starttls
        )
        self.servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    def settings(self, port: int, security: Literal["none", "starttls", "tls"], **more: Any) -> SmtpSettings:
        """The sender's settings for an endpoint, trusting the test CA (and only it)."""
        fields: dict[str, Any] = {"host": HOST, "ca_file": self.pki.ca_cert, "timeout_s": 5, "local_hostname": "test"}
        return SmtpSettings(**(fields | more), port=port, security=security)

    async def send(self, settings: SmtpSettings) -> str:
        """Send one fresh message; its Message-ID once the relay has taken it."""
        message = EmailMessage()
        message["From"] = "invoices@factura.example"
        message["To"] = "customer@example.test"
        message["Subject"] = "Invoice"
        message["Message-ID"] = f"<{uuid.uuid4().hex}@factura.example>"
        message.set_content("Your invoice is attached.")

        async def on_accepted() -> None:
            self.accepted.append(message["Message-ID"])

        await SmtpMailer(settings).send(message, on_accepted)
        return str(message["Message-ID"])

    def captured(self) -> list[str]:
        return [str(m["Message-ID"]) for m in read_messages(self.maildir)]

    async def only_control_arrives(self) -> None:
        """After a refusal: a control message through a good endpoint is the only one in the Maildir."""
        port = await self.endpoint("starttls")
        control = await self.send(self.settings(port, "starttls"))
        assert self.captured() == [control]
        assert self.accepted == [control]


@pytest.fixture
async def relay(pki: TestPki, tmp_path: Path) -> AsyncIterator[Relay]:
    r = Relay(pki, tmp_path / "maildir")
    try:
        yield r
    finally:
        for server in r.servers:
            server.close()
            await server.wait_closed()


async def refused(action: Callable[[], Awaitable[object]]) -> DependencyDown:
    with pytest.raises(DependencyDown) as down:
        await action()
    assert down.value.dependency == "smtp"
    return down.value


# -- verified TLS delivers ------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])  # an IP and a DNS name in the certificate
async def test_starttls_with_the_relay_ca_trusted_delivers(relay: Relay, host: str) -> None:
    port = await relay.endpoint("starttls", require_starttls=True)  # no mail before the upgrade
    settings = relay.settings(port, "starttls", host=host)
    await SmtpMailer(settings).probe()
    sent = await relay.send(settings)
    assert relay.captured() == [sent]


async def test_implicit_tls_with_the_relay_ca_trusted_delivers(relay: Relay) -> None:
    port = await relay.endpoint("tls")
    settings = relay.settings(port, "tls")
    await SmtpMailer(settings).probe()
    sent = await relay.send(settings)
    assert relay.captured() == [sent]


async def test_mutual_tls_presents_the_client_certificate(relay: Relay) -> None:
    port = await relay.endpoint("tls", client_ca=True)
    with_cert = relay.settings(port, "tls", client_cert=relay.pki.client_cert, client_key=relay.pki.client_key)
    sent = await relay.send(with_cert)
    assert relay.captured() == [sent]
    await refused(lambda: relay.send(relay.settings(port, "tls")))  # the relay drops a client without one


# -- TLS with an invalid certificate refused ------------------------------------------------------


@pytest.mark.parametrize("security", ["starttls", "tls"])
@pytest.mark.parametrize(
    ("cert", "why"),
    [("untrusted", "self-signed certificate"), ("wrong-host", "mismatch")],
    ids=["untrusted-ca", "wrong-host"],
)
async def test_tls_with_an_invalid_certificate_is_refused(
    relay: Relay, security: Literal["starttls", "tls"], cert: Cert, why: str
) -> None:
    port = await relay.endpoint(security, cert)
    settings = relay.settings(port, security)

    down = await refused(lambda: relay.send(settings))
    assert down.detail.startswith("TLS certificate verification failed"), down.detail
    assert why in down.detail, down.detail
    # Readiness does the handshake too, so /readyz turns "down" with the same reason.
    probe = await refused(SmtpMailer(settings).probe)
    assert probe.detail == down.detail
    await relay.only_control_arrives()


async def test_the_system_store_is_not_trusted_when_a_ca_file_is_given(relay: Relay, pki: TestPki) -> None:
    """Without the test CA configured, the good certificate is as unknown as any other."""
    port = await relay.endpoint("starttls")
    settings = relay.settings(port, "starttls", ca_file=pki.untrusted_cert)
    down = await refused(lambda: relay.send(settings))
    assert "unable to get local issuer certificate" in down.detail
    await relay.only_control_arrives()


async def test_verification_off_accepts_any_certificate_dev_only(relay: Relay) -> None:
    """``verify_certificate=false`` encrypts without knowing who listens: for development only."""
    port = await relay.endpoint("starttls", "untrusted")
    settings = relay.settings(port, "starttls", verify_certificate=False, ca_file=None)
    await SmtpMailer(settings).probe()
    sent = await relay.send(settings)
    assert relay.captured() == [sent]


# -- mismatched expectations between sender and relay are "down", never a bounce ---------------


async def test_plain_mail_to_a_relay_that_requires_starttls_waits(relay: Relay) -> None:
    port = await relay.endpoint("starttls", require_starttls=True)
    down = await refused(lambda: relay.send(relay.settings(port, "none")))
    assert "530" in down.detail and "requires TLS" in down.detail
    await relay.only_control_arrives()


async def test_starttls_demanded_from_a_relay_that_does_not_offer_it_is_down(relay: Relay) -> None:
    port = await relay.endpoint("plain")
    settings = relay.settings(port, "starttls")
    down = await refused(lambda: relay.send(settings))
    assert "STARTTLS" in down.detail
    await refused(SmtpMailer(settings).probe)
    await relay.only_control_arrives()


async def test_implicit_tls_to_a_plain_relay_is_a_handshake_failure(relay: Relay) -> None:
    port = await relay.endpoint("plain")
    down = await refused(lambda: relay.send(relay.settings(port, "tls")))
    assert down.detail.startswith("TLS handshake failed"), down.detail
    await relay.only_control_arrives()


# -- the capture CLI, as the devstack starts it --------------------------------------------------


def free_ports(n: int) -> list[int]:
    with ExitStack() as held:  # all bound at once, so no port is handed out twice
        socks = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]


async def until_ready(settings: SmtpSettings, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                await SmtpMailer(settings).probe()
                return
            except DependencyDown as e:
                if "connect to" not in e.detail:  # anything but "not listening yet" is a real failure
                    raise
            await asyncio.sleep(0.05)


async def test_the_capture_cli_serves_starttls_and_implicit_tls(relay: Relay, pki: TestPki) -> None:
    port, tls_port = free_ports(2)
    argv = [sys.executable, "-m", "factura.devstack.smtp_capture", "--host", HOST, "--port", str(port)]
    argv += ["--maildir", str(relay.maildir), "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    argv += ["--require-starttls", "--tls-port", str(tls_port)]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        starttls, implicit = relay.settings(port, "starttls"), relay.settings(tls_port, "tls")
        await until_ready(starttls)
        await until_ready(implicit)
        sent = [await relay.send(starttls), await relay.send(implicit)]
        assert sorted(relay.captured()) == sorted(sent)
        down = await refused(lambda: relay.send(relay.settings(port, "none")))
        assert "530" in down.detail
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def test_wrong_host_certificate_names_another_host(pki: TestPki) -> None:
    """Guards the negative test above: the certificate really is for another name, from the trusted CA."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pki.wrong_host_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [WRONG_HOST]
    cert.verify_directly_issued_by(ca)
