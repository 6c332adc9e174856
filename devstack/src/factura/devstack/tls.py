"""A throwaway public-key infrastructure for TLS tests and a TLS-speaking local stack.

Keys are made at run time into a folder the caller owns (a pytest tmp dir, ``.data/``), so no
private key is ever committed and every run trusts a CA nobody else has. Besides the good server
certificate it makes the two certificates a client must refuse: one self-signed (no trusted CA
vouches for it) and one from the trusted CA but for another host name.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: What the wrong-host certificate is issued for: a name no test connects to (RFC 2606).
WRONG_HOST = "wrong-host.invalid"
_VALIDITY = dt.timedelta(days=2)


@dataclass(frozen=True)
class TestPki:
    """Paths of the PEM files :func:`make_test_pki` wrote."""

    __test__ = False  # not a pytest test class, whatever its name says

    ca_cert: Path
    #: Issued by the CA for the requested hosts: the certificate a client should accept.
    server_cert: Path
    server_key: Path
    #: Self-signed for the same hosts: no trusted CA vouches for it.
    untrusted_cert: Path
    untrusted_key: Path
    #: Issued by the trusted CA, but for :data:`WRONG_HOST` only.
    wrong_host_cert: Path
    wrong_host_key: Path
    #: Issued by the CA for client authentication (mutual TLS).
    client_cert: Path
    client_key: Path


def make_test_pki(folder: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> TestPki:
    """Write a fresh CA and the certificates of :class:`TestPki` into ``folder``; keys are 0600."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = _name("Factura devstack test CA")
    ca = _certificate(ca_name, ca_key, ca_name, ca_key, is_ca=True)
    _write_cert(folder / "ca.pem", ca)

    def issue(stem: str, names: Sequence[str], usage: x509.ObjectIdentifier, self_signed: bool = False) -> None:
        key = _key()
        subject = _name(names[0] if names else stem)
        issuer_name, issuer_key = (subject, key) if self_signed else (ca_name, ca_key)
        cert = _certificate(subject, key, issuer_name, issuer_key, sans=names, usage=usage)
        _write_cert(folder / f"{stem}.pem", cert)
        _write_key(folder / f"{stem}.key", key)

    server_auth, client_auth = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    issue("server", hosts, server_auth)
    issue("untrusted", hosts, server_auth, self_signed=True)
    issue("wrong-host", [WRONG_HOST], server_auth)
    issue("client", [], client_auth)
    return TestPki(
        ca_cert=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        untrusted_cert=folder / "untrusted.pem",
        untrusted_key=folder / "untrusted.key",
        wrong_host_cert=folder / "wrong-host.pem",
        wrong_host_key=folder / "wrong-host.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())  # fast to make, accepted by every TLS stack


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Factura devstack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    is_ca: bool = False,
    sans: Sequence[str] = (),
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))  # tolerate a little clock skew
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in sans]), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others, even briefly
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
