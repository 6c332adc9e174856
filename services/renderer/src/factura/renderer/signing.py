"""PAdES signatures and RFC 3161 timestamps on rendered PDFs (docs/signing.md).

Two halves, because the work runs in the render pool:

* in the renderer process, :class:`SigningJobs` turns a tenant's ``[signing]`` section into a
  picklable :class:`SigningJob`: it reads the PKCS#12 file and the passphrase (from the signing
  secrets folder, the tenant folder or the environment) for every invoice, so a rotated secret is
  picked up without a restart; nothing secret is ever logged or put in an exception;
* in the render worker, :func:`sign_and_stamp` signs the finished PDF/A-3 (PAdES B-T, or B-B
  when the tenant does not timestamp) as an incremental update, so the Factur-X XML and every
  byte of the original stay as they were, then asks the TSA for a detached token over the final
  PDF's SHA-256 (the ``.tsr`` an auditor checks with ``openssl ts -verify``). The loaded signer
  (key parsed once: ~70 ms per signature otherwise) and the TSA client (its size-estimate token)
  are cached per worker.

Failures, by whose they are:

* the tenant's credentials (missing file, wrong passphrase, not RSA, certificate expired or not
  yet valid): :class:`~factura.renderer.limits.DocumentRejected` naming the ``signing.*`` field,
  like any other unusable tenant setting. Retrying cannot help until someone fixes the config, and
  a paused partition would hold every other tenant's invoices behind it;
* the TSA (unreachable, timing out, answering HTTP errors) and equally a TSA answering nonsense (a
  refusal, bytes that are no TimeStampResp, a token over another hash, a bad nonce, a signature
  that does not verify, a certificate outside ``TSA__CA_FILE``): :class:`TimestampUnavailable`, a
  :class:`~factura.common.errors.DependencyDown`, so the consumer pauses and retries. A bad answer
  is a fault of the TSA or of its configuration, never of the invoice: rejecting would drop
  invoices the ERP cannot fix, while pausing keeps them until the TSA is repaired. Bad answers are
  flagged (``bad_answer``) so the handler logs them as errors, not as a routine outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from asn1crypto import cms, keys, pem, tsp, x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import pkcs12
from lxml import etree
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign import fields, signers
from pyhanko.sign.timestamps import HTTPTimeStamper, TimeStamper
from pyhanko.sign.timestamps.common_utils import (
    TimestampRequestError,
    handle_tsp_response,
)
from pyhanko.sign.validation.generic_cms import validate_tst_signed_data
from pyhanko_certvalidator import ValidationContext
from pyhanko_certvalidator.registry import SimpleCertificateStore
from pyhanko_certvalidator.util import get_pyca_cryptography_hash

from factura.common.errors import DependencyDown
from factura.common.events import FieldError
from factura.common.tenants import TenantConfig, TenantConfigError
from factura.renderer.limits import DocumentRejected
from factura.renderer.settings import SigningSettings, TsaSettings

#: The dependency name readiness and the consumer's outage list show.
TSA = "tsa"
#: The signature field pyHanko creates (invisible: zero-area widget, allowed by PDF/A-2/3).
SIGNATURE_FIELD = "FacturaSignature"
DIGEST = "sha256"
#: A namespace declaration in XMP: ``xmlns:<prefix>="<uri>"``.
_XMP_NAMESPACE = re.compile(rb'xmlns:([A-Za-z_][A-Za-z0-9_.-]*)="([^"]+)"')


class TimestampUnavailable(DependencyDown):
    """The TSA gave no usable timestamp: unreachable, slow, or (``bad_answer``) answering nonsense."""

    def __init__(self, detail: str, bad_answer: bool = False) -> None:
        super().__init__(TSA, detail)
        self.bad_answer = bad_answer

    def __reduce__(self) -> tuple[Any, ...]:  # crosses the process pool
        return (TimestampUnavailable, (self.detail, self.bad_answer))


def rejected(field_name: str, message: str) -> DocumentRejected:
    return DocumentRejected([FieldError(field=field_name, message=message)])


@dataclass(frozen=True)
class SigningJob:
    """Everything a worker needs to sign one tenant's PDF; secrets are kept out of ``repr``."""

    tenant_id: str
    sign: bool
    pkcs12: bytes | None = field(default=None, repr=False)
    passphrase: bytes | None = field(default=None, repr=False)
    #: The tenant config field the passphrase came from, for the rejection reason.
    passphrase_field: str = "signing.pkcs12"
    reason: str | None = None
    location: str | None = None
    #: None: no timestamps (PAdES B-B, no detached token).
    tsa_url: str | None = None
    tsa_timeout_s: float = 10.0
    #: PEM trust anchors for the TSA certificate; None: the token is checked, its issuer is not.
    tsa_roots: bytes | None = None


