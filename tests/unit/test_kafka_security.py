"""Kafka connection security: settings → one set of client arguments → every aiokafka client.

Only PLAINTEXT can be exercised against a broker here (Tansu has no TLS or SASL listener); the
integration tests cover it. TLS and SCRAM are checked up to the client objects aiokafka builds.
"""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

import certifi
import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from factura.common.kafka.connection import client_kwargs, consumer_kwargs
from factura.common.kafka.consumer import ConsumerLoop
from factura.common.kafka.producer import Publisher
from factura.common.settings import KafkaSettings, ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"}


def strimzi(**overrides: object) -> KafkaSettings:
    fields: dict[str, object] = {
        "bootstrap_servers": "factura-kafka-bootstrap:9093",
        "security_protocol": "SASL_SSL",
        "sasl_username": "factura-renderer",
        "sasl_password": "s3cret",
        "ssl_ca_file": certifi.where(),
    }
    return KafkaSettings.model_validate(fields | overrides)


def test_the_default_is_plaintext_without_credentials() -> None:
    assert client_kwargs(KafkaSettings()) == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}


def test_consumers_get_the_connection_and_the_fetch_wait() -> None:
    settings = KafkaSettings(fetch_max_wait_ms=50)
    assert consumer_kwargs(settings) == client_kwargs(settings) | {"fetch_max_wait_ms": 50}


def test_sasl_ssl_verifies_the_broker_and_sends_scram_credentials() -> None:
    kwargs = client_kwargs(strimzi())
    context = kwargs.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert kwargs == {
        "bootstrap_servers": "factura-kafka-bootstrap:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "factura-renderer",
        "sasl_plain_password": "s3cret",
    }


def test_a_missing_ca_file_stops_the_start() -> None:
    with pytest.raises(FileNotFoundError):
        client_kwargs(strimzi(ssl_ca_file="/nonexistent/ca.crt"))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sasl_password": None}, "needs sasl_username and sasl_password"),
        ({"sasl_username": None}, "needs sasl_username and sasl_password"),
        ({"security_protocol": "SSL"}, "does not use SASL"),
        ({"security_protocol": "PLAINTEXT", "sasl_username": None, "sasl_password": None}, "has no TLS"),
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
    ],
)
def test_incomplete_or_contradictory_settings_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        strimzi(**fields)


class Svc(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FACTURA_TESTSVC_", env_nested_delimiter="__", extra="ignore")


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "SECURITY_PROTOCOL": "SASL_SSL",
        "SASL_USERNAME": "factura-audit",
        "SASL_PASSWORD": "from-the-secret",
        "SSL_CA_FILE": "/etc/kafka-ca/ca.crt",
    }.items():
        monkeypatch.setenv(f"FACTURA_TESTSVC_KAFKA__{name}", value)
    kafka = Svc().kafka
    assert (kafka.security_protocol, kafka.sasl_mechanism, kafka.sasl_username) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
        "factura-audit",
    )
    assert kafka.sasl_password is not None and kafka.sasl_password.get_secret_value() == "from-the-secret"
    assert "from-the-secret" not in repr(kafka)
    assert kafka.ssl_ca_file == "/etc/kafka-ca/ca.crt"


async def test_the_publisher_and_the_consumer_loop_connect_with_the_settings() -> None:
    settings = strimzi()
    publisher = Publisher(settings, client_id="renderer")
    loop = ConsumerLoop(
        settings=settings, group_id="factura-renderer", routes={}, publisher=publisher, service="renderer"
    )
    for client in (publisher._producer.client, loop._consumer._client):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert (client._sasl_plain_username, client._sasl_plain_password) == ("factura-renderer", "s3cret")
        assert client._ssl_context.verify_mode is ssl.CERT_REQUIRED


def test_every_aiokafka_client_in_the_product_takes_client_kwargs() -> None:
    """One way to connect: each AIOKafka* construction in libs/common spreads ``client_kwargs``
    (consumers ``consumer_kwargs``, which adds their fetch settings to it)."""
    found = 0
    for path in (ROOT / "libs/common/src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in CLIENTS:
                found += 1
                spread = [kw.value for kw in node.keywords if kw.arg is None]
                consumer = isinstance(node.func, ast.Name) and node.func.id == "AIOKafkaConsumer"
                way = "consumer_kwargs(" if consumer else "client_kwargs("
                assert any(ast.unparse(v).startswith(way) for v in spread), f"{path}:{node.lineno}"
                assert not any(kw.arg == "bootstrap_servers" for kw in node.keywords), f"{path}:{node.lineno}"
    assert found >= 4  # producer, consumer loop, admin, DLQ tool
