"""``make demo``: the whole flow on the local stack, judged and summarised.

Starts the stack (stopping any previous one and clearing its data), publishes the sample
invoices and payment as an ERP would, waits until the audit trail shows every outcome, prints
one row per invoice and where to look, and leaves the stack running for exploration
(``make down`` stops it), with Prometheus scraping it when the Debian package is installed.
Exits 0 only if every expected outcome happened.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path

from factura.devstack import prometheus
from factura.devstack.config import StackConfig
from factura.devstack.flow import Observation, publish, wait_for_outcomes
from factura.devstack.samples import Sample, demo_samples
from factura.devstack.stack import Stack


def table(samples: list[Sample], seen: dict[str, Observation]) -> str:
    rows = [("tenant", "invoice", "country", "expected", "got", "ok", "detail")]
    for s in samples:
        o = seen.get(s.invoice_number)
        got: str = (o.outcome or "—") if o else "—"
        if o and o.reminder:
            got += "+reminder"
        expected = s.expected + ("+reminder" if s.expect_reminder else "")
        ok = "yes" if o and o.matches(s) else "NO"
        country = str(s.payload.get("customer", {}).get("country", ""))
        detail = (o.detail if o else "nothing recorded") + (f"  [{s.note}]" if s.note else "")
        rows.append((s.tenant_id, s.invoice_number, country, expected, got, ok, detail[:110]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1] for r in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def start_prometheus(cfg: StackConfig) -> str:
    """Prometheus scraping the stack, when installed: the demo works without it, and says so."""
    if not prometheus.available():
        return "not installed (Debian package prometheus; scripts/system-deps.sh installs it)"
    try:
        return prometheus.start(cfg) + "  (dashboards as PNGs: make dashboards)"
    except RuntimeError as e:
        return f"did not start: {str(e).splitlines()[0]}"


def main() -> int:
    cfg = StackConfig(data_dir=Path(".data"))
    started = time.monotonic()
    Stack(cfg).stop()  # a previous `make up`/demo, if any
    for stale in (cfg.mongo_dir, cfg.maildir, cfg.sms_dir):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    stack = Stack(cfg)
    print("starting the local stack (broker, MongoDB-wire, S3, SMTP and SMS capture, six services)…", flush=True)
    try:
        stack.start_infra()
        stack.start_services()
    except Exception:
        stack.stop()
        raise
    prometheus_url = start_prometheus(cfg)
    print(f"stack up in {time.monotonic() - started:.1f}s; publishing sample ERP traffic…", flush=True)
    samples = demo_samples()
    asyncio.run(publish(cfg, samples))
    seen = asyncio.run(wait_for_outcomes(cfg, samples))
    elapsed = time.monotonic() - started

    print()
    print(table(samples, seen))
    example = next(s for s in samples if s.expected == "sms")
    print(
        f"\nwhere to look:\n"
        f"  emails (Maildir):   {cfg.maildir}/new\n"
        f"  SMS captured:       {cfg.sms_url}/_capture/messages\n"
        f"  compliance page:    {cfg.service_url('audit')}/ui/  (sign in with the key in {cfg.audit_api_key_file})\n"
        f'  audit timeline:     curl -H "Authorization: Bearer $(cat {cfg.audit_api_key_file})" \\\n'
        f"                      '{cfg.service_url('audit')}/v1/invoices/{example.invoice_number}"
        f"/timeline?tenant_id={example.tenant_id}'\n"
        f"  verify the chain:   {cfg.service_url('audit')}/v1/verify?tenant_id={example.tenant_id}  (same key)\n"
        f"  metrics:            {cfg.service_url('email-sender')}/metrics\n"
        f"  Prometheus:         {prometheus_url}\n"
        f"  logs:               {cfg.logs_dir}/  (make logs)\n"
        f"  the stack keeps running: `make down` stops it\n"
    )
    got = [seen.get(s.invoice_number) for s in samples]
    unexpected = sum(1 for s, o in zip(samples, got, strict=True) if not (o and o.matches(s)))
    count = {k: sum(1 for o in got if o and o.outcome == k) for k in ("email", "sms", "rejected")}
    print(
        f"RESULT invoices={len(samples)} delivered_email={count['email']} delivered_sms={count['sms']} "
        f"rejected={count['rejected']} unexpected={unexpected} seconds={elapsed:.1f}"
    )
    return 0 if unexpected == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
