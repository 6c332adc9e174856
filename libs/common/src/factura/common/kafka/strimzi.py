"""Strimzi resources generated from the topic registry and the access table.

``python -m factura.common.kafka.strimzi [--out deploy/k8s/base/kafka]`` writes ``kafka.yaml`` (the
cluster and its KRaft node pools), ``topics.yaml`` (one ``KafkaTopic`` per topic and per DLQ),
``users.yaml`` (one ``KafkaUser`` per service, ACLs from :mod:`factura.common.kafka.access`) and
``kustomization.yaml``. A unit test compares the checked-in files with this output, so the
registry, the access table and the manifests cannot drift apart.

Sizing (see ``docs/operations.md``, "Scale"):

* **Partitions.** From the topic registry (:mod:`factura.common.topics`): a consumer group runs
  at most one busy pod per partition, and partitions can be added later only by re-hashing keys
  (one invoice's events would then briefly run out of order), so they are sized up front.
* **Durability.** 3 replicas and ``min.insync.replicas`` 2 with the producers' ``acks=all``: a write
  is acknowledged on two brokers, and one broker may be down (or rolling) without refusing writes.
* **Retention.** Events and inbound ERP topics keep 7 days: consumers run seconds behind, and a
  week covers an outage over a long weekend plus the time to find a bug, deploy the fix and rewind
  a consumer group (handlers are idempotent, so reprocessing is safe). Kafka is not the archive:
  audit keeps every event in MongoDB. DLQs keep 30 days: a dead letter waits for a person (a fix,
  a corrected tenant config) and then ``python -m factura.common.dlq replay``; a month covers a
  release cycle and holidays.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from factura.common.kafka.access import SERVICES, ServiceAccess
from factura.common.topics import (
    COLD_PARTITIONS,
    REGISTRY,
    Topic,
)

API_VERSION = "kafka.strimzi.io/v1beta2"
CLUSTER = "factura"
#: The internal TLS listener; clients use ``<cluster>-kafka-bootstrap:9093`` and trust the cluster CA
#: (Secret ``<cluster>-cluster-ca-cert``, key ``ca.crt``).
TLS_PORT = 9093
KAFKA_VERSION = "4.1.1"  # must be one the installed Strimzi operator supports
METADATA_VERSION = "4.1-IV1"
REPLICAS = 3
MIN_INSYNC_REPLICAS = 2
DAY_MS = 24 * 3600 * 1000
RETENTION_MS = 7 * DAY_MS
DLQ_RETENTION_MS = 30 * DAY_MS
OUT = Path("deploy/k8s/base/kafka")
Doc = dict[str, Any]


def _labels() -> dict[str, str]:
    return {"strimzi.io/cluster": CLUSTER, "app.kubernetes.io/part-of": "factura"}


def dns_name(name: str) -> str:
    """A Kubernetes object name for a topic name (dots and underscores are not portable there)."""
    return re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")


def retention_ms(topic: Topic) -> int:
    return DLQ_RETENTION_MS if topic.dead_letters_of is not None else RETENTION_MS


def _node_pool(role: str, *, replicas: int, size: str, memory: str, cpu: str) -> Doc:
    return {
        "apiVersion": API_VERSION,
        "kind": "KafkaNodePool",
        "metadata": {"name": role, "labels": _labels()},
        "spec": {
            "replicas": replicas,
            "roles": [role],
            "storage": {
                "type": "jbod",
                "volumes": [
                    {"id": 0, "type": "persistent-claim", "size": size, "kraftMetadata": "shared", "deleteClaim": False}
                ],
            },
            "resources": {"requests": {"memory": memory, "cpu": cpu}, "limits": {"memory": memory}},
        },
    }


def cluster() -> list[Doc]:
    """The Kafka cluster (KRaft: 3 controllers, 3 brokers) with a TLS + SCRAM listener only."""
    kafka: Doc = {
        "apiVersion": API_VERSION,
        "kind": "Kafka",
        "metadata": {
            "name": CLUSTER,
            "labels": {"app.kubernetes.io/part-of": "factura"},
            "annotations": {"strimzi.io/node-pools": "enabled", "strimzi.io/kraft": "enabled"},
        },
        "spec": {
            "kafka": {
                "version": KAFKA_VERSION,
                "metadataVersion": METADATA_VERSION,
                # No plaintext listener: every client authenticates (SCRAM-SHA-512) over TLS.
                "listeners": [
                    {
                        "name": "tls",
                        "port": TLS_PORT,
                        "type": "internal",
                        "tls": True,
                        "authentication": {"type": "scram-sha-512"},
                    }
                ],
                "authorization": {"type": "simple"},
                "config": {
                    "auto.create.topics.enable": False,
                    "default.replication.factor": REPLICAS,
                    "min.insync.replicas": MIN_INSYNC_REPLICAS,
                    "num.partitions": COLD_PARTITIONS,
                    "offsets.topic.replication.factor": REPLICAS,
                    "transaction.state.log.replication.factor": REPLICAS,
                    "transaction.state.log.min.isr": MIN_INSYNC_REPLICAS,
                },
            },
            "entityOperator": {"topicOperator": {}, "userOperator": {}},
        },
    }
    return [
        kafka,
        _node_pool("controller", replicas=3, size="20Gi", memory="2Gi", cpu="500m"),
        _node_pool("broker", replicas=REPLICAS, size="100Gi", memory="6Gi", cpu="1"),
    ]


def all_topics() -> list[Topic]:
    return [t for topic in REGISTRY.values() for t in (topic, topic.dead_letter_topic())]


def topics(prefix: str = "") -> list[Doc]:
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "KafkaTopic",
            "metadata": {"name": dns_name(t.physical(prefix)), "labels": _labels()},
            "spec": {
                "topicName": t.physical(prefix),
                "partitions": t.partitions,
                "replicas": REPLICAS,
                "config": {
                    "min.insync.replicas": MIN_INSYNC_REPLICAS,
                    "retention.ms": retention_ms(t),
                    "cleanup.policy": "delete",
                },
            },
        }
        for t in all_topics()
    ]


def _acl(kind: str, name: str, operations: Iterable[str]) -> Doc:
    return {
        "resource": {"type": kind, "name": name, "patternType": "literal"},
        "operations": sorted(operations),
        "host": "*",
    }


def acls(access: ServiceAccess, prefix: str = "") -> list[Doc]:
    """Read/Describe on what it consumes and on its group, Write/Describe on what it writes.

    No cluster ACL: since Kafka 2.8 an idempotent producer needs only Write on its topics.
    """
    reads, writes = set(access.reads), access.writes()
    rules = []
    for name in sorted(reads | writes):
        operations = {"Describe"} | ({"Read"} if name in reads else set()) | ({"Write"} if name in writes else set())
        rules.append(_acl("topic", f"{prefix}{name}", operations))
    return [*rules, _acl("group", f"{prefix}{access.group}", {"Read", "Describe"})]


#: KEDA's principal: it reads consumer-group lag to scale the consumers, and may do nothing else.
LAG_READER = "factura-keda"


def lag_reader_acls(prefix: str = "") -> list[Doc]:
    """Describe on every consumed topic and every service's group: enough for OffsetFetch and
    ListOffsets (what KEDA's Kafka scaler calls), not enough to read a record or commit."""
    topics = sorted({name for access in SERVICES.values() for name in access.reads})
    groups = sorted({access.group for access in SERVICES.values()})
    return [_acl("topic", f"{prefix}{t}", {"Describe"}) for t in topics] + [
        _acl("group", f"{prefix}{g}", {"Describe"}) for g in groups
    ]


def _user(name: str, acl_list: list[Doc]) -> Doc:
    return {
        "apiVersion": API_VERSION,
        "kind": "KafkaUser",
        "metadata": {"name": name, "labels": _labels()},
        "spec": {
            "authentication": {"type": "scram-sha-512"},
            "authorization": {"type": "simple", "acls": acl_list},
        },
    }


def users(prefix: str = "") -> list[Doc]:
    """One user per service, then KEDA's lag reader."""
    return [_user(access.principal, acls(access, prefix)) for access in SERVICES.values()] + [
        _user(LAG_READER, lag_reader_acls(prefix))
    ]


HEADER = """\
# Generated by `python -m factura.common.kafka.strimzi` from factura.common.topics and
# factura.common.kafka.access: edit those, then regenerate (a unit test compares).
"""

USERS_NOTE = """\
# One principal per service (SCRAM-SHA-512; the User Operator puts the password in the Secret of
# the same name, key `password`). Each may read only what it consumes (and commit in its own group)
# and write only what it publishes plus the DLQs of what it reads. What that blocks:
# * only ingest writes invoice.created, and only the renderer writes invoice.rendered: nobody else
#   can hand the email sender a document key and an address and have it mail a PDF anywhere;
# * delivery outcomes come only from the senders, reminders and receipts only from the scheduler;
# * audit reads every event topic and DLQ but writes only report.due and its DLQs, and no service
#   writes a topic it does not own, so nobody can plant a forged event in the audit trail.
# Replaying DLQs (python -m factura.common.dlq replay) needs Write on source topics: run it with a
# short-lived break-glass KafkaUser, not with a service's principal.
"""


def _dump(docs: list[Doc], note: str = "") -> str:
    body = "---\n".join(yaml.safe_dump(d, sort_keys=False, width=120) for d in docs)
    return HEADER + note + "---\n" + body


def _comment(access: ServiceAccess) -> str:
    produces = ", ".join(access.produces) or "nothing"
    return f"# {access.principal}: reads {len(access.reads)} topics in group {access.group}; produces {produces}\n"


def render(prefix: str = "") -> dict[str, str]:
    """File name → content of every generated file."""
    user_docs = users(prefix)
    user_text = (
        HEADER
        + USERS_NOTE
        + "".join(
            "---\n" + _comment(access) + yaml.safe_dump(doc, sort_keys=False, width=120)
            for access, doc in zip(SERVICES.values(), user_docs, strict=False)
        )
        + "---\n# factura-keda: KEDA's Kafka scaler reads consumer-group lag (Describe only)\n"
        + yaml.safe_dump(user_docs[-1], sort_keys=False, width=120)
    )
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["kafka.yaml", "topics.yaml", "users.yaml"],
    }
    return {
        "kafka.yaml": _dump(cluster()),
        "topics.yaml": _dump(topics(prefix)),
        "users.yaml": user_text,
        "kustomization.yaml": HEADER + yaml.safe_dump(kustomization, sort_keys=False),
    }


def write(out: Path, prefix: str = "") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render(prefix).items():
        (out / name).write_text(text)
        written.append(out / name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"directory to write (default {OUT})")
    parser.add_argument("--prefix", default="", help="topic prefix (production: none)")
    args = parser.parse_args()
    for path in write(args.out, args.prefix):
        print(path)


if __name__ == "__main__":
    main()
