#!/usr/bin/env python3
"""Verify a Factura evidence bundle offline, using only what is inside it.

    python3 verify_bundle.py [BUNDLE_DIR] [--tsa-ca ROOT.pem]

Runs with the Python standard library; the Ed25519 checkpoint signatures are checked with the
``cryptography`` package when it is installed, else with the ``openssl`` command. Checks, in order:

1. every file listed in ``manifest.json`` has the SHA-256 written there;
2. the audit chain proof: every position's hash is ``sha256(prev ‖ record)``, each position's
   ``prev`` is the hash of the one before, removed positions are fixed by a signed retention
   checkpoint, and every checkpoint's Ed25519 signature verifies with the public key in the bundle
   and fixes the hash the proof has at its position;
3. every invoice record is in the proof and sealed by a signed checkpoint at or after it (a record
   newer than the last checkpoint is reported as a warning: linked, not yet sealed);
4. ``events.json`` says what the proven records say;
5. every included document has the SHA-256 recorded in the proven audit record it came from;
6. with ``--tsa-ca``, every RFC 3161 token passes ``openssl ts -verify`` against the document.

Exit status 0 when everything verified (warnings allowed), 1 when anything failed. This file is
also imported by the service that builds bundles (``normalise``), so what the bundle says and
what this script checks are one definition.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
#: Envelope ``data`` fields copied into a normalised event: the facts and the provider's own evidence.
EVIDENCE_FIELDS = (
    "document",
    "channel",
    "recipient",
    "provider_message_id",
    "reason",
    "detail",
    "code",
    "enhanced_code",
    "evidence",
    "next_channel",
    "chain",
    "segments",
    "encoding",
    "link_id",
    "target",
    "user_agent",
    "user_agent_class",
    "client_ip_hash",
    "automated",
    "automated_reason",
    "payment_id",
    "amount",
    "currency",
    "paid_at",
)


def normalise(record: dict[str, Any]) -> dict[str, Any]:
    """One hashed audit record as an auditor reads it: what happened, when, through which channel,
    and the raw provider evidence the event carried (SMTP reply, DSN or webhook body, ...)."""
    raw = _json(record.get("raw"))
    data = raw.get("data") if isinstance(raw, dict) else None
    data = data if isinstance(data, dict) else {}
    event: dict[str, Any] = {
        "seq": record.get("seq"),
        "id": record.get("id"),
        "kind": record.get("kind"),
        "type": record.get("type"),
        "occurred_at": record.get("occurred_at"),
        "recorded_at": record.get("recorded_at"),
        "purpose": record.get("purpose"),
        "outcome": record.get("outcome"),
        "reason": record.get("reason"),
        "channel": record.get("channel"),
    }
    if isinstance(raw, dict):
        event["producer"] = raw.get("producer")
        event["correlation_id"] = raw.get("correlation_id")
        event["causation_id"] = raw.get("causation_id")
    for name in EVIDENCE_FIELDS:
        if data.get(name) is not None:
            event[name] = data[name]
    if record.get("kind") == "dead_letter" and isinstance(raw, dict):
        event["error"] = raw.get("error")
        event["source_topic"] = raw.get("source_topic")
    return {k: v for k, v in event.items() if v is not None}


def document_refs(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The document references (bucket, key, sha256, ...) a hashed record's event carries."""
    raw = _json(record.get("raw"))
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, dict):
        return []
    notice = data.get("notice")
    found = [data.get("document"), notice.get("document") if isinstance(notice, dict) else None]
    return [ref for ref in found if isinstance(ref, dict) and isinstance(ref.get("key"), str)]


