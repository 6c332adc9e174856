"""Dead letters, for operators: ``python -m factura.common.dlq list|replay``.

``list`` prints every dead-lettered message of one or all DLQ topics with why it got there
(``dlq.reason``, the error's first line, the service, the source offset) and whether it was
already replayed. ``replay`` re-publishes a DLQ topic's messages to their source topic, key and
headers kept (``dlq.*`` replaced by ``dlq.replayed_from``). It is idempotent twice over: the
tool commits its progress in the consumer group ``<prefix>factura-dlq-replay``, so a second run
re-publishes nothing already replayed; and every consumer deduplicates by event id, so even a
crash between publish and commit changes nothing downstream.

Replay after the cause is fixed (a deployed bug fix, a corrected tenant config). A message that
is still wrong goes back to the DLQ with a new ``dlq.source``.

Connection settings come from the environment like a service's: ``FACTURA_KAFKA__BOOTSTRAP_SERVERS``,
``FACTURA_KAFKA__TOPIC_PREFIX``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from pydantic_settings import SettingsConfigDict

from factura.common.kafka.connection import consumer_kwargs
from factura.common.kafka.producer import Headers, Publisher
from factura.common.settings import ServiceSettings
from factura.common.topics import Topic, dead_letter_topics, resolve

REPLAY_GROUP = "factura-dlq-replay"


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FACTURA_", env_nested_delimiter="__", extra="ignore")


@dataclass(frozen=True)
class DeadLetter:
    dlq: Topic
    record: ConsumerRecord[bytes, bytes]
    replayed: bool

    def header(self, name: str) -> str:
        value = dict(self.record.headers).get(name)
        return value.decode(errors="replace") if value is not None else ""

    def line(self) -> str:
        error = self.header("dlq.error").strip().splitlines()
        return (
            f"{self.dlq.name}/{self.record.partition}/{self.record.offset}"
            f"  from={self.header('dlq.source')}  reason={self.header('dlq.reason')}"
            f"  service={self.header('dlq.service')}  tenant={self.header('tenant_id') or '-'}"
            f"  replayed={'yes' if self.replayed else 'no'}  error={(error[-1] if error else '')[:200]}"
        )


class DeadLetterReader:
    """Reads one DLQ topic to its current end, knowing what the replay group already replayed.

    Partitions are assigned by hand (no group join), but the consumer carries the replay group's
    id so it can read and commit that group's offsets.
    """

    def __init__(self, settings: Settings, dlq: Topic) -> None:
        self.dlq = dlq
        self._physical = dlq.physical(settings.kafka.topic_prefix)
        self._consumer = AIOKafkaConsumer(
            **consumer_kwargs(settings.kafka),
            group_id=f"{settings.kafka.topic_prefix}{REPLAY_GROUP}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    async def __aenter__(self) -> DeadLetterReader:
        await self._consumer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._consumer.stop()

    async def letters(self, *, skip_replayed: bool) -> AsyncIterator[DeadLetter]:
        consumer = self._consumer
        await consumer.topics()  # metadata for every topic, so a DLQ nobody wrote to yet is known
        tps = [TopicPartition(self._physical, p) for p in sorted(consumer.partitions_for_topic(self._physical) or ())]
        if not tps:
            return
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        replayed = {tp: (await consumer.committed(tp)) or 0 for tp in tps}
        for tp in tps:
            if skip_replayed and replayed[tp]:
                consumer.seek(tp, replayed[tp])
            else:
                await consumer.seek_to_beginning(tp)
        remaining = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield DeadLetter(self.dlq, record, record.offset < replayed[tp])
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)

    async def mark_replayed(self, record: ConsumerRecord[bytes, bytes]) -> None:
        await self._consumer.commit({TopicPartition(record.topic, record.partition): record.offset + 1})


def _selected(name: str | None) -> list[Topic]:
    if name is None:
        return dead_letter_topics()
    topic = resolve(name if name.endswith(".dlq") else f"{name}.dlq")
    return [topic]


async def list_dead_letters(settings: Settings, topic: str | None) -> int:
    count = 0
    for dlq in _selected(topic):
        async with DeadLetterReader(settings, dlq) as reader:
            async for letter in reader.letters(skip_replayed=False):
                print(letter.line())
                count += 1
    print(f"{count} dead-lettered message(s)", file=sys.stderr)
    return count


async def replay(settings: Settings, topic: str | None, *, dry_run: bool = False) -> int:
    """Re-publish what was not replayed yet; returns how many."""
    publisher = Publisher(settings.kafka, client_id="factura-dlq")
    await publisher.start()
    count = 0
    try:
        for dlq in _selected(topic):
            source = resolve(dlq.dead_letters_of or "").physical(settings.kafka.topic_prefix)
            async with DeadLetterReader(settings, dlq) as reader:
                async for letter in reader.letters(skip_replayed=True):
                    print(("would replay " if dry_run else "replaying ") + letter.line())
                    if dry_run:
                        continue
                    record = letter.record
                    headers: Headers = [(k, v) for k, v in record.headers if not k.startswith("dlq.")]
                    origin = f"{record.topic}/{record.partition}/{record.offset}"
                    headers.append(("dlq.replayed_from", origin.encode()))
                    await publisher.send(source, record.value or b"", key=record.key, headers=headers)
                    await reader.mark_replayed(record)
                    count += 1
    finally:
        await publisher.stop()
    print(f"{count} message(s) replayed", file=sys.stderr)
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m factura.common.dlq", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("list", "print dead-lettered messages"), ("replay", "re-publish them to their source topic")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--topic", help="logical source or DLQ topic, e.g. invoice.rendered (default: all)")
        if name == "replay":
            command.add_argument("--dry-run", action="store_true", help="print what would be replayed")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "list":
        asyncio.run(list_dead_letters(settings, args.topic))
    else:
        asyncio.run(replay(settings, args.topic, dry_run=args.dry_run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
