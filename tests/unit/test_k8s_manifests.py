"""The Kubernetes manifests render and are valid, offline.

Each of base, overlays/dev and overlays/prod is rendered with ``kubectl kustomize`` (Debian's
kubectl) and every document is validated: built-in kinds with ``kubernetes-validate`` (strict, at
a fixed Kubernetes version), custom resources (KEDA, Strimzi) against the CRD schemas checked in
under ``deploy/k8s/schemas/<group>/<kind>_<version>.json``. Then the rules an SRE relies on: probes,
resources, non-root read-only pods, no secret values, a ScaledObject and a PDB per consumer,
NetworkPolicies that select real pods, settings names the services actually read.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from factura.audit.settings import Settings as AuditSettings
from factura.email_sender.settings import Settings as EmailSenderSettings
from factura.ingest.settings import Settings as IngestSettings
from factura.renderer.settings import Settings as RendererSettings
from factura.scheduler.settings import Settings as SchedulerSettings
from factura.sms_sender.settings import Settings as SmsSenderSettings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
SCHEMAS = K8S / "schemas"
#: The Kubernetes version the manifests are validated against (Debian's kubectl is 1.32).
KUBERNETES_VERSION = "1.32.0"
TREES = ["base", "overlays/dev", "overlays/prod"]
SETTINGS: dict[str, type[BaseSettings]] = {
    "ingest": IngestSettings,
    "renderer": RendererSettings,
    "email-sender": EmailSenderSettings,
    "sms-sender": SmsSenderSettings,
    "scheduler": SchedulerSettings,
    "audit": AuditSettings,
}
Doc = dict[str, Any]


@functools.cache
def render(tree: str) -> tuple[Doc, ...]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / tree)], capture_output=True, text=True, check=False, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def of_kind(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def name(doc: Doc) -> str:
    return str(doc["metadata"]["name"])


def pod_templates(docs: tuple[Doc, ...]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, pod template) for every Deployment, StatefulSet and Job."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield doc, doc["spec"]["template"]


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels, matchExpressions with In/NotIn/Exists/DoesNotExist) against labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def crd_schema(doc: Doc) -> Path:
    group, _, version = str(doc["apiVersion"]).rpartition("/")
    return SCHEMAS / group / f"{str(doc['kind']).lower()}_{version}.json"


@pytest.mark.parametrize("tree", TREES)
def test_every_document_validates_offline(tree: str) -> None:
    errors = []
    for doc in render(tree):
        where = f"{tree}: {doc['kind']}/{name(doc)}"
        group = doc["apiVersion"].rpartition("/")[0]
        try:
            if "." in group and not group.endswith(".k8s.io"):
                path = crd_schema(doc)
                assert path.is_file(), f"no CRD schema checked in at {path.relative_to(K8S)}"
                jsonschema.validate(doc, json.loads(path.read_text()))
            else:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except (AssertionError, jsonschema.ValidationError, kubernetes_validate.ValidationError) as e:
            errors.append(f"{where}: {getattr(e, 'message', e)}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("tree", TREES)
def test_deployments_probe_limit_and_lock_down(tree: str) -> None:
    for dep in of_kind(render(tree), "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name(dep)
        assert pod["terminationGracePeriodSeconds"] >= 30, name(dep)
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for c in pod["containers"]:
            where = f"{tree}: {name(dep)}/{c['name']}"
            assert c["livenessProbe"]["httpGet"]["path"] == "/livez", where
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", where
            assert c["livenessProbe"]["httpGet"]["port"] == "http", where
            assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in c["ports"], where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= c["resources"][bound].keys(), f"{where}: {bound}"
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert any(m["mountPath"] == "/tmp" and m["name"] in tmp_volumes for m in c["volumeMounts"]), where
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name(dep)
        assert annotations["prometheus.io/port"] == "8000", name(dep)


@pytest.mark.parametrize("tree", TREES)
def test_every_pod_runs_as_non_root(tree: str) -> None:
    for workload, template in pod_templates(render(tree)):
        spec = template["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            run_as_non_root = c.get("securityContext", {}).get("runAsNonRoot", spec["securityContext"]["runAsNonRoot"])
            assert run_as_non_root is True, f"{name(workload)}/{c['name']}"
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, f"{name(workload)}/{c['name']}"
            assert {"requests", "limits"} <= c["resources"].keys(), f"{name(workload)}/{c['name']}"


@pytest.mark.parametrize("tree", TREES)
def test_no_secret_values(tree: str) -> None:
    """Secrets are referenced, never written here: no Secret with data, no secret-looking env value."""
    docs = render(tree)
    assert not [d for d in of_kind(docs, "Secret") if d.get("data") or d.get("stringData")]
    for workload, template in pod_templates(docs):
        for c in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
            for env in c.get("env", []):
                assert "value" not in env or not _looks_secret(env["name"]), f"{name(workload)}: {env['name']}"
    for cm in of_kind(docs, "ConfigMap"):
        for key in cm.get("data", {}):
            assert not _looks_secret(key), f"{name(cm)}: {key}"


def _looks_secret(variable: str) -> bool:
    """A variable that holds a secret itself (not a path to one): passwords, tokens, the MongoDB URL."""
    return bool(re.search(r"PASSWORD|SECRET|TOKEN|MONGO__URL", variable)) and not variable.endswith(("_FILE", "_DIR"))


@pytest.mark.parametrize("tree", TREES)
def test_every_consumer_scales_on_lag_and_has_a_pdb(tree: str) -> None:
    docs = render(tree)
    scaled = {so["spec"]["scaleTargetRef"]["name"]: so for so in of_kind(docs, "ScaledObject")}
    pdbs = of_kind(docs, "PodDisruptionBudget")
    partitions = {t["spec"].get("topicName", name(t)): t["spec"]["partitions"] for t in of_kind(docs, "KafkaTopic")}
    for dep in of_kind(docs, "Deployment"):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        so = scaled[name(dep)]
        kafka = [t for t in so["spec"]["triggers"] if t["type"] == "kafka"]
        assert kafka, f"{name(dep)}: no kafka trigger"
        assert kafka[0]["metadata"]["consumerGroup"] == f"factura-{name(dep)}"
        assert int(kafka[0]["metadata"]["lagThreshold"]) > 0
        low, high = so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]
        assert 1 <= low <= high, name(dep)
        topic = kafka[0]["metadata"].get("topic")
        if topic in partitions:  # more replicas than partitions would idle
            assert high <= partitions[topic], f"{name(dep)}: {high} replicas > {partitions[topic]} partitions"
        assert [p for p in pdbs if selects(p["spec"]["selector"], labels)], f"{name(dep)}: no PDB"
        assert "replicas" not in dep["spec"], f"{name(dep)}: KEDA owns the replica count"


@pytest.mark.parametrize("tree", TREES)
def test_every_network_policy_selects_pods_and_deny_is_default(tree: str) -> None:
    docs = render(tree)
    pods = [t["metadata"]["labels"] for _, t in pod_templates(docs)]
    policies = of_kind(docs, "NetworkPolicy")
    for policy in policies:
        assert [p for p in pods if selects(policy["spec"]["podSelector"], p)], f"{name(policy)} selects no pod"
    for labels in pods:  # every Factura pod is under a default deny for both directions
        deny = [
            p
            for p in policies
            if selects(p["spec"]["podSelector"], labels)
            and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
        ]
        assert deny, f"{labels['app.kubernetes.io/name']}: no default deny"


def _field_exists(model: type[BaseModel], path: list[str]) -> bool:
    field = model.model_fields.get(path[0])
    if field is None:
        return False
    if len(path) == 1:
        return True
    # A nested group may be optional (``S3Settings | None``): look into each member of the union.
    members = typing.get_args(field.annotation) or (field.annotation,)
    return any(
        isinstance(nested, type) and issubclass(nested, BaseModel) and _field_exists(nested, path[1:])
        for nested in members
    )


@pytest.mark.parametrize("tree", TREES)
def test_config_names_settings_the_services_read(tree: str) -> None:
    """Settings ignore unknown variables, so a misspelt one would be silently dropped: check each."""
    docs = render(tree)
    for service, settings in SETTINGS.items():
        (cm,) = [c for c in of_kind(docs, "ConfigMap") if name(c) == f"{service}-config"]
        prefix = f"FACTURA_{service.upper().replace('-', '_')}_"
        for key in cm["data"]:
            if not key.startswith("FACTURA_"):
                continue
            assert key.startswith(prefix), f"{service}: {key}"
            path = key.removeprefix(prefix).lower().split("__")
            assert _field_exists(settings, path), f"{tree}: {service} has no setting {key}"


@pytest.mark.parametrize("tree", TREES)
def test_render_workers_match_the_cpu_limit(tree: str) -> None:
    """WORKERS=0 would count the node's cores; the pod may use only its limit."""
    docs = render(tree)
    (cm,) = [c for c in of_kind(docs, "ConfigMap") if name(c) == "renderer-config"]
    (dep,) = [d for d in of_kind(docs, "Deployment") if name(d) == "renderer"]
    cpu = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
    assert int(cm["data"]["FACTURA_RENDERER_WORKERS"]) == int(cpu)