def _json(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Report:
    def __init__(self, out: Callable[[str], None] = print) -> None:
        self.failures = 0
        self.warnings = 0
        self._out = out

    def ok(self, text: str) -> None:
        self._out(f"OK    {text}")

    def fail(self, text: str) -> None:
        self.failures += 1
        self._out(f"FAIL  {text}")

    def warn(self, text: str) -> None:
        self.warnings += 1
        self._out(f"WARN  {text}")


def check_manifest(root: Path, report: Report) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    for name, entry in sorted(manifest["files"].items()):
        path = root / name
        if ".." in Path(name).parts or not path.is_file():
            report.fail(f"{name}: listed in the manifest but missing")
        elif sha256_file(path) != entry["sha256"]:
            report.fail(f"{name}: SHA-256 differs from the manifest")
    if not report.failures:
        report.ok(f"manifest: {len(manifest['files'])} files have the SHA-256 the manifest lists")
    return manifest


def ed25519_valid(public_pem: str, payload: bytes, signature: bytes) -> bool:
    try:  # optional: an auditor's machine may have only the standard library and openssl
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: PLC0415
        from cryptography.hazmat.primitives.serialization import load_pem_public_key  # noqa: PLC0415
    except ImportError:
        return _openssl_ed25519(public_pem, payload, signature)
    key = load_pem_public_key(public_pem.encode())
    if not isinstance(key, Ed25519PublicKey):
        return False
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        return False
    return True


def _openssl_ed25519(public_pem: str, payload: bytes, signature: bytes) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        key, data, sig = Path(tmp, "key.pem"), Path(tmp, "payload"), Path(tmp, "sig")
        key.write_text(public_pem)
        data.write_bytes(payload)
        sig.write_bytes(signature)
        args = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(key), "-rawin"]
        done = subprocess.run([*args, "-in", str(data), "-sigfile", str(sig)], capture_output=True, check=False)
        return done.returncode == 0


def key_id_of(public_pem: str) -> str:
    """sha256 of the raw 32-byte Ed25519 key (the last 32 bytes of its DER), first 16 hex digits."""
    body = "".join(line for line in public_pem.splitlines() if line and not line.startswith("-----"))
    return hashlib.sha256(base64.b64decode(body)[-32:]).hexdigest()[:16]


def check_checkpoints(proof: dict[str, Any], tenant: str, report: Report) -> dict[str, dict[str, Any]]:
    """id → payload of every checkpoint whose signature verifies with a key in the bundle."""
    keys = {key_id_of(pem): pem for pem in proof["public_keys"].values()}
    valid: dict[str, dict[str, Any]] = {}
    for cp in proof["checkpoints"]:
        pem = keys.get(str(cp.get("key_id")))
        if pem is None:
            report.fail(f"checkpoint {cp.get('id')}: signed with key {cp.get('key_id')}, not in the bundle")
            continue
        if not ed25519_valid(pem, cp["payload"].encode(), bytes.fromhex(cp["signature"])):
            report.fail(f"checkpoint {cp.get('id')}: Ed25519 signature does not verify")
            continue
        payload = json.loads(cp["payload"])
        if payload.get("tenant_id") != tenant or payload.get("key_id") != cp.get("key_id"):
            report.fail(f"checkpoint {cp.get('id')}: signed for another tenant or key")
            continue
        if payload.get("kind") == "retention":
            lines = "\n".join(f"{seq}:{h}" for seq, h in sorted(cp.get("members", [])))
            if hashlib.sha256(lines.encode()).hexdigest() != payload.get("digest"):
                report.fail(f"checkpoint {cp.get('id')}: removed positions differ from the signed digest")
                continue
        valid[str(cp["id"])] = payload
    if len(valid) == len(proof["checkpoints"]):
        report.ok(f"checkpoints: {len(valid)} Ed25519 signatures verify with the bundle's public key(s)")
    return valid


