"""Signed, time-stamped invoices against the local TSA, S3 (moto) and broker, rendered in a real pool.

One signed Factur-X invoice is rendered for the module and checked four ways: pyHanko's
validator (trusted against the devstack root, intact, timestamped), the Factur-X XML (same bytes
after signing, factur-x's own reader still finds it), a tampered copy (fails), and the detached
token with ``openssl ts -verify``. Then the failures: the TSA stopped (the render waits and
succeeds once it is back), a TSA answering nonsense, an expired certificate (rejected).
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import facturx
import pytest
from asn1crypto import pem, x509
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import async_validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

from factura.common.envelope import Envelope
from factura.common.events import InvoiceCreatedV1, InvoiceRejectedV2, InvoiceRenderedV1
from factura.common.storage import DocumentStore
from factura.common.tenants import TenantDirectory
from factura.devstack.config import StackConfig
from factura.devstack.stack import Stack
from factura.devstack.tsa import TestPki, issue_signing_p12
from factura.renderer.einvoice import extract_xml
from factura.renderer.handlers import RenderHandlers
from factura.renderer.pool import RenderPool
from factura.renderer.settings import RenderLimits, SigningSettings, TsaSettings
from factura.renderer.signing import SIGNATURE_FIELD, SigningJobs, TimestampUnavailable
from tests.integration.test_renderer import SELLER_TOML, created, invoice, message
from tests.kafka_helpers import Bus, isolated

pytestmark = pytest.mark.integration

PASSPHRASE = "integration-only-passphrase"
SIGNING_TOML = f"""einvoice = "factur-x-en16931"
{SELLER_TOML}
[signing]
pkcs12 = "signing.p12"
passphrase_file = "signing.pass"
reason = "Factura emitida por Carpați Energie S.R.L."
location = "RO"
"""


@dataclass(frozen=True)
class Signing:
    """A module's tenants (folder + signing secrets), its topics and its pool, on the stack's TSA and S3."""

    cfg: StackConfig
    pki: TestPki
    root: Path
    secrets: Path
    bus: Bus
    store: DocumentStore
    pool: RenderPool

    def tenant(
        self, not_before: datetime | None = None, not_after: datetime | None = None, engine: str = "typst"
    ) -> str:
        """A Factur-X tenant that signs, with a fresh certificate under the devstack root."""
        tenant_id = f"it-{uuid.uuid4().hex[:10]}"
        (self.root / tenant_id).mkdir()
        (self.root / tenant_id / "tenant.toml").write_text(f'engine = "{engine}"\n{SIGNING_TOML}', encoding="utf-8")
        (self.secrets / tenant_id).mkdir()
        (self.secrets / tenant_id / "signing.pass").write_text(PASSPHRASE + "\n")
        name = f"{tenant_id} e-invoicing"
        p12 = issue_signing_p12(self.pki, name, PASSPHRASE.encode(), not_before=not_before, not_after=not_after)
        (self.secrets / tenant_id / "signing.p12").write_bytes(p12)
        return tenant_id

    def handlers(self, tsa_url: str | None = None) -> RenderHandlers:
        tsa = TsaSettings(url=tsa_url or self.cfg.tsa_url, timeout_s=5, ca_file=self.pki.root_cert)
        jobs = SigningJobs(SigningSettings(secrets_dir=self.secrets), tsa)
        directory = TenantDirectory(self.root)
        return RenderHandlers(self.bus.publisher, self.store, directory, self.pool, RenderLimits(), signing=jobs)

    async def render(self, tenant_id: str, tsa_url: str | None = None) -> Envelope[InvoiceCreatedV1]:
        event = created(tenant_id, invoice())
        await self.handlers(tsa_url).on_invoice_created(message(event))
        return event

    async def published(self, event: Envelope[InvoiceCreatedV1], kind: str) -> list[Envelope[Any]]:
        return [e for e in await self.bus.events(kind) if e.causation_id == event.event_id]


@pytest.fixture(scope="module")
async def signing(
    cfg: StackConfig, store: DocumentStore, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Signing]:
    base = tmp_path_factory.mktemp("signing")
    (base / "tenants").mkdir()
    (base / "secrets").mkdir()
    pool = RenderPool(1)
    try:
        await pool.warm_up()
        async with isolated(cfg, client_id="test-signing") as bus:
            yield Signing(cfg, TestPki(cfg.pki_dir), base / "tenants", base / "secrets", bus, store, pool)
    finally:
        pool.close()


@dataclass(frozen=True)
class SignedInvoice:
    rendered: InvoiceRenderedV1
    pdf: bytes
    xml: bytes
    tsr: bytes


@pytest.fixture(scope="module", params=["weasyprint", "typst"])
async def signed(signing: Signing, request: pytest.FixtureRequest) -> SignedInvoice:
    """A signed invoice of each engine: both documents must survive signing alike."""
    event = await signing.render(signing.tenant(engine=request.param))
    [published] = await signing.published(event, "invoice.rendered")
    rendered = published.data
    assert isinstance(rendered, InvoiceRenderedV1)
    document = rendered.document
    assert document.timestamp_key == document.key + ".tsr"
    xml_key = document.key.removesuffix(".pdf") + ".xml"
    pdf = await signing.store.get(document.key)
    return SignedInvoice(
        rendered, pdf, await signing.store.get(xml_key), await signing.store.get(document.timestamp_key)
    )


async def run(argv: list[str], cwd: Path) -> tuple[int, str]:
    """A command's exit code and its stdout and stderr together."""
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    return await process.wait(), output.decode()