def test_prod_pins_images() -> None:
    for _, template in pod_templates(render("overlays/prod")):
        for c in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
            assert "@sha256:" in c["image"] or re.search(r":[0-9][\w.-]*$", c["image"]), c["image"]


@pytest.mark.parametrize("tree", TREES)
def test_kafka_is_reached_over_tls_and_scram(tree: str) -> None:
    """The Strimzi cluster has one listener, TLS + SCRAM-SHA-512 on 9093: services and KEDA use it."""
    docs = render(tree)
    for cm in of_kind(docs, "ConfigMap"):
        for key, value in cm.get("data", {}).items():
            if key.endswith("KAFKA__BOOTSTRAP_SERVERS"):
                assert value.endswith(":9093"), f"{name(cm)}: {value}"
            if key.endswith("KAFKA__SECURITY_PROTOCOL"):
                assert value == "SASL_SSL", f"{name(cm)}: {value}"
    for so in of_kind(docs, "ScaledObject"):
        trigger = so["spec"]["triggers"][0]
        assert trigger["metadata"]["bootstrapServers"].endswith(":9093")
        assert trigger["metadata"]["tls"] == "enable" and trigger["metadata"]["sasl"] == "scram_sha512"
        assert trigger["authenticationRef"]["name"] in {name(t) for t in of_kind(docs, "TriggerAuthentication")}


def test_dev_runs_one_replica_of_everything() -> None:
    docs = render("overlays/dev")
    assert {so["spec"]["maxReplicaCount"] for so in of_kind(docs, "ScaledObject")} == {1}
    (mongo,) = of_kind(docs, "StatefulSet")
    assert mongo["spec"]["replicas"] == 1
    (rs_init,) = [j for j in of_kind(docs, "Job") if name(j) == "mongo-rs-init"]
    env = {e["name"]: e["value"] for e in rs_init["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MONGO_MEMBERS"] == "1"