def check_chain(proof: dict[str, Any], tenant: str, report: Report) -> dict[int, dict[str, Any]]:
    """seq → hashed record (parsed) of every proven position; empty when the proof does not hold."""
    signed = check_checkpoints(proof, tenant, report)
    walked = _walk(proof, tenant, signed, report)
    if walked is None:
        return {}
    proven, sealed = walked
    report.ok(f"chain: {len(proof['positions'])} positions recompute and link")
    invoice = proof["invoice_id"]
    listed = set(proof["invoice_records"]) | set(proof.get("unproven", []))
    hidden = [s for s, r in proven.items() if r.get("invoice_id") == invoice and s not in listed]
    if hidden:
        report.fail(f"records of this invoice at positions {hidden} are in the chain but not in the bundle")
    for seq in proof["invoice_records"]:
        if seq not in proven or proven[seq].get("invoice_id") != invoice:
            report.fail(f"invoice record at position {seq} is not in the proof")
        elif seq not in sealed:
            report.warn(f"invoice record at position {seq} links to the chain but no signed checkpoint seals it yet")
    for seq in proof.get("unproven", []):
        report.warn(f"invoice record at position {seq}: proof left out (bundle size bound); use the chain export")
    return proven


def _walk(
    proof: dict[str, Any], tenant: str, signed: dict[str, dict[str, Any]], report: Report
) -> tuple[dict[int, dict[str, Any]], set[int]] | None:
    """Recompute and link every position in order: the proven records and the positions a head
    checkpoint seals; ``None`` (reported) at the first problem."""
    removed_ok = {
        (seq, h)
        for cp in proof["checkpoints"]
        if signed.get(str(cp["id"]), {}).get("kind") == "retention"
        for seq, h in cp.get("members", [])
    }
    heads = {p["seq"]: p["hash"] for p in signed.values() if p.get("kind") == "head"}
    present = {p["seq"] for p in proof["positions"]}
    missing = [s for a, b in proof["ranges"] for s in range(a, b + 1) if s not in present]
    if missing:
        report.fail(f"positions {missing[:20]} are missing from the proof (removed without a signed tombstone?)")
        return None
    proven: dict[int, dict[str, Any]] = {}
    sealed: set[int] = set()
    segment: list[int] = []
    previous: dict[str, Any] | None = None
    for pos in sorted(proof["positions"], key=lambda p: p["seq"]):
        seq = pos["seq"]
        contiguous = previous is not None and previous["seq"] + 1 == seq
        problem = _position_problem(pos, previous if contiguous else None, tenant, removed_ok)
        if problem is None and seq in heads and heads[seq] != pos["hash"]:
            problem = "hash differs from the one a signed checkpoint fixed"
        if problem is not None:
            report.fail(f"position {seq} ({pos.get('id')}): {problem}")
            return None
        if not pos.get("removed"):
            proven[seq] = json.loads(pos["record"])
        segment = [*segment, seq] if contiguous else [seq]
        if seq in heads:
            sealed.update(segment)
            segment = []
        previous = pos
    return proven, sealed


def _position_problem(
    pos: dict[str, Any], before: dict[str, Any] | None, tenant: str, removed_ok: set[tuple[int, str]]
) -> str | None:
    if before is not None and pos["prev"] != before["hash"]:
        return "prev is not the hash of the position before (removed, inserted or reordered)"
    if pos.get("removed"):
        ok = (pos["seq"], pos["hash"]) in removed_ok
        return None if ok else "removed, but no valid retention checkpoint fixes its hash"
    return _record_problem(pos, tenant)


def _record_problem(pos: dict[str, Any], tenant: str) -> str | None:
    record = pos.get("record")
    if not isinstance(record, str):
        return "no record"
    if hashlib.sha256(str(pos["prev"]).encode() + record.encode()).hexdigest() != pos["hash"]:
        return "content altered: sha256(prev || record) is not its hash"
    body = _json(record)
    if not isinstance(body, dict):
        return "hashed record is not a JSON object"
    if body.get("seq") != pos["seq"] or body.get("id") != pos.get("id") or body.get("tenant_id") != tenant:
        return "position, id or tenant differ from the hashed record"
    return None