def trust(pki: TestPki) -> ValidationContext:
    root = x509.Certificate.load(pem.unarmor(pki.root_cert.read_bytes())[2])
    return ValidationContext(trust_roots=[root], allow_fetching=False, revocation_mode="soft-fail")


async def validate(pdf: bytes, pki: TestPki) -> Any:
    [signature] = PdfFileReader(io.BytesIO(pdf)).embedded_signatures
    assert signature.field_name == SIGNATURE_FIELD
    return await async_validate_pdf_signature(
        signature, signer_validation_context=trust(pki), ts_validation_context=trust(pki)
    )


# -- a signed invoice ----------------------------------------------------------------------------


async def test_signed_invoice_is_valid_trusted_and_timestamped(signing: Signing, signed: SignedInvoice) -> None:
    status = await validate(signed.pdf, signing.pki)
    assert status.bottom_line and status.intact and status.valid and status.trusted
    assert status.coverage.name == "ENTIRE_FILE"
    assert status.timestamp_validity is not None and status.timestamp_validity.trusted
    assert status.timestamp_validity.intact
    assert "e-invoicing" in status.signing_cert.subject.human_friendly


async def test_signing_keeps_the_factur_x_xml_and_the_pdf_a_identity(signed: SignedInvoice) -> None:
    assert extract_xml(signed.pdf) == signed.xml  # byte for byte, the XML stored beside it
    name, xml = facturx.get_facturx_xml_from_pdf(signed.pdf, check_xsd=True)
    assert (name, xml) == ("factur-x.xml", signed.xml)
    reader = PdfFileReader(io.BytesIO(signed.pdf))
    assert signed.pdf.startswith(b"%PDF-1.7") and "/Version" not in reader.root  # an EC key would make it 2.0
    xmp = reader.root["/Metadata"].get_object().data
    assert b"pdfaid:part" in xmp and b"fx:ConformanceLevel" in xmp and b"ns0:" not in xmp


async def test_a_tampered_signed_pdf_fails_validation(signing: Signing, signed: SignedInvoice) -> None:
    at = signed.pdf.index(b"/Producer")  # inside the signed byte range of the original file
    tampered = signed.pdf[:at] + b"/Producfr" + signed.pdf[at + 9 :]
    status = await validate(tampered, signing.pki)
    assert not status.intact and not status.bottom_line


async def test_the_detached_token_verifies_with_openssl(
    signing: Signing, signed: SignedInvoice, tmp_path: Path
) -> None:
    (tmp_path / "invoice.pdf").write_bytes(signed.pdf)
    (tmp_path / "invoice.pdf.tsr").write_bytes(signed.tsr)
    verify = ["openssl", "ts", "-verify", "-data", "invoice.pdf", "-in", "invoice.pdf.tsr"]
    verify += ["-CAfile", str(signing.pki.root_cert)]
    code, output = await run(verify, tmp_path)
    assert code == 0 and "Verification: OK" in output, output

    (tmp_path / "invoice.pdf").write_bytes(signed.pdf + b"\n")
    code, output = await run(verify, tmp_path)
    assert code != 0 and "message imprint mismatch" in output, output


# -- failures ------------------------------------------------------------------------------------


async def test_a_tsa_outage_delays_the_invoice_until_the_tsa_is_back(signing: Signing, infra: Stack) -> None:
    tenant_id = signing.tenant()
    event = created(tenant_id, invoice())
    infra.stop_server("tsa")
    try:
        with pytest.raises(TimestampUnavailable) as down:
            await signing.handlers().on_invoice_created(message(event))
        assert down.value.dependency == "tsa" and not down.value.bad_answer  # DependencyDown: pause, retry
    finally:
        infra.start_server("tsa")
    assert await signing.published(event, "invoice.rendered") == []
    await signing.handlers().on_invoice_created(message(event))  # the consumer's retry, after the pause
    [published] = await signing.published(event, "invoice.rendered")
    assert isinstance(published.data, InvoiceRenderedV1) and published.data.document.timestamp_key is not None


@pytest.mark.parametrize(("mode", "words"), [("untrusted", "not under TSA__CA_FILE"), ("garbage", "bad answer")])
async def test_a_tsa_answering_nonsense_is_an_outage_flagged_as_a_bad_answer(
    signing: Signing, mode: str, words: str
) -> None:
    tenant_id = signing.tenant()
    with pytest.raises(TimestampUnavailable) as bad:
        await signing.render(tenant_id, tsa_url=f"{signing.cfg.tsa_url}/{mode}")
    assert bad.value.bad_answer and words in bad.value.detail


async def test_an_expired_certificate_rejects_the_invoice_naming_the_setting(signing: Signing) -> None:
    now = datetime.now(UTC)
    tenant_id = signing.tenant(not_before=now - timedelta(days=400), not_after=now - timedelta(days=1))
    event = await signing.render(tenant_id)
    assert await signing.published(event, "invoice.rendered") == []
    [published] = await signing.published(event, "invoice.rejected")
    assert isinstance(published.data, InvoiceRejectedV2)
    [reason] = published.data.reasons
    assert reason.field == "signing.pkcs12" and "expired on" in reason.message
