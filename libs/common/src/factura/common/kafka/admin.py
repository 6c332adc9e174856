"""Create the registry's topics (and DLQs) if missing.

In production topics are declared by the platform (e.g. Strimzi KafkaTopic); the devstack and
the tests call :func:`ensure_topics` so consumers never race auto-creation.
"""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from factura.common.kafka.connection import client_kwargs
from factura.common.settings import KafkaSettings
from factura.common.topics import REGISTRY


async def ensure_topics(settings: KafkaSettings, replication_factor: int = 1) -> list[str]:
    admin = AIOKafkaAdminClient(**client_kwargs(settings), client_id="factura-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, topic.partitions, replication_factor)
            for topic in REGISTRY.values()
            for name in (topic.physical(settings.topic_prefix), topic.dlq(settings.topic_prefix))
            if name not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                await admin.create_topics(wanted)
        return [t.name for t in wanted]
    finally:
        await admin.close()
