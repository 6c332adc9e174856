"""Senders under SIGKILL: how many invoices are lost and how many messages go out twice.

Run with ``python -m benchmarks.bench_sigkill`` (``make bench-sigkill``). On the full local stack
(six services as processes), in one run:

* an ERP publishes ``INVOICES`` invoices (default 300) at ~5 per second, 90% with a working email
  address and 10% with a bouncing one and a phone number (the SMS fallback path);
* meanwhile a killer SIGKILLs the email or the SMS sender at random every 0.5-3 s, ``KILLS`` times
  (default 20), starting each again at once, like an orchestrator would;
* then it waits until every invoice settled in the audit trail, and counts the mails in the SMTP
  capture Maildir and the texts in the SMS capture server per recipient.

``lost`` counts invoices with no delivery outcome; ``duplicate_emails`` / ``duplicate_sms`` count
messages beyond the first per recipient (every invoice has its own address and number). The last
line is ``RESULT invoices=... kills=... lost=... duplicate_emails=... duplicate_sms=... duplicates_per_10k=...``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx

from factura.devstack.config import StackConfig
from factura.devstack.flow import publish, wait_for_outcomes
from factura.devstack.samples import Sample, invoice_payload
from factura.devstack.smtp_capture import read_messages
from factura.devstack.stack import Stack

INVOICES = int(os.environ.get("BENCH_INVOICES", "300"))
KILLS = int(os.environ.get("BENCH_KILLS", "20"))
SENDERS = ("email-sender", "sms-sender")


def batch(run: str) -> list[Sample]:
    today = datetime.now(UTC).date()
    samples = []
    for i in range(INVOICES):
        bounce = i % 10 == 9
        email = f"k{i}.{run}@{'bounce.test' if bounce else 'cliente.test'}"
        phone = f"+34 6{i % 100:02d} {run[:3].translate(str.maketrans('abcdef', '123456'))} {i:03d}"
        payload = invoice_payload("harinas-sur", i, today, email=email, phone=phone)
        payload["invoice_number"] = f"K-{run}-{i:04d}"
        samples.append(Sample("harinas-sur", payload["invoice_number"], payload, "sms" if bounce else "email"))
    return samples


async def killer(stack: Stack, done: asyncio.Event) -> int:
    kills = 0
    rng = random.Random(7)
    while kills < KILLS:
        await asyncio.sleep(rng.uniform(0.5, 3.0))
        name = rng.choice(SENDERS)
        await asyncio.to_thread(stack.stop_service, name, signal.SIGKILL)
        kills += 1
        await asyncio.to_thread(stack.start_service, name)
    done.set()
    return kills


async def erp(cfg: StackConfig, samples: list[Sample]) -> None:
    for i in range(0, len(samples), 5):
        await publish(cfg, samples[i : i + 5])
        await asyncio.sleep(1.0)


async def main() -> None:
    run = uuid.uuid4().hex[:6]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = StackConfig.free_ports(Path(tmp), topic_prefix=f"kill{run}.", mongo_database=f"kill{run}")
        stack = Stack(cfg)
        try:
            stack.start_infra()
            stack.start_services()
            samples = batch(run)
            started = time.monotonic()
            killed = asyncio.Event()
            kills, _ = await asyncio.gather(killer(stack, killed), erp(cfg, samples))
            seen = await wait_for_outcomes(cfg, samples, timeout_s=600)
            elapsed = time.monotonic() - started
            lost = [s.invoice_number for s in samples if seen[s.invoice_number].outcome is None]
            wrong = [s.invoice_number for s in samples if seen[s.invoice_number].outcome not in (None, s.expected)]
            mails = Counter(str(m["To"]) for m in read_messages(cfg.maildir))
            async with httpx.AsyncClient() as client:
                texts = Counter(m["to"] for m in (await client.get(f"{cfg.sms_url}/_capture/messages")).json())
            dup_mail = sum(n - 1 for n in mails.values() if n > 1)
            dup_sms = sum(n - 1 for n in texts.values() if n > 1)
            sent = sum(mails.values()) + sum(texts.values())
            print(f"{len(samples)} invoices, {kills} SIGKILLs of the senders, settled in {elapsed:.0f} s")
            print(f"emails sent {sum(mails.values())}, texts sent {sum(texts.values())}")
            print(f"lost {len(lost)} {lost[:5]}; unexpected outcome {len(wrong)} {wrong[:5]}")
            print(f"duplicate emails {dup_mail}, duplicate texts {dup_sms}")
            print(
                f"RESULT invoices={len(samples)} kills={kills} lost={len(lost)} duplicate_emails={dup_mail}"
                f" duplicate_sms={dup_sms} duplicates_per_10k={(dup_mail + dup_sms) * 10_000 / max(sent, 1):.1f}"
            )
        finally:
            stack.stop()


if __name__ == "__main__":
    asyncio.run(main())