@dataclass(frozen=True)
class Signed:
    pdf: bytes
    #: DER TimeStampResp over SHA-256(pdf), or None when the tenant does not timestamp.
    timestamp: bytes | None


class SigningJobs:
    """Builds each invoice's :class:`SigningJob` from the tenant config and the renderer settings."""

    def __init__(self, signing: SigningSettings, tsa: TsaSettings) -> None:
        self._secrets_dir = signing.secrets_dir
        self._tsa = tsa
        # Read once: a missing or unreadable trust file stops startup instead of every invoice.
        self._tsa_roots = tsa.ca_file.read_bytes() if tsa.ca_file is not None else None

    def check(self, tenants: Iterable[TenantConfig]) -> None:
        """At startup: a tenant that wants timestamps needs a TSA; say which, and what to set."""
        missing = [t.tenant_id for t in tenants if t.signing is not None and t.signing.timestamp]
        if missing and self._tsa.url is None:
            raise TenantConfigError(
                f"tenants {missing} have [signing] timestamp = true but FACTURA_RENDERER_TSA__URL is not set; "
                "set it, or set timestamp = false to sign without a timestamp (PAdES B-B)"
            )

    def job(self, tenant: TenantConfig) -> SigningJob | None:
        """The job for ``tenant``'s next document; :class:`DocumentRejected` names a bad setting."""
        policy = tenant.signing
        if policy is None or not (policy.enabled or policy.timestamp):
            return None
        if policy.timestamp and self._tsa.url is None:
            raise rejected("signing.timestamp", "the renderer has no TSA (FACTURA_RENDERER_TSA__URL) configured")
        tsa_url = self._tsa.url if policy.timestamp else None
        if not policy.enabled:
            return SigningJob(
                tenant.tenant_id,
                sign=False,
                tsa_url=tsa_url,
                tsa_timeout_s=self._tsa.timeout_s,
                tsa_roots=self._tsa_roots,
            )
        assert policy.pkcs12 is not None  # SigningPolicy's validator
        p12 = self._secret(tenant, policy.pkcs12, "signing.pkcs12")
        passphrase: bytes | None = None
        passphrase_field = "signing.pkcs12"
        if policy.passphrase_file is not None:
            passphrase_field = "signing.passphrase_file"
            passphrase = self._secret(tenant, policy.passphrase_file, passphrase_field).rstrip(b"\r\n")
        elif policy.passphrase_env is not None:
            passphrase_field = "signing.passphrase_env"
            value = os.environ.get(policy.passphrase_env)
            if value is None:
                raise rejected(passphrase_field, f"the environment variable {policy.passphrase_env} is not set")
            passphrase = value.encode()
        return SigningJob(
            tenant.tenant_id,
            sign=True,
            pkcs12=p12,
            passphrase=passphrase,
            passphrase_field=passphrase_field,
            reason=policy.reason,
            location=policy.location,
            tsa_url=tsa_url,
            tsa_timeout_s=self._tsa.timeout_s,
            tsa_roots=self._tsa_roots,
        )

    def _secret(self, tenant: TenantConfig, name: str, field_name: str) -> bytes:
        """``<secrets_dir>/<tenant_id>/<name>``, else ``<tenant folder>/<name>``."""
        folders = [self._secrets_dir / tenant.tenant_id] if self._secrets_dir is not None else []
        folders += [tenant.directory] if tenant.directory is not None else []
        for path in (folder / name for folder in folders):
            if path.is_file():
                return path.read_bytes()
        # The reason goes into invoice.rejected: name the places, not the renderer's file system.
        raise rejected(field_name, f"{name!r} is in neither the signing secrets folder nor the tenant folder")


# -- in the render worker ------------------------------------------------------------------------


def sign_and_stamp(pdf: bytes, job: SigningJob, timestamper: TimeStamper | None = None) -> Signed:
    """Sign ``pdf`` (if ``job.sign``) and timestamp the result (if ``job.tsa_url``).

    ``timestamper`` replaces the HTTP client (tests pass pyHanko's in-process DummyTimeStamper).
    """
    signer = _signer(job) if job.sign else None
    stamper: CheckedTimeStamper | None = None
    if timestamper is not None or job.tsa_url is not None:
        inner = timestamper or _http_timestamper(job.tsa_url or "", job.tsa_timeout_s)
        stamper = _checked(inner, job.tsa_roots)
    return asyncio.run(_sign_and_stamp(pdf, job, signer, stamper))


