"""The SMS/voice/push providers' HTTPS APIs: the sender refuses a certificate it cannot trust.

A real TLS server on loopback answers like a provider; its certificate comes from a throwaway CA
(:func:`factura.devstack.tls.make_test_pki`). The SMS provider's readiness probe goes through the
client the SMS sender's bootstrap builds (:func:`factura.common.tls.http_client`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from factura.common.errors import DependencyDown
from factura.common.tls import TlsSettings, http_client
from factura.devstack.smtp_capture import server_tls_context
from factura.devstack.tls import TestPki, make_test_pki
from factura.sms_sender.provider import SmsProvider
from factura.sms_sender.settings import ProviderSettings

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def provider_at(pki: TestPki) -> AsyncIterator[Callable[[Path, Path], Awaitable[tuple[str, list[int]]]]]:
    servers: list[asyncio.Server] = []
    answered: list[int] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        answered.append(1)
        writer.write(ANSWER)
        await writer.drain()
        writer.close()

    async def start(cert: Path, key: Path) -> tuple[str, list[int]]:
        context: ssl.SSLContext = server_tls_context(cert, key, None)
        server = await asyncio.start_server(answer, HOST, 0, ssl=context)
        servers.append(server)
        return f"https://{HOST}:{server.sockets[0].getsockname()[1]}", answered

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def probe(base_url: str, tls: TlsSettings) -> None:
    async with http_client(tls) as client:
        await SmsProvider(ProviderSettings(base_url=base_url, timeout_s=5), client).probe()


async def test_a_provider_certificate_from_the_configured_ca_is_trusted(pki: TestPki, provider_at: Any) -> None:
    url, answered = await provider_at(pki.server_cert, pki.server_key)
    await probe(url, TlsSettings(ca_file=pki.ca_cert))
    assert answered == [1]


async def test_a_private_ca_is_not_trusted_unless_configured(pki: TestPki, provider_at: Any) -> None:
    url, answered = await provider_at(pki.server_cert, pki.server_key)
    with pytest.raises(DependencyDown, match="CERTIFICATE_VERIFY_FAILED"):
        await probe(url, TlsSettings())
    await probe(url, TlsSettings(ca_file=pki.ca_cert))  # the control request gets through
    assert answered == [1]


@pytest.mark.parametrize("which", ["untrusted", "wrong_host"])
async def test_an_invalid_certificate_is_refused(pki: TestPki, provider_at: Any, which: str) -> None:
    cert, key = getattr(pki, f"{which}_cert"), getattr(pki, f"{which}_key")
    url, answered = await provider_at(cert, key)
    with pytest.raises(DependencyDown, match="CERTIFICATE_VERIFY_FAILED"):
        await probe(url, TlsSettings(ca_file=pki.ca_cert))
    await probe(url, TlsSettings(ca_file=pki.ca_cert, verify_certificate=False))  # only when told to
    assert answered == [1]


def test_the_sms_sender_reads_its_provider_tls_settings(pki: TestPki, monkeypatch: pytest.MonkeyPatch) -> None:
    from factura.sms_sender.settings import Settings

    monkeypatch.setenv("FACTURA_SMS_SENDER_PROVIDER_TLS__CA_FILE", str(pki.ca_cert))
    monkeypatch.setenv("FACTURA_SMS_SENDER_PROVIDER_TLS__VERIFY_CERTIFICATE", "false")
    tls = Settings().provider_tls
    assert (tls.ca_file, tls.verify_certificate) == (pki.ca_cert, False)
