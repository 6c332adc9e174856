"""End to end: each sample tenant of the demo gets its documents as its ``tenant.toml`` says, drawn
by its engine, and ``sampa-logistica``'s signed (PAdES with a timestamp, under the devstack's test
PKI) as they reach the customer's mailbox."""

from __future__ import annotations

import io
import uuid
import zipfile

import pytest
from asn1crypto import pem, x509
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import async_validate_pdf_signature
from pyhanko_certvalidator import ValidationContext
from pypdf import PdfReader

from factura.common.tenants import TenantDirectory
from factura.devstack.stack import Stack
from tests.e2e.test_flow import flow, mails_to, sample

pytestmark = pytest.mark.e2e


def delivered_pdf(attachment: bytes) -> bytes:
    """The PDF a customer got: the attachment itself, or the PDF inside the zip package."""
    if attachment.startswith(b"%PDF-"):
        return attachment
    with zipfile.ZipFile(io.BytesIO(attachment)) as package:
        [name] = [n for n in package.namelist() if n.endswith(".pdf")]
        return package.read(name)


def drawn_by(pdf: bytes) -> str:
    """Which engine wrote the PDF: Typst names itself as /Creator, WeasyPrint as /Producer."""
    info = PdfReader(io.BytesIO(pdf)).metadata
    assert info is not None
    return "typst" if (info.creator or "").startswith("Typst") else (info.producer or "").split(" ")[0].lower()


async def test_each_sample_tenant_gets_its_engine_and_the_signing_tenant_a_valid_signature(services: Stack) -> None:
    cfg = services.cfg
    tenants = list(TenantDirectory(cfg.tenants_dir))
    assert {t.engine for t in tenants} == {"weasyprint", "typst"}  # the demo shows both
    assert any(t.signing is not None for t in tenants)
    samples = {
        t.tenant_id: sample("email", email=f"{t.tenant_id}.{uuid.uuid4().hex[:6]}@cliente.test", tenant=t.tenant_id)
        for t in tenants
    }
    await flow(cfg, list(samples.values()))
    root = x509.Certificate.load(pem.unarmor((cfg.pki_dir / "root.pem").read_bytes())[2])
    trust = ValidationContext(trust_roots=[root], allow_fetching=False, revocation_mode="soft-fail")
    for tenant in tenants:
        [mail] = mails_to(cfg, samples[tenant.tenant_id].payload["customer"]["email"])
        [attachment] = list(mail.iter_attachments())
        pdf = delivered_pdf(attachment.get_content())
        assert drawn_by(pdf) == tenant.engine, tenant.tenant_id
        signatures = PdfFileReader(io.BytesIO(pdf)).embedded_signatures
        assert len(signatures) == (1 if tenant.signing is not None else 0), tenant.tenant_id
        for signature in signatures:
            status = await async_validate_pdf_signature(
                signature, signer_validation_context=trust, ts_validation_context=trust
            )
            assert (
                status.bottom_line
                and status.trusted
                and status.coverage is not None
                and status.coverage.name == "ENTIRE_FILE"
            )
            assert status.timestamp_validity is not None and status.timestamp_validity.trusted