async def _sign_and_stamp(
    pdf: bytes, job: SigningJob, signer: signers.Signer | None, stamper: CheckedTimeStamper | None
) -> Signed:
    if signer is not None:
        meta = signers.PdfSignatureMetadata(
            field_name=SIGNATURE_FIELD,
            subfilter=fields.SigSeedSubFilter.PADES,  # /ETSI.CAdES.detached: PAdES baseline
            md_algorithm=DIGEST,
            reason=job.reason,
            location=job.location,
            use_pades_lta=False,
            embed_validation_info=False,
        )
        out = io.BytesIO()
        writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
        _keep_xmp_prefixes(writer)
        pdf_signer = signers.PdfSigner(meta, signer=signer, timestamper=stamper)
        await pdf_signer.async_sign_pdf(writer, output=out)
        pdf = out.getvalue()
    if stamper is None:
        return Signed(pdf, None)
    response, _ = await stamper.response(hashlib.sha256(pdf).digest(), DIGEST)
    return Signed(pdf, response.dump())


def _keep_xmp_prefixes(writer: IncrementalPdfFileWriter) -> None:
    """pyHanko re-serialises the XMP with lxml, which prints a namespace it does not know as
    ``ns0:``, while PDF/A extension schemas declare their prefixes (Factur-X's ``fx``, Typst's
    ``pdfuaid``...): register every prefix the document's own XMP declares (idempotent)."""
    if "/Metadata" not in writer.root:
        return
    # Read as pyHanko reads it (a MetadataStream, which it updates in place): a plain
    # dereference would cache it as a bare stream, and pyHanko would then write a new XMP.
    for prefix, uri in _XMP_NAMESPACE.findall(writer.root["/Metadata"].data):
        with contextlib.suppress(ValueError):  # lxml refuses to rebind its reserved prefixes (xml, ns0...)
            etree.register_namespace(prefix.decode(), uri.decode())


