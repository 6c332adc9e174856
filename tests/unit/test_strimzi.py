"""The Strimzi manifests: generated from the registry, valid against the CRD schemas, least privilege."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from factura.common.kafka import strimzi
from factura.common.kafka.access import SERVICES, writers_of
from factura.common.kafka.strimzi import LAG_READER
from factura.common.topics import REGISTRY, event_topics

ROOT = Path(__file__).resolve().parents[2]
KAFKA_DIR = ROOT / strimzi.OUT
SCHEMAS = ROOT / "deploy/k8s/schemas/kafka.strimzi.io"
Doc = dict[str, Any]


def checked_in() -> list[Doc]:
    return [
        d
        for name in ("kafka.yaml", "topics.yaml", "users.yaml")
        for d in yaml.safe_load_all((KAFKA_DIR / name).read_text())
    ]


def test_checked_in_files_are_the_generators_output() -> None:
    for name, text in strimzi.render().items():
        assert (KAFKA_DIR / name).read_text() == text, f"{name} is stale: run python -m factura.common.kafka.strimzi"


@pytest.mark.parametrize("doc", checked_in(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_document_matches_its_crd_schema(doc: Doc) -> None:
    schema = json.loads((SCHEMAS / f"{doc['kind'].lower()}_v1beta2.json").read_text())
    jsonschema.validate(doc, schema)


def test_the_schemas_refuse_what_strimzi_refuses() -> None:
    """The checked-in schemas can fail: a typo or a wrong enum does not pass."""
    kafka, *_ = strimzi.cluster()
    kafka["spec"]["kafka"]["listeners"][0]["authentication"]["type"] = "scram-sha-999"
    user = strimzi.users()[0]
    user["spec"]["authorization"]["acls"][0]["operations"] = ["Wrte"]
    topic = strimzi.topics()[0]
    topic["spec"]["partitons"] = 3
    for doc in (kafka, user, topic):
        schema = json.loads((SCHEMAS / f"{doc['kind'].lower()}_v1beta2.json").read_text())
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc, schema)


def test_the_cluster_takes_only_authenticated_tls_and_keeps_two_copies_of_every_write() -> None:
    kafka = next(d for d in checked_in() if d["kind"] == "Kafka")["spec"]["kafka"]
    assert [(lst["port"], lst["tls"], lst["authentication"]["type"]) for lst in kafka["listeners"]] == [
        (9093, True, "scram-sha-512")
    ]
    assert kafka["authorization"]["type"] == "simple"
    assert kafka["config"]["default.replication.factor"] == 3
    assert kafka["config"]["min.insync.replicas"] == 2
    assert kafka["config"]["auto.create.topics.enable"] is False
    pools = [d for d in checked_in() if d["kind"] == "KafkaNodePool"]
    assert {p["spec"]["roles"][0]: p["spec"]["replicas"] for p in pools} == {"controller": 3, "broker": 3}


def test_one_topic_resource_per_topic_and_dlq() -> None:
    topics = {d["spec"]["topicName"]: d["spec"] for d in checked_in() if d["kind"] == "KafkaTopic"}
    assert set(topics) == {n for t in REGISTRY.values() for n in (t.name, t.dlq())}
    for name, spec in topics.items():
        assert spec["replicas"] == 3 and spec["config"]["min.insync.replicas"] == 2
        dlq = name.endswith(".dlq")
        assert spec["config"]["retention.ms"] == (30 if dlq else 7) * 24 * 3600 * 1000
        assert spec["partitions"] == (3 if dlq or name in COLD else 12)
    assert topics["invoice.created"]["partitions"] == 12


#: Topics with a message per exception rather than per invoice.
COLD = {
    "erp.cancellations",
    "invoice.cancelled",
    "payment.unmatched",
    "delivery.exhausted",
    "report.due",
    "ticket.due",
    "ticket.opened",
    "ticket.failed",
}


def grants(doc: Doc, operation: str, kind: str = "topic") -> set[str]:
    return {
        acl["resource"]["name"]
        for acl in doc["spec"]["authorization"]["acls"]
        if acl["resource"]["type"] == kind and operation in acl["operations"]
    }


def users() -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in checked_in() if d["kind"] == "KafkaUser"}


def test_each_principal_gets_exactly_the_access_table() -> None:
    by_name = users()
    assert set(by_name) == {a.principal for a in SERVICES.values()} | {LAG_READER}
    for access in SERVICES.values():
        doc = by_name[access.principal]
        assert doc["spec"]["authentication"]["type"] == "scram-sha-512"
        assert grants(doc, "Write") == set(access.writes())
        assert grants(doc, "Read") == set(access.reads)
        assert grants(doc, "Read", "group") == {access.group}
        allowed = {"Read", "Write", "Describe"}
        assert all(set(acl["operations"]) <= allowed for acl in doc["spec"]["authorization"]["acls"])
        assert all(acl["resource"]["patternType"] == "literal" for acl in doc["spec"]["authorization"]["acls"])
        assert {acl["resource"]["type"] for acl in doc["spec"]["authorization"]["acls"]} == {"topic", "group"}


def test_the_lag_reader_can_describe_but_never_read_or_write() -> None:
    keda = users()[LAG_READER]
    acls = keda["spec"]["authorization"]["acls"]
    assert all(acl["operations"] == ["Describe"] for acl in acls)
    consumed = {name for a in SERVICES.values() for name in a.reads}
    assert grants(keda, "Describe") == consumed
    assert grants(keda, "Describe", "group") == {a.group for a in SERVICES.values()}


def writers(topic: str) -> set[str]:
    return {name for name, doc in users().items() if topic in grants(doc, "Write")}


def test_only_the_renderer_can_hand_the_senders_a_document() -> None:
    assert writers("invoice.rendered") == {"factura-renderer"}
    assert writers("invoice.created") == {"factura-ingest"}


def test_every_event_topic_is_written_only_by_its_producers() -> None:
    for topic in event_topics():
        expected = {f"factura-{s}" for s in writers_of(topic.name)}
        assert writers(topic.name) == expected
        assert len(expected) <= 2, f"{topic.name} has many writers: {expected}"  # senders share outcomes


def test_audit_reads_every_event_and_writes_only_its_reports_and_dead_letters() -> None:
    audit = users()["factura-audit"]
    assert {t.name for t in event_topics()} <= grants(audit, "Read")
    assert grants(audit, "Write") == {"report.due"} | {t.dlq() for t in event_topics()}
