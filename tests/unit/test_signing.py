"""The tenant ``[signing]`` section, the signing job built from it, and how signing failures are classified.

No PDF and no network: credentials fail before anything is signed, and the TSA client is checked
against pyHanko's in-process DummyTimeStamper (a good one, a rogue one, and ones that misbehave).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from asn1crypto import keys, pem, tsp, x509
from cryptography.hazmat.primitives.asymmetric import ec
from pyhanko.sign.timestamps.common_utils import TimestampRequestError
from pyhanko.sign.timestamps.dummy_client import DummyTimeStamper

from factura.common.tenants import SigningPolicy, TenantConfig, TenantConfigError, TenantDirectory
from factura.devstack.tsa import TestPki, ensure_pki, issue_signing_p12
from factura.renderer.limits import DocumentRejected
from factura.renderer.settings import SigningSettings, TsaSettings
from factura.renderer.signing import CheckedTimeStamper, SigningJob, SigningJobs, TimestampUnavailable, sign_and_stamp

PASS = b"correct horse"
DIGEST = hashlib.sha256(b"the final PDF").digest()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return ensure_pki(tmp_path_factory.mktemp("pki"))


def stamper(pki: TestPki, rogue: bool = False, cls: type[DummyTimeStamper] = DummyTimeStamper) -> DummyTimeStamper:
    def der(path: Path) -> bytes:
        return bytes(pem.unarmor(path.read_bytes())[2])

    cert, key = (pki.rogue_cert, pki.rogue_key) if rogue else (pki.tsa_cert, pki.tsa_key)
    return cls(tsa_cert=x509.Certificate.load(der(cert)), tsa_key=keys.PrivateKeyInfo.load(der(key)))


def tenant(tmp_path: Path, toml: str) -> TenantConfig:
    folder = tmp_path / "tenants" / "acme"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tenant.toml").write_text(toml)
    return TenantDirectory(tmp_path / "tenants").get("acme")


def reason(error: pytest.ExceptionInfo[DocumentRejected]) -> tuple[str, str]:
    [only] = error.value.reasons
    return only.field, only.message


# -- the [signing] section -----------------------------------------------------------------------


def test_signing_section_parses_and_is_optional(tmp_path: Path) -> None:
    assert TenantConfig.default("acme").signing is None
    config = tenant(tmp_path, '[signing]\npkcs12 = "acme.p12"\npassphrase_env = "ACME_P12_PASS"\nreason = "Factura"\n')
    assert config.signing == SigningPolicy(pkcs12="acme.p12", passphrase_env="ACME_P12_PASS", reason="Factura")
    assert config.signing.enabled and config.signing.timestamp


@pytest.mark.parametrize(
    "section",
    [
        "enabled = true",  # no pkcs12
        'pkcs12 = "../other-tenant/signing.p12"',  # a path, not a name
        'pkcs12 = "a.p12"\npassphrase_file = "p"\npassphrase_env = "P"',  # two passphrase sources
        'pkcs12 = "a.p12"\npassphrase = "inline secrets are not a field"',
    ],
)
def test_bad_signing_sections_stop_the_directory(tmp_path: Path, section: str) -> None:
    with pytest.raises(TenantConfigError, match="signing"):
        tenant(tmp_path, f"[signing]\n{section}\n")


# -- the job, built in the renderer process -------------------------------------------------------


def test_job_reads_the_secrets_folder_before_the_tenant_folder_and_hides_them(tmp_path: Path) -> None:
    config = tenant(tmp_path, '[signing]\npkcs12 = "s.p12"\npassphrase_file = "s.pass"\nlocation = "ES"\n')
    assert config.directory is not None
    (config.directory / "s.p12").write_bytes(b"from the tenant folder")
    secrets = tmp_path / "secrets" / "acme"
    secrets.mkdir(parents=True)
    (secrets / "s.pass").write_text("hunter2\n")
    jobs = SigningJobs(SigningSettings(secrets_dir=tmp_path / "secrets"), TsaSettings(url="http://tsa.test/tsa"))
    job = jobs.job(config)
    assert job is not None
    assert (job.pkcs12, job.passphrase, job.passphrase_field) == (
        b"from the tenant folder",
        b"hunter2",
        "signing.passphrase_file",
    )
    assert (job.tsa_url, job.location) == ("http://tsa.test/tsa", "ES")
    assert "hunter2" not in repr(job) and "tenant folder" not in repr(job)
    (secrets / "s.p12").write_bytes(b"from the secrets folder")
    assert jobs.job(config) == dataclasses.replace(job, pkcs12=b"from the secrets folder")


def test_missing_secrets_and_a_missing_tsa_are_rejections_naming_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACME_P12_PASS", raising=False)
    config = tenant(tmp_path, '[signing]\npkcs12 = "s.p12"\npassphrase_env = "ACME_P12_PASS"\n')
    jobs = SigningJobs(SigningSettings(), TsaSettings(url="http://tsa.test/tsa"))
    with pytest.raises(DocumentRejected) as missing:
        jobs.job(config)
    assert reason(missing)[0] == "signing.pkcs12" and "'s.p12' is in neither" in reason(missing)[1]
    assert config.directory is not None
    (config.directory / "s.p12").write_bytes(b"p12")
    with pytest.raises(DocumentRejected) as no_env:
        jobs.job(config)
    assert reason(no_env) == ("signing.passphrase_env", "the environment variable ACME_P12_PASS is not set")

    without_tsa = SigningJobs(SigningSettings(), TsaSettings())
    with pytest.raises(DocumentRejected) as no_tsa:
        without_tsa.job(config)
    assert reason(no_tsa)[0] == "signing.timestamp"
    with pytest.raises(TenantConfigError, match=r"acme.*FACTURA_RENDERER_TSA__URL"):
        without_tsa.check([config])
    b_b = tenant(tmp_path, '[signing]\npkcs12 = "s.p12"\ntimestamp = false\n')
    without_tsa.check([b_b])  # PAdES B-B needs no TSA
    job = without_tsa.job(b_b)
    assert job is not None and job.tsa_url is None


# -- the worker's checks on the credentials -------------------------------------------------------


def job_for(p12: bytes, passphrase: bytes = PASS) -> SigningJob:
    return SigningJob("acme", sign=True, pkcs12=p12, passphrase=passphrase, passphrase_field="signing.passphrase_file")


def test_unusable_credentials_are_rejected_before_anything_is_signed(pki: TestPki) -> None:
    now = datetime.now(UTC)
    good = issue_signing_p12(pki, "acme", PASS)
    expired = issue_signing_p12(
        pki, "acme", PASS, not_before=now - timedelta(days=400), not_after=now - timedelta(days=1)
    )
    future = issue_signing_p12(pki, "acme", PASS, not_before=now + timedelta(days=1))
    ec_key = issue_signing_p12(pki, "acme", PASS, key=ec.generate_private_key(ec.SECP256R1()))
    cases: list[tuple[SigningJob, str, str]] = [
        (job_for(good, b"wrong"), "signing.passphrase_file", "wrong passphrase"),
        (job_for(b"not a pkcs12 file"), "signing.passphrase_file", "not a PKCS#12 file"),
        (job_for(expired), "signing.pkcs12", "expired on"),
        (job_for(future), "signing.pkcs12", "is not valid before"),
        (job_for(ec_key), "signing.pkcs12", "needs an RSA key"),
    ]
    for job, field, words in cases:
        with pytest.raises(DocumentRejected) as error:
            sign_and_stamp(b"%PDF-1.7 never read", job)
        assert reason(error)[0] == field and words in reason(error)[1], reason(error)


# -- the TSA client's checks ----------------------------------------------------------------------


class _Refusing(DummyTimeStamper):
    async def async_request_tsa_response(self, req: tsp.TimeStampReq) -> tsp.TimeStampResp:
        status = tsp.PKIStatusInfo({"status": "rejection"}).dump()
        return tsp.TimeStampResp.load(b"\x30" + bytes([len(status)]) + status)  # a refusal carries no token


class _OtherHash(DummyTimeStamper):
    async def async_request_tsa_response(self, req: tsp.TimeStampReq) -> tsp.TimeStampResp:
        changed = tsp.TimeStampReq.load(req.dump())
        changed["message_imprint"] = tsp.MessageImprint(
            {"hash_algorithm": {"algorithm": "sha256"}, "hashed_message": bytes(32)}
        )
        return await super().async_request_tsa_response(changed)


class _Garbage(DummyTimeStamper):
    async def async_request_tsa_response(self, req: tsp.TimeStampReq) -> Any:
        return tsp.TimeStampResp.load(b"\x30\x03\x02\x01\x00")


class _Down(DummyTimeStamper):
    async def async_request_tsa_response(self, req: tsp.TimeStampReq) -> Any:
        try:
            raise aiohttp.ClientConnectionError("connection refused")
        except aiohttp.ClientError as e:
            raise TimestampRequestError("Error while contacting timestamp service") from e


def test_a_good_token_passes_every_check(pki: TestPki) -> None:
    checked = CheckedTimeStamper(stamper(pki), pki.root_cert.read_bytes())
    response, token = asyncio.run(checked.response(DIGEST, "sha256"))
    assert response["status"]["status"].native == "granted"
    assert (
        token["content"]["encap_content_info"]["content"].parsed["message_imprint"]["hashed_message"].native == DIGEST
    )


@pytest.mark.parametrize(
    ("inner", "rogue", "bad_answer", "words"),
    [
        (_Down, False, False, "unreachable"),
        (_Refusing, False, True, "refused"),
        (_Garbage, False, True, "bad answer"),
        (_OtherHash, False, True, "does not cover the hash"),
        (DummyTimeStamper, True, True, "not under TSA__CA_FILE"),
    ],
)
def test_tsa_failures_are_outages_and_bad_answers_say_so(
    pki: TestPki, inner: type[DummyTimeStamper], rogue: bool, bad_answer: bool, words: str
) -> None:
    checked = CheckedTimeStamper(stamper(pki, rogue, inner), pki.root_cert.read_bytes())
    with pytest.raises(TimestampUnavailable) as error:
        asyncio.run(checked.response(DIGEST, "sha256"))
    assert error.value.dependency == "tsa"
    assert error.value.bad_answer is bad_answer
    assert words in error.value.detail
    again = pickle.loads(pickle.dumps(error.value))  # it crosses the render pool
    assert (type(again), again.detail, again.bad_answer) == (TimestampUnavailable, error.value.detail, bad_answer)