class _CachedKeySigner(signers.SimpleSigner):
    """SimpleSigner parses its private key on every signature (~70 ms with OpenSSL 3's RSA checks)."""

    def __init__(self, key: RSAPrivateKey, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._key = key

    def sign_raw(self, data: bytes, digest_algorithm: str) -> bytes:
        mechanism = self.get_signature_mechanism_for_digest(digest_algorithm).signature_algo
        if mechanism != "rsassa_pkcs1v15":
            return super().sign_raw(data, digest_algorithm)
        return self._key.sign(data, PKCS1v15(), get_pyca_cryptography_hash(digest_algorithm))


def _signer(job: SigningJob) -> _CachedKeySigner:
    """The job's signer (cached per worker), after checking its certificate is valid right now."""
    assert job.pkcs12 is not None
    try:
        signer, not_before, not_after, subject = _load_signer(job.pkcs12, job.passphrase)
    except ValueError as e:
        message = str(e) if isinstance(e, _Unusable) else "could not be opened: wrong passphrase, or not a PKCS#12 file"
        field_name = "signing.pkcs12" if isinstance(e, _Unusable) else job.passphrase_field
        raise rejected(field_name, f"signing.pkcs12 {message}") from None
    now = datetime.now(UTC)
    if now < not_before:
        raise rejected("signing.pkcs12", f"certificate {subject} is not valid before {not_before.isoformat()}")
    if now > not_after:
        raise rejected("signing.pkcs12", f"certificate {subject} expired on {not_after.isoformat()}")
    return signer


class _Unusable(ValueError):
    """The PKCS#12 opened but cannot sign a PDF/A-3 (no key, no certificate, not RSA)."""


@functools.lru_cache(maxsize=16)
def _load_signer(p12: bytes, passphrase: bytes | None) -> tuple[_CachedKeySigner, datetime, datetime, str]:
    key, cert, others = pkcs12.load_key_and_certificates(p12, passphrase)
    if key is None or cert is None:
        raise _Unusable("holds no private key and certificate")
    if not isinstance(key, RSAPrivateKey):
        # pyHanko would register ISO 32002 for an EC or EdDSA key and mark the file as PDF 2.0,
        # which a PDF/A-3 (based on PDF 1.7) must not be.
        raise _Unusable(f"holds a {type(key).__name__.lstrip('_')} key; signing a PDF/A-3 needs an RSA key")
    der = serialization.Encoding.DER
    registry = SimpleCertificateStore()  # type: ignore[no-untyped-call]
    for other in others:  # the chain, embedded so a validator can build the path
        registry.register(x509.Certificate.load(other.public_bytes(der)))
    signer = _CachedKeySigner(
        key,
        signing_cert=x509.Certificate.load(cert.public_bytes(der)),
        signing_key=keys.PrivateKeyInfo.load(
            key.private_bytes(der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        ),
        cert_registry=registry,
    )
    return signer, cert.not_valid_before_utc, cert.not_valid_after_utc, cert.subject.rfc4514_string()


@functools.lru_cache(maxsize=4)
def _http_timestamper(url: str, timeout_s: float) -> HTTPTimeStamper:
    return HTTPTimeStamper(url, timeout=timeout_s)


@functools.lru_cache(maxsize=4)
def _checked(inner: TimeStamper, roots: bytes | None) -> CheckedTimeStamper:
    # cached, so pyHanko's size-estimate token (fetched once per timestamper) is fetched once per worker
    return CheckedTimeStamper(inner, roots)


def _refusal(response: tsp.TimeStampResp) -> str | None:
    """The status of a refusal, which carries no token.

    asn1crypto declares the token mandatory, so a (legal) status-only response does not parse as a
    TimeStampResp; its first element, the PKIStatusInfo, is read on its own.
    """
    try:
        info = tsp.PKIStatusInfo.load(response.contents, strict=False)
        status, text, fail = info["status"].native, info["status_string"].native, info["fail_info"].native
    except (ValueError, TypeError, KeyError):
        return None
    return f"the TSA refused the request (status {status}, {'; '.join(text or [])} {sorted(fail or [])})"


def trust_anchors(pem_bundle: bytes) -> list[x509.Certificate]:
    return [x509.Certificate.load(der) for _, _, der in pem.unarmor(pem_bundle, multiple=True)]


class CheckedTimeStamper(TimeStamper):
    """A TSA client that checks every token it hands out and maps every failure to :class:`TimestampUnavailable`.

    pyHanko checks the status and the nonce; this also checks that the token covers the hash asked
    for, that its signature verifies, and (with trust anchors) that the TSA chains to one of them,
    for the token inside the signature (B-T) as for the detached one.
    """

    def __init__(self, inner: TimeStamper, roots: bytes | None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._inner = inner
        self._roots = trust_anchors(roots) if roots is not None else None

    async def async_request_tsa_response(self, req: tsp.TimeStampReq) -> tsp.TimeStampResp:
        try:
            response = await self._inner.async_request_tsa_response(req)
        except TimestampRequestError as e:
            cause = e.__cause__
            if isinstance(cause, (aiohttp.ClientError, OSError, asyncio.TimeoutError)):
                raise TimestampUnavailable(f"unreachable or failing ({type(cause).__name__}: {cause})") from None
            raise TimestampUnavailable(f"bad answer: {e}", bad_answer=True) from None
        except (ValueError, TypeError, KeyError) as e:
            raise TimestampUnavailable(f"bad answer: not a TimeStampResp ({e})", bad_answer=True) from None
        try:
            _ = response["status"].native  # asn1crypto parses lazily: fail here on garbage
        except (ValueError, TypeError, KeyError) as e:
            raise TimestampUnavailable(
                f"bad answer: {_refusal(response) or f'not a TimeStampResp ({e})'}", True
            ) from None
        return response

    async def async_timestamp(self, message_digest: bytes, md_algorithm: str) -> cms.ContentInfo:
        _, token = await self.response(message_digest, md_algorithm)
        return token

    async def response(self, digest: bytes, md_algorithm: str) -> tuple[tsp.TimeStampResp, cms.ContentInfo]:
        """The TSA's whole response (for the ``.tsr``) and its token, both checked."""
        nonce, request = self.request_cms(digest, md_algorithm)  # type: ignore[no-untyped-call]
        response = await self.async_request_tsa_response(request)
        try:
            token = handle_tsp_response(response, nonce)
            status = await validate_tst_signed_data(
                token["content"],
                ValidationContext(trust_roots=self._roots, allow_fetching=False, revocation_mode="soft-fail")
                if self._roots is not None
                else None,
                lambda algorithm: digest if algorithm == md_algorithm else b"",
            )
        except TimestampRequestError as e:  # a refusal, or a bad nonce
            raise TimestampUnavailable(f"bad answer: {e}", bad_answer=True) from None
        except Exception as e:  # noqa: BLE001 - any unreadable token is the TSA's bad answer
            raise TimestampUnavailable(f"bad answer: unreadable token ({type(e).__name__}: {e})", True) from None
        if not status["intact"]:
            raise TimestampUnavailable("bad answer: the token does not cover the hash that was sent", True)
        if not status["valid"]:
            raise TimestampUnavailable("bad answer: the token's signature does not verify", True)
        if self._roots is not None and status["trust_problem_indic"] is not None:
            signer = status["signing_cert"].subject.human_friendly
            raise TimestampUnavailable(f"bad answer: the token is signed by {signer}, not under TSA__CA_FILE", True)
        return response, token
