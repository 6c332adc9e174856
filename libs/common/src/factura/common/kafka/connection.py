"""The one way to connect to Kafka: bootstrap servers and security for every aiokafka client.

Producers, consumers, the admin client and the DLQ tool all take their connection arguments
from :func:`client_kwargs` (consumers from :func:`consumer_kwargs`, which adds the fetch
settings), so turning on TLS and SASL (Strimzi's SCRAM-SHA-512 listener) is a settings change
that reaches every client at once.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from factura.common.settings import KafkaSettings


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    """A verifying TLS context for SSL and SASL_SSL: the configured CA bundle, else the system's."""
    if not settings.security_protocol.endswith("SSL"):
        return None
    context: ssl.SSLContext = create_ssl_context(cafile=settings.ssl_ca_file)
    return context


def client_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments every ``AIOKafkaProducer``/``AIOKafkaConsumer``/``AIOKafkaAdminClient`` gets."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if settings.security_protocol.startswith("SASL_"):
        assert settings.sasl_password is not None  # the settings validator requires it with SASL
        kwargs |= {
            "sasl_mechanism": settings.sasl_mechanism,
            "sasl_plain_username": settings.sasl_username,
            "sasl_plain_password": settings.sasl_password.get_secret_value(),
        }
    return kwargs


def consumer_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """:func:`client_kwargs` plus what only consumers take (how long a fetch may wait)."""
    return client_kwargs(settings) | {"fetch_max_wait_ms": settings.fetch_max_wait_ms}
