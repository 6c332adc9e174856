"""Document keys and the S3 error split (outage → DependencyDown, bad request → ClientError)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import aioboto3
import pytest
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError

from factura.common.errors import DependencyDown, ErrorKind, classify
from factura.common.storage import (
    DocumentStore,
    ObjectExists,
    document_key,
    invoice_prefix,
    is_outage,
    manifest_key,
    version_id,
)

ISSUED = date(2026, 11, 2)
SHA_A, SHA_B = "a" * 64, "b" * 64


def client_error(code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": "..."}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")


def test_every_version_has_its_own_folder_and_keeps_the_invoice_file_name() -> None:
    version = version_id([("pdf", SHA_A)])
    assert len(version) == 16
    key = document_key("acme", ISSUED, "F/2026 001", "pdf", version=version)
    assert key == f"acme/2026/11/F_2026_001/{version}/F_2026_001.pdf"
    assert key.startswith(invoice_prefix("acme", ISSUED, "F/2026 001"))


def test_version_depends_on_every_file_and_on_nothing_else() -> None:
    assert version_id([("pdf", SHA_A), ("xml", SHA_B)]) == version_id([("xml", SHA_B), ("pdf", SHA_A)])
    assert version_id([("pdf", SHA_A)]) != version_id([("pdf", SHA_B)])
    assert version_id([("pdf", SHA_A)]) != version_id([("pdf", SHA_A), ("xml", SHA_B)])


def test_manifest_is_per_source_event() -> None:
    one, two = uuid.uuid4(), uuid.uuid4()
    assert manifest_key("acme", ISSUED, "F-1", one) == f"acme/2026/11/F-1/{one}.rendered.json"
    assert manifest_key("acme", ISSUED, "F-1", one) != manifest_key("acme", ISSUED, "F-1", two)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("SlowDown", 503),
        ("ServiceUnavailable", 503),
        ("InternalError", 500),
        ("503", 503),
        ("Throttling", 400),
        ("RequestTimeout", 400),
        ("TooManyRequests", 429),
        ("", 502),
    ],
)
def test_server_and_throttling_errors_are_outages(code: str, status: int) -> None:
    assert is_outage(client_error(code, status))


@pytest.mark.parametrize(
    ("code", "status"),
    [("NoSuchKey", 404), ("404", 404), ("AccessDenied", 403), ("PreconditionFailed", 412), ("InvalidArgument", 400)],
)
def test_request_errors_are_not_outages(code: str, status: int) -> None:
    assert not is_outage(client_error(code, status))


class Refusing:
    """A client whose every call answers with one S3 error (the store's translation is under test)."""

    def __init__(self, error: ClientError) -> None:
        self.error = error

    async def put_object(self, **kwargs: Any) -> None:
        raise self.error

    async def get_object(self, **kwargs: Any) -> None:
        raise self.error


async def test_an_s3_5xx_becomes_dependency_down_and_a_4xx_stays_a_client_error() -> None:
    down = DocumentStore(Refusing(client_error("SlowDown", 503)), "bucket")
    with pytest.raises(DependencyDown) as raised:
        await down.get("k")
    assert raised.value.dependency == "s3"
    assert "SlowDown" in raised.value.detail
    assert classify(raised.value) == (ErrorKind.TRANSIENT, "s3")

    denied = DocumentStore(Refusing(client_error("AccessDenied", 403)), "bucket")
    with pytest.raises(ClientError):
        await denied.get("k")
    missing = DocumentStore(Refusing(client_error("NoSuchKey", 404)), "bucket")
    assert await missing.get_if_exists("k") is None


async def test_a_conditional_put_on_an_existing_key_says_so() -> None:
    store = DocumentStore(Refusing(client_error("PreconditionFailed", 412)), "bucket")
    with pytest.raises(ObjectExists) as exists:
        await store.put("k", b"x", content_type="application/pdf", sha256=SHA_A, metadata={})
    assert exists.value.key == "k"
    with pytest.raises(ClientError):  # a deliberate replace never sends the condition, so 412 is an error there
        await store.put("k", b"x", content_type="application/pdf", sha256=SHA_A, metadata={}, replace=True)


@pytest.fixture
async def unreachable() -> AsyncIterator[DocumentStore]:
    """A real S3 client pointed at a local port nothing listens on (one attempt, no retries)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    session = aioboto3.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1")
    config = AioConfig(connect_timeout=2, read_timeout=2, retries={"total_max_attempts": 1})
    async with session.client("s3", endpoint_url=f"http://127.0.0.1:{port}", config=config) as client:
        yield DocumentStore(client, "bucket")


async def test_an_unreachable_s3_is_dependency_down(unreachable: DocumentStore) -> None:
    for call in (
        unreachable.ping(),
        unreachable.get("k"),
        unreachable.put("k", b"x", content_type="application/pdf", sha256=SHA_A, metadata={}),
    ):
        with pytest.raises(DependencyDown) as raised:
            await call
        assert raised.value.dependency == "s3"
