"""The access table (factura.common.kafka.access) says what each service really reads and writes.

Reads: the topics each bootstrap routes to its consumer, taken from the bootstrap's source
(without connecting anything): the string keys of its ``routes`` dict and ``routes[...] = ``
assignments; the senders' ``Sender.routes``; audit's routes built from ``event_topics()`` and
``dead_letter_topics()``.

Writes: every envelope built through ``make_event``/``child_of`` while the handler unit tests run
(re-run in-process here with a recording hook) names its producer and type; each must be in that
producer's row. This proves the table covers every publish those tests exercise; publishes no unit
test reaches (the renderer's link host, ticket outcomes, delivery outcomes) rest on the table
and, in a cluster, on the ACLs, which refuse any write the table does not grant.
"""

from __future__ import annotations

import ast
import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from factura.common import envelope
from factura.common.delivery.sender import Sender
from factura.common.kafka.access import SERVICES
from factura.common.topics import dead_letter_topics, event_topics

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "ingest": "ingest/src/factura/ingest",
    "renderer": "renderer/src/factura/renderer",
    "scheduler": "scheduler/src/factura/scheduler",
    "email-sender": "email-sender/src/factura/email_sender",
    "sms-sender": "sms-sender/src/factura/sms_sender",
    "audit": "audit/src/factura/audit",
}
#: Unit test modules that drive handlers through their fakes (the slow property tests are left out).
PUBLISHING_TESTS = [
    "test_ingest_handlers.py",
    "test_ingest_cancellations.py",
    "test_scheduler.py",
    "test_tickets.py",
    "test_campaigns.py",
    "test_audit_daily.py",
    "test_provider_answers.py",
    "test_tracking.py",
    "test_render_worker_deaths.py",
    "test_delivery_policy.py",
]


def bootstrap_tree(service: str) -> ast.Module:
    return ast.parse((ROOT / "services" / PACKAGES[service] / "bootstrap.py").read_text())


def routes_expression(tree: ast.Module) -> ast.expr:
    """The value the bootstrap hands ``Wiring(routes=...)``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Wiring":
            for kw in node.keywords:
                if kw.arg == "routes":
                    return kw.value
    raise AssertionError("no Wiring(routes=...) in the bootstrap")


def declared_routes(tree: ast.Module) -> set[str]:
    """String keys of the routes dict (inline or the variable it names) and of ``routes[...] =``."""
    value = routes_expression(tree)
    variable = value.id if isinstance(value, ast.Name) else None
    dicts = [value] if isinstance(value, ast.Dict) else []
    keys: set[str] = set()
    for node in ast.walk(tree):
        if variable and isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(node.value, ast.Dict):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == variable for t in targets):
                dicts.append(node.value)
        if variable and isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Subscript) and getattr(t.value, "id", None) == variable:
                    assert isinstance(t.slice, ast.Constant), "routes[...] key must be a literal"
                    keys.add(str(t.slice.value))
    assert dicts, "routes are not a dict literal"
    for d in dicts:
        for key in d.keys:
            if isinstance(key, ast.Constant):
                keys.add(str(key.value))
            else:
                raise AssertionError(f"non-literal route key in bootstrap: {ast.unparse(key) if key else '**'}")
    return keys


@pytest.mark.parametrize("service", ["ingest", "renderer", "scheduler"])
def test_consumer_routes_are_the_tables_reads(service: str) -> None:
    assert declared_routes(bootstrap_tree(service)) == set(SERVICES[service].reads)


@pytest.mark.parametrize("service", ["email-sender", "sms-sender"])
def test_senders_consume_the_sender_routes(service: str) -> None:
    assert ast.unparse(routes_expression(bootstrap_tree(service))) == "sender.routes"
    sender = Sender.__new__(Sender)  # routes needs no collaborator
    assert set(sender.routes) == set(SERVICES[service].reads)


def test_audit_consumes_every_event_topic_and_every_dlq() -> None:
    source = ast.unparse(bootstrap_tree("audit"))
    assert "for topic in event_topics()" in source and "for topic in dead_letter_topics()" in source
    assert set(SERVICES["audit"].reads) == {t.name for t in (*event_topics(), *dead_letter_topics())}


def test_every_consumer_may_dead_letter_what_it_reads() -> None:
    for access in SERVICES.values():
        for name in access.reads:
            assert name.endswith(".dlq") or f"{name}.dlq" in access.writes()


@pytest.fixture(scope="module")
def published() -> dict[str, set[str]]:
    """(producer → event types) built while the publishing unit tests run, in this process."""
    seen: collections.defaultdict[str, set[str]] = collections.defaultdict(set)
    real = envelope._typed_envelope

    def recording(data: object) -> Callable[..., Any]:
        cls = real(data)

        def build(**fields: Any) -> Any:
            seen[fields["producer"]].add(fields["type"])
            return cls(**fields)

        return build

    patch = pytest.MonkeyPatch()
    patch.setattr(envelope, "_typed_envelope", recording)
    try:
        here = Path(__file__).parent
        code = pytest.main(
            ["-q", "-p", "no:cacheprovider", "-o", "addopts=", *(str(here / t) for t in PUBLISHING_TESTS)]
        )
    finally:
        patch.undo()
    assert code == pytest.ExitCode.OK, "the publishing unit tests failed"
    return dict(seen)


def test_every_event_a_service_builds_is_in_its_row(published: dict[str, set[str]]) -> None:
    for service, types in published.items():
        if service not in SERVICES:  # test fixtures name their own producers ("x", "test")
            continue
        assert types <= set(SERVICES[service].produces), (
            f"{service} publishes {types - set(SERVICES[service].produces)}"
        )


def test_the_recording_reaches_every_service_that_publishes_events(published: dict[str, set[str]]) -> None:
    """Guards the check above against passing vacuously (e.g. the hook no longer seeing envelopes)."""
    assert {"ingest", "renderer", "scheduler", "audit", "sms-sender"} <= set(published)
    assert {"invoice.created", "invoice.rejected", "payment.received", "invoice.cancelled"} <= published["ingest"]
    assert {"invoice.rendered"} <= published["renderer"]
    assert {"reminder.due", "receipt.due", "ticket.due", "payment.unmatched"} <= published["scheduler"]
