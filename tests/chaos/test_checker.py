"""The checker's rules on hand-made evidence: each rule catches what it is for, and a clean run passes."""

from __future__ import annotations

from typing import Any

import phonenumbers

from factura.devstack.samples import TENANTS
from tests.chaos.checker import Evidence, Planned, Report, judge, settled, table
from tests.chaos.driver import _shares, mobile

EMAIL = Planned("harinas-sur", "CH-1", "email", email="a@cliente.test", phone="+34600000001")
BOUNCE = Planned("harinas-sur", "CH-2", "sms", email="b@bounce.test", phone="+34600000002")
UNREACHABLE = Planned("acme-us", "CH-3", "exhausted", phone="+13125550003")
INVALID = Planned("lisboa-tech", "CH-4", "rejected", email="d@cliente.test", phone="+351910000004")
PLAN = [EMAIL, BOUNCE, UNREACHABLE, INVALID]


def rec(invoice: str, type: str, n: int = 1, **extra: Any) -> dict[str, Any]:
    return {"id": f"{invoice}/{type}/{n}", "type": type, "invoice_id": invoice, "purpose": "invoice", **extra}


def clean_records() -> list[dict[str, Any]]:
    steps = [rec(p.invoice_number, t) for p in PLAN[:3] for t in ("invoice.created", "invoice.rendered")]
    return [
        *steps,
        rec("CH-1", "delivery.succeeded", channel="email"),
        rec("CH-2", "delivery.failed", channel="email"),
        rec("CH-2", "delivery.succeeded", channel="sms"),
        rec("CH-3", "delivery.failed", channel="sms"),
        rec("CH-3", "delivery.exhausted", data={"chain": [{"channel": "sms", "reason": "rejected_by_server"}]}),
        rec("CH-4", "invoice.rejected", data={"reasons": [{"field": "currency", "message": "not ISO 4217"}]}),
    ]


def evidence(records: list[dict[str, Any]] | None = None, **changes: Any) -> Evidence:
    records = clean_records() if records is None else records
    timelines: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        timelines.setdefault(r["invoice_id"], []).append(r)
    fields: dict[str, Any] = {
        "records": records,
        "timelines": timelines,
        "mails": {"a@cliente.test": 1},
        "texts": {"+34600000002": 1},
        "stored": frozenset({"CH-1", "CH-2", "CH-3"}),
        "chains": {"harinas-sur": True, "acme-us": True, "lisboa-tech": True},
    }
    return Evidence(**fields | changes)


def test_a_clean_run_passes_with_every_count_in_its_column() -> None:
    report = judge("clean", PLAN, evidence(), 12.0)
    assert report.failures(0) == []
    assert (report.invoices, report.valid, report.by_email, report.by_sms) == (4, 3, 1, 1)
    assert (report.exhausted, report.rejected, report.lost, report.audit_duplicates) == (1, 1, 0, 0)
    assert "clean" in table([report]) and "ok" in table([report])


def test_an_invoice_without_a_terminal_record_is_lost() -> None:
    records = [r for r in clean_records() if r["id"] != "CH-1/delivery.succeeded/1"]
    report = judge("lost", PLAN, evidence(records), 1.0)
    assert report.lost == 1 and any("CH-1: lost" in p for p in report.failures(0))


def test_delivered_in_audit_but_missing_from_the_capture_is_lost() -> None:
    report = judge("x", PLAN, evidence(mails={}, texts={}), 1.0)
    assert report.lost == 2
    assert any("Maildir has nothing" in p for p in report.problems)
    assert any("SMS provider accepted nothing" in p for p in report.problems)


def test_duplicates_are_counted_per_recipient_and_held_to_the_bound() -> None:
    report = judge("dup", PLAN, evidence(mails={"a@cliente.test": 3}, texts={"+34600000002": 2}), 1.0)
    assert (report.duplicate_emails, report.duplicate_sms) == (2, 1)
    assert report.duplicates_per_10k == 15_000
    assert report.failures(1.0)  # 2 deliveries allow no duplicate even at 1 per 10 000
    assert not report.problems


