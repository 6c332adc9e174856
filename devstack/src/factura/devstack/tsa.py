"""A local RFC 3161 time-stamping authority (TSA) and the test PKI behind it.

The renderer signs PDFs (PAdES B-T) and keeps a detached timestamp token beside each document
(docs/signing.md); in production both come from a commercial or qualified TSA. Here the
devstack runs this server instead, so development and tests exercise the renderer's real HTTP
client, outages (``Stack.stop_server("tsa")``) and bad answers, with no network.

``POST /tsa`` with ``application/timestamp-query`` answers an ``application/timestamp-reply``
made by pyHanko's :class:`~pyhanko.sign.timestamps.dummy_client.DummyTimeStamper`, signed by a TSA
certificate with the critical ``timeStamping`` EKU that ``openssl ts -verify`` requires. Paths
that answer like a broken or hostile TSA, for the renderer's bad-answer handling:

* ``/tsa/rejection``: a well-formed response with status *rejection* (no token);
* ``/tsa/garbage``: bytes that are no TimeStampResp, with the right content type;
* ``/tsa/wrong-imprint``: a granted token over a different hash than the one asked for;
* ``/tsa/untrusted``: a granted token signed by a self-signed TSA outside the test root.

The PKI is made once per data dir by :func:`ensure_pki` (the stack calls it before starting this
server): an EC root CA, the TSA certificate and key, the rogue TSA, and one RSA signing
certificate per sample tenant as PKCS#12 with its passphrase file (:func:`ensure_tenant_credentials`).
:func:`issue_signing_p12` issues more (expired, not yet valid, EC) for tests.
"""

from __future__ import annotations

import argparse
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from asn1crypto import cms, core, keys, pem, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fastapi import FastAPI, Request, Response
from pyhanko.sign import general
from pyhanko.sign.general import simple_cms_attribute
from pyhanko.sign.timestamps.dummy_client import DummyTimeStamper
from pyhanko_certvalidator.registry import SimpleCertificateStore
from pyhanko_certvalidator.util import get_pyca_cryptography_hash

log = logging.getLogger("factura.devstack.tsa")

QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"
#: The file name and passphrase file every sample tenant's signing credentials get.
TENANT_P12 = "signing.p12"
TENANT_PASSPHRASE = "signing.pass"
_MAX_QUERY_BYTES = 64 * 1024
SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class TestPki:
    """Where one data dir's test PKI lives (all PEM; private keys unencrypted, devstack only)."""

    __test__ = False  # not a pytest test class, despite its name

    directory: Path

    @property
    def root_cert(self) -> Path:
        """The trust anchor for both the tenants' signatures and the TSA (``openssl ts -verify -CAfile``)."""
        return self.directory / "root.pem"

    @property
    def root_key(self) -> Path:
        return self.directory / "root.key.pem"

    @property
    def tsa_cert(self) -> Path:
        return self.directory / "tsa.pem"

    @property
    def tsa_key(self) -> Path:
        return self.directory / "tsa.key.pem"

    @property
    def rogue_cert(self) -> Path:
        return self.directory / "rogue-tsa.pem"

    @property
    def rogue_key(self) -> Path:
        return self.directory / "rogue-tsa.key.pem"

    def root(self) -> tuple[x509.Certificate, SigningKey]:
        key = serialization.load_pem_private_key(self.root_key.read_bytes(), password=None)
        assert isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey))
        return x509.load_pem_x509_certificate(self.root_cert.read_bytes()), key


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "ES"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Factura devstack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate(
    subject: x509.Name,
    key: SigningKey,
    issuer: x509.Name,
    issuer_key: SigningKey,
    *,
    ca: bool = False,
    time_stamping: bool = False,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(not_after or now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=not ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if time_stamping:  # critical: openssl ts -verify and pyHanko's validator both insist
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_key(path: Path, key: SigningKey) -> None:
    path.touch(mode=0o600)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def ensure_pki(directory: Path) -> TestPki:
    """The data dir's test PKI, made on first use (the root signs everything but the rogue TSA)."""
    pki = TestPki(directory)
    if pki.rogue_key.exists():  # written last
        return pki
    directory.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = _name("Factura devstack Root CA")
    root = _certificate(root_name, root_key, root_name, root_key, ca=True)
    tsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # DummyTimeStamper is RSA-only
    tsa = _certificate(_name("Factura devstack TSA"), tsa_key, root_name, root_key, time_stamping=True)
    rogue_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rogue_name = _name("Rogue TSA (not under the devstack root)")
    rogue = _certificate(rogue_name, rogue_key, rogue_name, rogue_key, time_stamping=True)
    pki.root_cert.write_bytes(_pem(root))
    _write_key(pki.root_key, root_key)
    pki.tsa_cert.write_bytes(_pem(tsa))
    _write_key(pki.tsa_key, tsa_key)
    pki.rogue_cert.write_bytes(_pem(rogue))
    _write_key(pki.rogue_key, rogue_key)
    return pki


def issue_signing_p12(
    pki: TestPki,
    common_name: str,
    passphrase: bytes,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    key: SigningKey | None = None,
) -> bytes:
    """A document-signing certificate under the test root, with its key, as PKCS#12 (AES-256).

    RSA by default: the renderer refuses EC keys (pyHanko would mark the PDF/A-3 as PDF 2.0).
    """
    root, root_key = pki.root()
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _certificate(_name(common_name), key, root.subject, root_key, not_before=not_before, not_after=not_after)
    encryption = serialization.BestAvailableEncryption(passphrase)
    return pkcs12.serialize_key_and_certificates(common_name.encode(), key, cert, [root], encryption)


def ensure_tenant_credentials(pki: TestPki, secrets_dir: Path, tenant_ids: Iterable[str]) -> None:
    """``<secrets_dir>/<tenant>/signing.p12`` and ``signing.pass`` for each tenant that has none yet."""
    for tenant_id in tenant_ids:
        folder = secrets_dir / tenant_id
        if (folder / TENANT_P12).exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        passphrase = secrets.token_urlsafe(16)
        (folder / TENANT_PASSPHRASE).touch(mode=0o600)
        (folder / TENANT_PASSPHRASE).write_text(passphrase + "\n")
        p12 = issue_signing_p12(pki, f"{tenant_id} e-invoicing (devstack)", passphrase.encode())
        (folder / TENANT_P12).touch(mode=0o600)
        (folder / TENANT_P12).write_bytes(p12)


class _CachedKeyStamper(DummyTimeStamper):
    """DummyTimeStamper parses its RSA key on every token: 36 of its 45 ms (OpenSSL 3's key checks),
    which made this emulator the stack's third-largest CPU user in ``make bench``. The key is parsed
    once here; the signed attributes are built as pyHanko 0.29 builds them."""

    def __init__(self, key: rsa.RSAPrivateKey, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._key = key

    def _sign_tst_info(self, tst_info_data: bytes, md_algorithm: str, dt: datetime) -> tuple[bytes, cms.CMSAttributes]:
        digest = hashes.Hash(get_pyca_cryptography_hash(md_algorithm))
        digest.update(tst_info_data)
        signed_attrs = cms.CMSAttributes(
            [
                _attribute("content_type", "tst_info"),
                _attribute("signing_time", cms.Time({"utc_time": core.UTCTime(dt)})),
                _attribute("signing_certificate", general.as_signing_certificate(self.tsa_cert)),
                _attribute("message_digest", digest.finalize()),
            ]
        )
        hash_algo = get_pyca_cryptography_hash(md_algorithm.upper())
        return self._key.sign(signed_attrs.dump(), PKCS1v15(), hash_algo), signed_attrs


def _attribute(kind: str, value: object) -> cms.CMSAttribute:
    return simple_cms_attribute(kind, value)  # type: ignore[no-untyped-call]


def _stamper(cert_path: Path, key_path: Path, chain: list[Path]) -> DummyTimeStamper:
    def der(path: Path) -> bytes:
        return bytes(pem.unarmor(path.read_bytes())[2])

    embedded = SimpleCertificateStore()  # type: ignore[no-untyped-call]
    for path in chain:
        embedded.register(asn1_x509.Certificate.load(der(path)))
    key = serialization.load_der_private_key(der(key_path), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)  # ensure_pki makes RSA TSA keys
    return _CachedKeyStamper(
        key,
        tsa_cert=asn1_x509.Certificate.load(der(cert_path)),
        tsa_key=keys.PrivateKeyInfo.load(der(key_path)),
        certs_to_embed=embedded,
    )


def _rejection() -> bytes:
    """A TimeStampResp with status *rejection* and no token.

    asn1crypto marks the token as mandatory, so the SEQUENCE around the PKIStatusInfo is built by hand.
    """
    status = tsp.PKIStatusInfo({"status": "rejection", "fail_info": {"bad_data_format"}}).dump()
    return b"\x30" + bytes([len(status)]) + bytes(status)


def create_app(pki: TestPki) -> FastAPI:
    good = _stamper(pki.tsa_cert, pki.tsa_key, [pki.root_cert])
    rogue = _stamper(pki.rogue_cert, pki.rogue_key, [])
    app = FastAPI(title="Factura devstack TSA", openapi_url=None, docs_url=None, redoc_url=None)

    async def answer(request: Request, mode: str) -> Response:
        if request.headers.get("content-type") != QUERY_TYPE:
            return Response(f"expected {QUERY_TYPE}", status_code=415, media_type="text/plain")
        body = await request.body()
        try:
            if len(body) > _MAX_QUERY_BYTES:
                raise ValueError("query too large")
            query = tsp.TimeStampReq.load(body)
            _ = query.native  # asn1crypto parses lazily: force it, so a bad query is refused here
        except ValueError:
            return Response(_rejection(), media_type=REPLY_TYPE)
        match mode:
            case "rejection":
                reply = _rejection()
            case "garbage":
                reply = b"this is not a TimeStampResp"
            case "wrong-imprint":
                imprint = query["message_imprint"]
                other = tsp.MessageImprint({"hash_algorithm": imprint["hash_algorithm"], "hashed_message": bytes(32)})
                changed = tsp.TimeStampReq.load(query.dump())
                changed["message_imprint"] = other
                reply = (await good.async_request_tsa_response(changed)).dump()
            case "untrusted":
                reply = (await rogue.async_request_tsa_response(query)).dump()
            case _:
                reply = (await good.async_request_tsa_response(query)).dump()
        log.info("timestamp query answered", extra={"mode": mode})
        return Response(reply, media_type=REPLY_TYPE)

    @app.post("/tsa")
    async def stamp(request: Request) -> Response:
        return await answer(request, "good")

    @app.post("/tsa/{mode}")
    async def misbehave(mode: str, request: Request) -> Response:
        if mode not in ("rejection", "garbage", "wrong-imprint", "untrusted"):
            return Response("unknown mode", status_code=404, media_type="text/plain")
        return await answer(request, mode)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3180)
    parser.add_argument("--pki-dir", type=Path, required=True, help="made by ensure_pki if missing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(create_app(ensure_pki(args.pki_dir)), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
