"""Fixtures that start the real local servers once per test session.

Each run gets free ports, its own data directory, its own topic prefix and its own MongoDB
database, so concurrent runs on one machine never see each other's messages.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from pydantic import SecretStr

from factura.common.settings import DEVSTACK_ENV, KafkaSettings, MongoSettings, S3Settings
from factura.common.storage import DocumentStore
from factura.devstack.config import FETCH_MAX_WAIT_MS, StackConfig
from factura.devstack.stack import Stack


def pytest_configure(config: pytest.Config) -> None:
    """The tests run on the devstack, so settings built in-process may carry its secrets.

    Unit tests of the refusal itself clear this variable (tests/unit/test_settings_secrets.py).
    """
    os.environ[DEVSTACK_ENV] = "1"


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory, run_id: str) -> Iterator[Stack]:
    """Broker, MongoDB-wire, S3, SMTP and SMS capture servers (no services)."""
    data_dir: Path = tmp_path_factory.mktemp("stack")
    cfg = StackConfig.free_ports(data_dir, topic_prefix=f"t{run_id}.", mongo_database=f"t{run_id}")
    stack = Stack(cfg)
    try:
        stack.start_infra()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def cfg(infra: Stack) -> StackConfig:
    return infra.cfg


@pytest.fixture(scope="session")
def services(infra: Stack) -> Stack:
    """The six services, running as processes against ``infra``."""
    infra.start_services()
    return infra


def kafka_settings(cfg: StackConfig, prefix: str | None = None) -> KafkaSettings:
    """Client settings for the test broker; a fresh ``prefix`` isolates a test's topics and groups."""
    return KafkaSettings(
        bootstrap_servers=cfg.kafka_bootstrap,
        topic_prefix=cfg.topic_prefix if prefix is None else prefix,
        idempotence=False,
        rebalance_timeout_ms=2000,
        # Tansu holds a group join for half the session: 1.5 s here instead of 3 s per join.
        session_timeout_ms=3000,
        heartbeat_interval_ms=600,
        leave_group_on_stop=False,  # as in the devstack: Tansu wedges a group on a LeaveGroup mid-join
        retry_initial_s=0.05,
        retry_max_s=0.2,
        retry_max_attempts=3,
        poll_timeout_ms=200,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )


def mongo_settings(cfg: StackConfig) -> MongoSettings:
    return MongoSettings(url=cfg.mongo_url, database=cfg.mongo_database)


def s3_settings(cfg: StackConfig) -> S3Settings:
    return S3Settings(
        endpoint_url=cfg.s3_url,
        bucket=cfg.s3_bucket,
        access_key_id=cfg.s3_access_key_id,
        secret_access_key=SecretStr(cfg.s3_secret_access_key),
    )


@pytest.fixture(scope="module")
async def store(cfg: StackConfig) -> AsyncIterator[DocumentStore]:
    """The document store on the local S3 server, its bucket created."""
    async with AsyncExitStack() as stack:
        documents = await DocumentStore.connect(s3_settings(cfg), stack)
        await documents.ensure_bucket()
        yield documents
