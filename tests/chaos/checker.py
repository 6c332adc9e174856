"""Judge a chaos run from what the outside world saw: pure functions over the evidence.

The driver (:mod:`tests.chaos.driver`) reads the evidence: the audit API (every record of the run's
invoices, their timelines, the chain's verification per tenant), the SMTP capture's Maildir, the
SMS capture's journal and S3. Nothing here does I/O, so every rule is unit-tested on hand-made
evidence (``tests/chaos/test_checker.py``) and a failing run names the invoice and the rule.

The rules (docs/chaos.md):

* every valid invoice ended in exactly one terminal state: delivered by a channel, or exhausted
  with its reasons; every invalid one was rejected with a reason, and nothing was sent for it;
* it ended the way its data says it must (a bounce is answered by SMS; an outage is waited out,
  never turned into a fallback or a rejection);
* zero lost: no valid invoice without a terminal state, none "delivered" without the message in
  the capture, none rendered without its document in S3;
* duplicates are counted per recipient (each invoice has its own address and number);
* every event is stored once in audit: no id twice, and no second record of one step of one
  invoice under another id (a re-sent message would get one);
* every tenant's audit chain verifies.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["email", "sms", "exhausted", "rejected"]
#: Records that end an invoice's own delivery (reminders travel the same topics with another purpose).
TERMINAL = frozenset({"delivery.succeeded", "delivery.exhausted", "invoice.rejected"})
#: Steps an invoice takes at most once: a second record of one under another id is a duplicate event.
ONCE = TERMINAL | {"invoice.created", "invoice.rendered"}


@dataclass(frozen=True)
class Planned:
    """One invoice of the load and how its data says it must end."""

    tenant_id: str
    invoice_number: str
    expected: Outcome
    email: str | None = None
    phone: str | None = None  # E.164, as the SMS provider sees it


@dataclass(frozen=True)
class Evidence:
    """What the checker reads, gathered once the run settled (or its deadline passed)."""

    #: Every audit record of the run's invoices (export rows: id, type, invoice_id, purpose, channel, ...).
    records: Sequence[Mapping[str, Any]]
    #: Each invoice's timeline (full entries with ``data``), by invoice number.
    timelines: Mapping[str, Sequence[Mapping[str, Any]]]
    #: Messages in the Maildir per envelope recipient (lower case), for the run's addresses.
    mails: Mapping[str, int]
    #: Texts the SMS provider accepted per recipient number, for the run's invoices.
    texts: Mapping[str, int]
    #: Invoice numbers whose rendered document is in S3 with the size the event names.
    stored: frozenset[str]
    #: Audit chain verification per tenant (``ok`` of ``GET /v1/verify``).
    chains: Mapping[str, bool]


@dataclass
class Report:
    """One scenario's counts (one table row) and every rule it broke, by invoice."""

    scenario: str
    invoices: int = 0
    valid: int = 0
    by_email: int = 0
    by_sms: int = 0
    exhausted: int = 0
    rejected: int = 0
    lost: int = 0
    duplicate_emails: int = 0
    duplicate_sms: int = 0
    audit_duplicates: int = 0
    chain_ok: bool = True
    seconds: float = 0.0
    #: What the chaos did (e.g. "23 SIGKILLs"), printed under the table.
    chaos: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def deliveries(self) -> int:
        return self.by_email + self.by_sms

    @property
    def duplicates(self) -> int:
        return self.duplicate_emails + self.duplicate_sms

    @property
    def duplicates_per_10k(self) -> float:
        return self.duplicates * 10_000 / max(self.deliveries, 1)

    def allowed_duplicates(self, per_10k: float) -> int:
        """Duplicates the bound allows for this run's deliveries: ``floor(deliveries * per_10k / 10 000)``.

        A rate is only meaningful over enough deliveries: under 10 000 a bound of 1 per 10 000
        allows none, so a small run holds the bound only with zero duplicates (docs/chaos.md)."""
        return int(self.deliveries * per_10k // 10_000)

    def failures(self, max_duplicates_per_10k: float) -> list[str]:
        """Why this run fails its bounds (empty: it passed)."""
        failures = list(self.problems)
        if (allowed := self.allowed_duplicates(max_duplicates_per_10k)) < self.duplicates:
            failures.append(
                f"{self.duplicates} duplicate messages in {self.deliveries} deliveries"
                f" ({self.duplicates_per_10k:.1f} per 10k): at most {allowed} allowed"
            )
        return failures


def _purpose(record: Mapping[str, Any]) -> str:
    """A record's purpose: the export has it as a column, a timeline entry too (older ones in data)."""
    purpose = record.get("purpose")
    if purpose:
        return str(purpose)
    notice = (record.get("data") or {}).get("notice")
    return str(notice.get("purpose", "invoice")) if isinstance(notice, dict) else "invoice"


def is_terminal(record: Mapping[str, Any]) -> bool:
    return record.get("type") in TERMINAL and _purpose(record) == "invoice"


def settled(planned: Planned, records: Iterable[Mapping[str, Any]]) -> bool:
    """Whether audit holds everything the invoice's end needs: its terminal record and the steps
    before it (audit catches up topic by topic after an outage, so the end can come first)."""
    types = Counter(r.get("type") for r in records if _purpose(r) == "invoice")
    if types["invoice.rejected"]:  # expected or not: nothing follows a rejection
        return True
    if not types["delivery.succeeded"] and not types["delivery.exhausted"]:
        return False
    steps = types["invoice.created"] > 0 and types["invoice.rendered"] > 0
    return steps and (planned.expected == "email" or types["delivery.failed"] > 0)


def _outcome(terminal: Mapping[str, Any]) -> str:
    if terminal["type"] == "invoice.rejected":
        return "rejected"
    if terminal["type"] == "delivery.exhausted":
        return "exhausted"
    return str(terminal.get("channel") or (terminal.get("data") or {}).get("channel"))


def _reasons(terminal: Mapping[str, Any]) -> list[str]:
    """The reasons a rejection or an exhaustion names (its timeline entry's data)."""
    data = terminal.get("data") or {}
    if terminal["type"] == "invoice.rejected":
        return [f"{r.get('field')}: {r.get('message')}" for r in data.get("reasons", [])]
    return [f"{a.get('channel')}: {a.get('reason')}" for a in data.get("chain", []) if a.get("reason")]


def audit_duplicates(records: Iterable[Mapping[str, Any]]) -> tuple[int, list[str]]:
    """Records beyond the first per id, plus second records of a once-only step under another id."""
    records = list(records)
    count, problems = 0, []
    for record_id, n in Counter(r["id"] for r in records).items():
        if n > 1:
            count += n - 1
            problems.append(f"audit: record {record_id} stored {n} times")
    steps: dict[tuple[str, str, str], set[str]] = {}
    for r in records:
        if r.get("type") in ONCE and _purpose(r) == "invoice":
            steps.setdefault((str(r.get("invoice_id")), str(r["type"]), str(r.get("channel"))), set()).add(r["id"])
    for (invoice, kind, _), ids in sorted(steps.items()):
        if len(ids) > 1:
            count += len(ids) - 1
            problems.append(f"{invoice}: {len(ids)} {kind} records under different ids")
    return count, problems


def judge(scenario: str, plan: Sequence[Planned], evidence: Evidence, seconds: float) -> Report:
    """Apply every rule to every invoice of the run."""
    report = Report(scenario, invoices=len(plan), seconds=seconds)
    by_invoice: dict[str, list[Mapping[str, Any]]] = {}
    for r in evidence.records:
        by_invoice.setdefault(str(r.get("invoice_id")), []).append(r)
    for p in plan:
        _judge_one(report, p, by_invoice.get(p.invoice_number, []), evidence)
    report.audit_duplicates, problems = audit_duplicates(evidence.records)
    report.problems += problems
    for tenant in sorted({p.tenant_id for p in plan}):
        if not evidence.chains.get(tenant, False):
            report.chain_ok = False
            report.problems.append(f"audit chain of {tenant} does not verify")
    return report


def _judge_one(report: Report, p: Planned, records: list[Mapping[str, Any]], evidence: Evidence) -> None:
    mails = evidence.mails.get(p.email.lower(), 0) if p.email else 0
    texts = evidence.texts.get(p.phone, 0) if p.phone else 0
    report.duplicate_emails += max(mails - 1, 0)
    report.duplicate_sms += max(texts - 1, 0)
    problems = report.problems
    if p.expected != "rejected":
        report.valid += 1
    terminals = [r for r in records if is_terminal(r)]
    if not terminals:
        report.lost += 1
        problems.append(f"{p.invoice_number}: lost (no terminal state; expected {p.expected})")
        return
    if len({r["id"] for r in terminals}) > 1:
        kinds = sorted(_outcome(r) for r in {r["id"]: r for r in terminals}.values())
        problems.append(f"{p.invoice_number}: {len(kinds)} terminal states {kinds}")
    timeline = evidence.timelines.get(p.invoice_number, [])
    terminal = next((e for e in timeline if is_terminal(e) and e.get("id") == terminals[0]["id"]), terminals[0])
    outcome = _outcome(terminal)
    _count(report, outcome)
    if outcome != p.expected:
        problems.append(f"{p.invoice_number}: ended {outcome}, expected {p.expected}")
    if outcome in ("rejected", "exhausted") and not _reasons(terminal):
        problems.append(f"{p.invoice_number}: {outcome} without a reason")
    if outcome == "email" and mails == 0:
        report.lost += 1
        problems.append(f"{p.invoice_number}: audit says emailed, the Maildir has nothing for {p.email}")
    if outcome == "sms" and texts == 0:
        report.lost += 1
        problems.append(f"{p.invoice_number}: audit says texted, the SMS provider accepted nothing for {p.phone}")
    if outcome == "rejected" and mails + texts:
        problems.append(f"{p.invoice_number}: rejected, yet {mails} emails and {texts} texts were sent")
    if outcome in ("email", "sms", "exhausted") and p.invoice_number not in evidence.stored:
        problems.append(f"{p.invoice_number}: its rendered document is not in S3 as the event describes it")


def _count(report: Report, outcome: str) -> None:
    match outcome:
        case "email":
            report.by_email += 1
        case "sms":
            report.by_sms += 1
        case "exhausted":
            report.exhausted += 1
        case "rejected":
            report.rejected += 1


COLUMNS = (
    ("scenario", 22),
    ("invoices", 8),
    ("valid", 6),
    ("email", 6),
    ("sms", 5),
    ("exhaust", 7),
    ("reject", 6),
    ("lost", 5),
    ("dup_mail", 8),
    ("dup_sms", 7),
    ("dup/10k", 7),
    ("audit_dup", 9),
    ("chain", 5),
    ("seconds", 7),
)


def _cells(r: Report) -> list[str]:
    return [
        r.scenario,
        str(r.invoices),
        str(r.valid),
        str(r.by_email),
        str(r.by_sms),
        str(r.exhausted),
        str(r.rejected),
        str(r.lost),
        str(r.duplicate_emails),
        str(r.duplicate_sms),
        f"{r.duplicates_per_10k:.1f}",
        str(r.audit_duplicates),
        "ok" if r.chain_ok else "BROKEN",
        f"{r.seconds:.0f}",
    ]


def _row(cells: list[str]) -> str:
    """Left-aligned scenario name, right-aligned figures."""
    widths = [w for _, w in COLUMNS]
    return " ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def table(reports: Iterable[Report]) -> str:
    """The reports as one fixed-width table (a row per scenario), then what each chaos did and broke."""
    reports = list(reports)
    lines = [_row([name for name, _ in COLUMNS])] + [_row(_cells(r)) for r in reports]
    for r in reports:
        if r.chaos:
            lines.append(f"  {r.scenario}: {r.chaos}")
        lines += [f"  {r.scenario}: {problem}" for problem in r.problems[:20]]
        if len(r.problems) > 20:
            lines.append(f"  {r.scenario}: ... and {len(r.problems) - 20} more problems")
    return "\n".join(lines)