def check_events(root: Path, proven: dict[int, dict[str, Any]], report: Report) -> None:
    events = json.loads((root / "events.json").read_text(encoding="utf-8"))
    bad = [e.get("seq") for e in events if e.get("seq") not in proven or normalise(proven[e["seq"]]) != e]
    if bad:
        report.fail(f"events.json: entries at positions {bad} differ from the proven records")
    else:
        report.ok(f"events.json: {len(events)} events are what the proven records say")


def check_documents(root: Path, manifest: dict[str, Any], proven: dict[int, dict[str, Any]], report: Report) -> None:
    for doc in manifest.get("documents", []):
        record = proven.get(doc["record_seq"])
        refs = document_refs(record) if record else []
        recorded = next((r["sha256"] for r in refs if r["key"] == doc["key"]), None)
        if recorded is None:
            report.fail(f"document {doc['key']}: no proven record at position {doc['record_seq']} names it")
            continue
        if doc.get("file") is None:
            report.warn(f"document {doc['key']}: not included ({doc['note']}); recorded SHA-256 {recorded}")
            continue
        if sha256_file(root / doc["file"]) != recorded:
            report.fail(f"{doc['file']}: SHA-256 differs from the one recorded at position {doc['record_seq']}")
        else:
            report.ok(f"{doc['file']}: SHA-256 is the one recorded at position {doc['record_seq']} ({recorded})")


def check_timestamps(root: Path, manifest: dict[str, Any], tsa_ca: Path | None, report: Report) -> None:
    for doc in manifest.get("documents", []):
        token = doc.get("timestamp_file")
        if token is None or doc.get("file") is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            pdf = _timestamped_pdf(root / doc["file"], doc.get("content_type"), Path(tmp))
            args = ["openssl", "ts", "-verify", "-data", str(pdf), "-in", str(root / token)]
            args += ["-token_in"] if doc.get("timestamp_form") == "token" else []
            if tsa_ca is None or shutil.which("openssl") is None:
                report.warn(f"{token}: not checked; run: {' '.join(args)} -CAfile <TSA root>")
                continue
            done = subprocess.run([*args, "-CAfile", str(tsa_ca)], capture_output=True, text=True, check=False)
        if done.returncode == 0 and "Verification: OK" in done.stdout:
            report.ok(f"{token}: RFC 3161 timestamp verifies over {doc['file']} (openssl ts -verify)")
        else:
            report.fail(f"{token}: openssl ts -verify failed: {(done.stdout + done.stderr).strip()[-300:]}")


def _timestamped_pdf(document: Path, content_type: Any, tmp: Path) -> Path:
    """The PDF a token covers: the document, or the PDF inside a zip package."""
    if content_type != "application/zip":
        return document
    with zipfile.ZipFile(document) as package:
        name = next((n for n in package.namelist() if n.lower().endswith(".pdf")), None)
        if name is None:
            return document
        out = tmp / "invoice.pdf"
        out.write_bytes(package.read(name))
        return out


def verify(root: Path, tsa_ca: Path | None = None, out: Callable[[str], None] = print) -> bool:
    report = Report(out)
    manifest = check_manifest(root, report)
    proof = json.loads((root / "chain" / "proof.json").read_text(encoding="utf-8"))
    if proof.get("tenant_id") != manifest.get("tenant_id"):
        report.fail("chain/proof.json is for another tenant than the manifest")
    proven = check_chain(proof, str(manifest.get("tenant_id")), report)
    check_events(root, proven, report)
    check_documents(root, manifest, proven, report)
    check_timestamps(root, manifest, tsa_ca, report)
    verdict = "FAILED" if report.failures else "VERIFIED" + (" (with warnings)" if report.warnings else "")
    out(f"RESULT: {verdict}")
    return report.failures == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("bundle", nargs="?", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--tsa-ca", type=Path, help="PEM root certificate of the TSA, obtained from the TSA itself")
    args = parser.parse_args(argv)
    return 0 if verify(args.bundle, args.tsa_ca) else 1


if __name__ == "__main__":
    sys.exit(main())
