"""The one way a Factura client builds its TLS context: SMTP relays and the providers' HTTP APIs.

Verification is on unless a setting turns it off: the chain must lead to a trusted CA (the system's,
or only ``ca_file``'s when one is given) and the certificate must name the host. TLS 1.0 and 1.1
are refused. A client certificate is presented when configured (mutual TLS).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
from pydantic import BaseModel, Field, FilePath


class TlsSettings(BaseModel):
    """How a client checks the server it calls (``…_TLS__CA_FILE``, ``…_TLS__VERIFY_CERTIFICATE``)."""

    verify_certificate: bool = Field(
        default=True, description="Check the chain and the host name; turn off only against a local test server"
    )
    ca_file: FilePath | None = Field(
        default=None, description="PEM bundle of the CAs to trust instead of the system's (a private CA)"
    )
    client_cert: FilePath | None = Field(default=None, description="PEM certificate for mutual TLS")
    client_key: FilePath | None = Field(default=None, description="PEM key of client_cert, if not inside it")


def client_context(
    *,
    verify_certificate: bool = True,
    ca_file: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
) -> ssl.SSLContext:
    """A client TLS context: TLS ≥ 1.2, verifying unless told not to, with an optional client certificate."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify_certificate:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_cert is not None:
        context.load_cert_chain(client_cert, client_key)
    return context


def context_of(settings: TlsSettings) -> ssl.SSLContext:
    return client_context(
        verify_certificate=settings.verify_certificate,
        ca_file=settings.ca_file,
        client_cert=settings.client_cert,
        client_key=settings.client_key,
    )


def http_client(settings: TlsSettings) -> httpx.AsyncClient:
    """The HTTP client for a provider's API, checking its certificate as ``settings`` say."""
    return httpx.AsyncClient(verify=context_of(settings))