def test_the_bound_allows_duplicates_only_at_its_rate() -> None:
    report = Report("big", by_email=20_000, duplicate_emails=2)
    assert report.allowed_duplicates(1.0) == 2 and report.failures(1.0) == []
    assert report.failures(0.0)
    assert Report("small", by_email=9_999, duplicate_sms=1).failures(1.0)


def test_a_second_terminal_state_and_a_wrong_channel_are_problems() -> None:
    records = [*clean_records(), rec("CH-1", "delivery.exhausted", 2, data={"chain": [{"reason": "x"}]})]
    report = judge("x", PLAN, evidence(records), 1.0)
    assert any("CH-1: 2 terminal states" in p for p in report.problems)
    records = [r for r in clean_records() if r["invoice_id"] != "CH-2" or r["type"] != "delivery.succeeded"]
    records.append(rec("CH-2", "delivery.succeeded", channel="email"))
    report = judge("x", PLAN, evidence(records, mails={"a@cliente.test": 1, "b@bounce.test": 1}), 1.0)
    assert any("CH-2: ended email, expected sms" in p for p in report.problems)


def test_rejections_and_exhaustions_need_reasons() -> None:
    records = [
        {**r, "data": {"reasons": []}} if r["type"] == "invoice.rejected" else r
        for r in clean_records()
        if r["type"] != "delivery.exhausted"
    ]
    records.append(rec("CH-3", "delivery.exhausted", data={"chain": []}))
    report = judge("x", PLAN, evidence(records), 1.0)
    assert any("CH-4: rejected without a reason" in p for p in report.problems)
    assert any("CH-3: exhausted without a reason" in p for p in report.problems)


def test_an_event_stored_twice_is_an_audit_duplicate() -> None:
    same_id = [*clean_records(), rec("CH-1", "invoice.rendered")]
    assert judge("x", PLAN, evidence(same_id), 1.0).audit_duplicates == 1
    other_id = [*clean_records(), rec("CH-1", "delivery.succeeded", 2, channel="email")]
    report = judge("x", PLAN, evidence(other_id), 1.0)
    assert report.audit_duplicates == 1
    assert any("2 delivery.succeeded records under different ids" in p for p in report.problems)


def test_a_missing_document_and_a_broken_chain_fail_the_run() -> None:
    report = judge("x", PLAN, evidence(stored=frozenset({"CH-1"}), chains={"harinas-sur": True}), 1.0)
    assert sum("not in S3" in p for p in report.problems) == 2
    assert not report.chain_ok
    assert {"audit chain of acme-us does not verify", "audit chain of lisboa-tech does not verify"} <= set(
        report.problems
    )


def test_settled_waits_for_the_steps_audit_records_late() -> None:
    records = clean_records()
    only_end = [r for r in records if r["invoice_id"] == "CH-2" and r["type"] == "delivery.succeeded"]
    assert not settled(BOUNCE, only_end)
    assert settled(BOUNCE, [r for r in records if r["invoice_id"] == "CH-2"])
    assert settled(EMAIL, [rec("CH-1", "invoice.rejected")])  # an unexpected rejection ends it too
    reminder = rec("CH-1", "delivery.succeeded", 2, purpose="reminder", channel="email")
    assert not settled(EMAIL, [rec("CH-1", "invoice.created"), rec("CH-1", "invoice.rendered"), reminder])


def test_the_load_mix_holds_at_any_size_and_every_phone_is_valid() -> None:
    for n in (20, 60, 1000):
        mix = _shares(n)
        assert len(mix) == n and {"bounce", "no_email", "invalid", "unreachable", "email"} == set(mix)
    assert _shares(1000).count("bounce") == 100 and _shares(1000).count("invalid") == 20
    for country in {t["country"] for t in TENANTS.values()}:
        for n in range(0, 10**7, 9_973):
            assert phonenumbers.is_valid_number(phonenumbers.parse(mobile(country, n))), (country, n)
