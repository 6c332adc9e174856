"""The evidence bundle of one invoice: a zip an auditor verifies offline, without trusting us.

It holds the exact bytes sent (fetched from S3 by the key the audit trail recorded, with the
SHA-256 recorded when they were rendered), the detached RFC 3161 timestamp token when one was
taken, the invoice's audit records as normalised delivery events with the raw provider evidence
they carry, and a hash-chain proof: for each record, every position from it to the first signed
head checkpoint at or after it (record, ``prev``, ``hash``), the signed checkpoints and the public
keys. ``verify_bundle.py`` (stdlib + optionally ``cryptography``) checks all of it, and the README
says how to do the same by hand with ``sha256sum``, ``openssl ts`` and ``openssl pkeyutl``.

Why a segment to a checkpoint and not the whole chain: a checkpoint signs the hash at its
position, and every hash covers the one before, so the positions from a record to a signed
checkpoint are enough to show that record is the one the chain held when it was signed.
Checkpoints are written every minute of activity, so a segment is about a minute of the tenant's
records (the tenant's own data: the caller may read the tenant). Positions removed by retention
inside a segment appear as their hash, fixed by the signed digest of their retention checkpoint.

Size is bounded, not unbounded-streamed: the records of one invoice (:data:`MAX_RECORDS`),
documents (:data:`MAX_DOCUMENTS`, each at most :data:`MAX_DOCUMENT_BYTES` and all together at most
:data:`MAX_DOCUMENTS_TOTAL`, else hash and reference only)
and proof positions (:data:`MAX_PROOF_POSITIONS`, else the records left unproven are named). The
zip itself is produced and sent in chunks; stored documents are not recompressed.

S3 down, or silent for ``fetch_timeout_s``, is :class:`~factura.common.errors.DependencyDown`: the
API answers 503 with ``Retry-After`` rather than a bundle without its document (an object gone from
S3, its retention expired, is different: its hash and reference stand in for it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Protocol

from pymongo import ASCENDING

from factura.audit.checkpoints import Keyring, public_pem
from factura.audit.records import canonical
from factura.audit.store import AuditDb
from factura.audit.verify_bundle import document_refs, normalise
from factura.common.envelope import utcnow
from factura.common.errors import DependencyDown
from factura.common.mongo import Document, exact

log = logging.getLogger(__name__)

FORMAT: Final = "factura-evidence/1"
MAX_RECORDS: Final = 2000
MAX_DOCUMENTS: Final = 10
MAX_DOCUMENT_BYTES: Final = 20 * 1024 * 1024
#: All documents of one bundle together; past it, the rest are hash and reference only.
MAX_DOCUMENTS_TOTAL: Final = 50 * 1024 * 1024
MAX_TOKEN_BYTES: Final = 256 * 1024
MAX_PROOF_POSITIONS: Final = 50_000
CHUNK_BYTES: Final = 256 * 1024
VERIFIER: Final = Path(__file__).with_name("verify_bundle.py")
_EXTENSIONS: Final = {"application/pdf": "pdf", "application/zip": "zip"}

#: A stored record and its parsed ``raw`` → that value with customers' contact data decrypted
#: (``[erased]`` after erasure): :func:`factura.audit.records.reveal` with the service's cipher.
Reveal = Callable[[Document, Any], Awaitable[Any]]


class Documents(Protocol):
    """Where rendered documents live (:class:`factura.common.storage.DocumentStore` is one)."""

    bucket: str

    async def get_if_exists(self, key: str) -> bytes | None: ...


@dataclass(frozen=True)
class Bundle:
    """The files of one bundle, in zip order; :meth:`chunks` writes them as a zip, piece by piece."""

    tenant_id: str
    invoice_id: str
    generated_at: datetime
    files: list[tuple[str, bytes]]

    @property
    def filename(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.invoice_id)[:100]
        return f"evidence-{self.tenant_id}-{safe}.zip"

    async def chunks(self) -> AsyncIterator[bytes]:
        sink = _Sink()
        stamp = self.generated_at.timetuple()[:6]
        with zipfile.ZipFile(sink, mode="w") as archive:
            for name, data in self.files:
                info = zipfile.ZipInfo(f"{self.filename[:-4]}/{name}", date_time=stamp)
                stored = name.startswith("documents/")  # PDFs and tokens do not compress
                info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                with archive.open(info, mode="w") as member:
                    for start in range(0, len(data), CHUNK_BYTES):
                        member.write(data[start : start + CHUNK_BYTES])
                        if sink.size() >= CHUNK_BYTES:
                            yield sink.take()
        yield sink.take()  # the rest and the central directory


class _Sink:
    """A write-only, unseekable file: zipfile then writes data descriptors and never seeks back."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def size(self) -> int:
        return sum(len(p) for p in self._parts)

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


@dataclass
class _Document:
    ref: dict[str, Any]
    record_seq: int
    record_type: str
    entry: dict[str, Any] = field(default_factory=dict)


class EvidenceBundles:
    """Builds bundles from the audit collections, the signing keys' public halves and S3."""

    def __init__(
        self,
        db: AuditDb,
        keys: Keyring,
        documents: Documents | None,
        reveal: Reveal | None = None,
        *,
        fetch_timeout_s: float = 10.0,
    ) -> None:
        self._db = db
        self._keys = keys
        self._documents = documents
        self._reveal = reveal
        #: How long one object may take to come from S3: a caller waits that long at most per object
        #: before a 503, rather than the S3 client's own timeouts and retries (up to a minute).
        self._fetch_timeout_s = fetch_timeout_s

    async def build(self, tenant: str, invoice: str) -> Bundle | None:
        """The bundle of ``invoice`` of ``tenant``; ``None`` when the tenant has no record of it."""
        cursor = self._db.records.find(exact({"tenant_id": tenant, "invoice_id": invoice}))
        docs = [doc async for doc in cursor.sort("seq", ASCENDING).limit(MAX_RECORDS + 1)]
        if not docs:
            return None
        truncated = len(docs) > MAX_RECORDS
        docs = docs[:MAX_RECORDS]
        records = [_parsed(doc) for doc in docs]
        files: list[tuple[str, bytes]] = []
        documents = await self._documents_of(records, files)
        proof = await self._proof(tenant, invoice, [int(doc["seq"]) for doc in docs])
        files.append(("events.json", _pretty([normalise(r) for r in records if r])))
        if self._reveal is not None:
            files.append(("events.revealed.json", _pretty(await self._revealed(docs, records))))
        files.append(("chain/proof.json", _pretty(proof)))
        for i, cp in enumerate(proof["checkpoints"], start=1):
            files.append((f"chain/checkpoints/{i}.payload", cp["payload"].encode()))
            files.append((f"chain/checkpoints/{i}.sig", bytes.fromhex(cp["signature"])))
        for kid, pem in proof["public_keys"].items():
            files.append((f"chain/public-keys/{kid}.pem", pem.encode()))
        files.append(("verify_bundle.py", VERIFIER.read_bytes()))
        now = utcnow()
        context = {
            "tenant_id": tenant,
            "invoice_id": invoice,
            "generated_at": now,
            "documents": [d.entry for d in documents],
            "records": len(docs),
            "records_truncated": truncated,
            "checkpoints": [(i, cp) for i, cp in enumerate(proof["checkpoints"], start=1)],
            "unproven": proof["unproven"],
        }
        files.insert(0, ("README.md", readme(context).encode()))
        manifest = {
            "format": FORMAT,
            "tenant_id": tenant,
            "invoice_id": invoice,
            "generated_at": now,
            "records": len(docs),
            "records_truncated": truncated,
            "documents": [d.entry for d in documents],
            "files": {name: {"sha256": _sha(data), "size": len(data)} for name, data in files},
        }
        files.append(("manifest.json", _pretty(manifest)))
        files.append(("SHA256SUMS", "".join(f"{_sha(data)}  {name}\n" for name, data in files).encode()))
        return Bundle(tenant, invoice, now, files)

    async def _revealed(self, docs: list[Document], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events with contact data decrypted: the hashed records keep it encrypted, so this
        view is the service's statement, not covered by the proof (README section 4)."""
        assert self._reveal is not None
        out = []
        for doc, record in zip(docs, records, strict=True):
            try:
                raw = json.loads(record["raw"])
            except (KeyError, TypeError, ValueError):
                continue
            revealed = await self._reveal(doc, raw)
            out.append(normalise(record | {"raw": json.dumps(revealed, ensure_ascii=False)}))
        return out

    # --- documents and timestamp tokens ---------------------------------------------------------

    async def _documents_of(self, records: list[dict[str, Any]], files: list[tuple[str, bytes]]) -> list[_Document]:
        found: dict[tuple[str, str], _Document] = {}
        for record in records:
            for ref in document_refs(record):
                where = (str(ref.get("bucket")), str(ref["key"]))
                if where not in found and len(found) < MAX_DOCUMENTS:
                    found[where] = _Document(ref, int(record["seq"]), str(record.get("type")))
        budget = MAX_DOCUMENTS_TOTAL
        for n, doc in enumerate(found.values(), start=1):
            ref = doc.ref
            name = f"documents/{n}/invoice.{_EXTENSIONS.get(str(ref.get('content_type')), 'bin')}"
            doc.entry = {
                "bucket": ref.get("bucket"),
                "key": ref["key"],
                "filename": ref.get("filename"),
                "content_type": ref.get("content_type"),
                "size_bytes": ref.get("size_bytes"),
                "recorded_sha256": ref.get("sha256"),
                "record_seq": doc.record_seq,
                "record_type": doc.record_type,
                "file": None,
                "note": None,
                "timestamp_file": None,
                "timestamp_form": None,
                "timestamp_note": "no timestamp was taken for this document",
            }
            data, doc.entry["note"] = await self._fetch(ref, ref["key"], min(MAX_DOCUMENT_BYTES, budget))
            if data is not None:
                budget -= len(data)
                files.append((name, data))
                doc.entry["file"] = name
                if _sha(data) != ref.get("sha256"):
                    doc.entry["note"] = "the stored object's SHA-256 differs from the recorded one"
                    log.warning("evidence: stored document differs from its record", extra={"key": ref["key"]})
            token_key = ref.get("timestamp_key")
            if isinstance(token_key, str):
                token, note = await self._fetch(ref, token_key, MAX_TOKEN_BYTES, declared=False)
                doc.entry["timestamp_note"] = note
                if token is not None:  # always over the PDF, also when a zip package was sent
                    files.append((f"documents/{n}/invoice.pdf.tsr", token))
                    doc.entry["timestamp_file"] = f"documents/{n}/invoice.pdf.tsr"
                    doc.entry["timestamp_form"] = timestamp_form(token)
                    doc.entry["timestamp_key"] = token_key
        return list(found.values())

    async def _fetch(
        self, ref: dict[str, Any], key: str, limit: int, *, declared: bool = True
    ) -> tuple[bytes | None, str | None]:
        """An object's bytes, or why only its reference is in the bundle. ``limit`` bounds the
        bytes taken: the declared ``size_bytes`` before fetching (``declared``), the bytes after."""
        too_large = f"over the bundle's size bound ({limit} bytes left): hash and reference only"
        if self._documents is None:
            return None, "the audit service has no access to the document store: hash and S3 reference only"
        if ref.get("bucket") != self._documents.bucket:
            return None, f"stored in bucket {ref.get('bucket')!r}, which audit does not read: hash and reference only"
        size = ref.get("size_bytes")
        if declared and isinstance(size, int) and size > limit:
            return None, too_large
        try:
            async with asyncio.timeout(self._fetch_timeout_s):
                data = await self._documents.get_if_exists(key)
        except TimeoutError as e:
            raise DependencyDown("s3", f"no answer within {self._fetch_timeout_s:g} s") from e
        if data is None:
            return None, "no longer in S3 (its retention period expired): hash and S3 reference only"
        if len(data) > limit:
            return None, too_large
        return data, None

    # --- the hash-chain proof -------------------------------------------------------------------

    async def _proof(self, tenant: str, invoice: str, seqs: list[int]) -> dict[str, Any]:
        ranges: list[list[int]] = []
        unproven: list[int] = []
        positions = 0
        for seq in seqs:
            if ranges and ranges[-1][0] <= seq <= ranges[-1][1]:
                continue
            end = await self._sealed_at(tenant, seq)
            if positions + end - seq + 1 > MAX_PROOF_POSITIONS:
                unproven.append(seq)
                continue
            positions += end - seq + 1
            ranges.append([seq, end])
        lines: list[dict[str, Any]] = []
        checkpoints: list[dict[str, Any]] = []
        retention: set[str] = set()
        for start, end in ranges:
            lines += await self._positions(tenant, start, end, retention)
            query = exact({"tenant_id": tenant, "kind": "head", "seq": {"$gte": start, "$lte": end}})
            checkpoints += [_checkpoint(cp) async for cp in self._db.checkpoints.find(query).sort("seq", ASCENDING)]
        for cp_id in sorted(retention):
            cp = await self._db.checkpoints.find_one(exact({"_id": cp_id, "tenant_id": tenant}))
            if cp is not None:
                members = self._db.tombstones.find(
                    exact({"tenant_id": tenant, "checkpoint": cp_id}), {"seq": 1, "hash": 1}
                )
                checkpoints.append(
                    _checkpoint(cp) | {"members": sorted([[t["seq"], t["hash"]] async for t in members])}
                )
        return {
            "format": "factura-evidence-proof/1",
            "tenant_id": tenant,
            "invoice_id": invoice,
            "hash": "sha256(prev_hex_ascii || record_utf8)",
            "signature": "ed25519(payload_utf8)",
            "invoice_records": [s for s in seqs if s not in unproven],
            "unproven": unproven,
            "ranges": ranges,
            "positions": lines,
            "checkpoints": checkpoints,
            "public_keys": {kid: public_pem(key) for kid, key in self._keys.keys.items()},
        }

    async def _sealed_at(self, tenant: str, seq: int) -> int:
        """The position of the first signed head checkpoint at or after ``seq`` (``seq`` when none yet)."""
        query = exact({"tenant_id": tenant, "kind": "head", "seq": {"$gte": seq}})
        async for cp in self._db.checkpoints.find(query, {"seq": 1}).sort("seq", ASCENDING).limit(1):
            return int(cp["seq"])
        return seq

    async def _positions(self, tenant: str, start: int, end: int, retention: set[str]) -> list[dict[str, Any]]:
        """Every position ``start..end``: the stored record, or the tombstone retention left."""
        query = exact({"tenant_id": tenant, "seq": {"$gte": start, "$lte": end}})
        found: dict[int, dict[str, Any]] = {}
        async for tomb in self._db.tombstones.find(query).sort("seq", ASCENDING):
            retention.add(str(tomb.get("checkpoint")))
            found[int(tomb["seq"])] = {
                "seq": tomb["seq"],
                "id": tomb.get("record_id"),
                "prev": tomb.get("prev"),
                "hash": tomb["hash"],
                "removed": True,
                "checkpoint": tomb.get("checkpoint"),
            }
        async for doc in self._db.records.find(query).sort("seq", ASCENDING):
            line = {"seq": doc["seq"], "id": doc["_id"], "prev": doc["prev"], "hash": doc["hash"]}
            found[int(doc["seq"])] = line | {"record": doc["record"]}  # a record beats its tombstone
        return [found[s] for s in sorted(found)]


def timestamp_form(token: bytes) -> str:
    """``response`` (RFC 3161 TimeStampResp) or ``token`` (a bare TimeStampToken, CMS ContentInfo):
    the first element of the outer DER SEQUENCE is a SEQUENCE (PKIStatusInfo) or an OID."""
    if len(token) < 4 or token[0] != 0x30:
        return "unknown"
    length = token[1]
    offset = 2 + (length & 0x7F if length & 0x80 else 0)
    inner = token[offset] if offset < len(token) else None
    return {0x30: "response", 0x06: "token"}.get(inner or 0, "unknown")


def _checkpoint(cp: Document) -> dict[str, Any]:
    return {
        "id": cp["_id"],
        "kind": cp.get("kind"),
        "seq": cp.get("seq"),
        "key_id": cp.get("key_id"),
        "payload": cp["payload"],
        "signature": cp["signature"],
    }


def _parsed(doc: Document) -> dict[str, Any]:
    try:
        record = json.loads(doc["record"])
    except (KeyError, TypeError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pretty(value: Any) -> bytes:
    return (json.dumps(json.loads(canonical(value)), indent=2, ensure_ascii=False) + "\n").encode()


# --- the README ------------------------------------------------------------------------------------


def readme(ctx: dict[str, Any]) -> str:
    """The auditor's instructions, naming this bundle's own files."""
    parts = [
        _README_HEAD.format(
            invoice=ctx["invoice_id"], tenant=ctx["tenant_id"], at=ctx["generated_at"].strftime("%Y-%m-%d %H:%M:%S")
        ),
        _documents_section(ctx["documents"]),
        _timestamps_section(ctx["documents"]),
        _README_EVENTS,
        _chain_section(ctx["checkpoints"], ctx["unproven"], ctx["records_truncated"]),
        _README_LIMITS,
    ]
    return "\n".join(parts)


def _documents_section(documents: Iterable[dict[str, Any]]) -> str:
    lines = ["## 2. The document sent", ""]
    for d in documents:
        if d["file"]:
            lines += [
                f"* `{d['file']}`: the exact bytes stored at `s3://{d['bucket']}/{d['key']}` and sent as "
                f"`{d['filename']}`. Its SHA-256 was recorded in the `{d['record_type']}` record at chain "
                f"position {d['record_seq']} (`{d['recorded_sha256']}`):",
                "",
                f"      sha256sum {d['file']}    # must print {d['recorded_sha256']}",
                "",
            ]
            if d["note"]:
                lines += [f"  **Warning:** {d['note']}.", ""]
        else:
            lines += [
                f"* `s3://{d['bucket']}/{d['key']}` (`{d['filename']}`) is **not included**: {d['note']}. "
                f"The `{d['record_type']}` record at chain position {d['record_seq']} fixes its SHA-256 "
                f"`{d['recorded_sha256']}` and size {d['size_bytes']} bytes: a copy kept elsewhere (the "
                "customer's, the tenant's archive) is the one sent if `sha256sum` prints that value.",
                "",
            ]
    if len(lines) == 2:
        lines += ["No record of this invoice names a stored document (it was not rendered yet, or was rejected).", ""]
    return "\n".join(lines)


def _timestamps_section(documents: Iterable[dict[str, Any]]) -> str:
    lines = ["## 3. The trusted timestamp (RFC 3161)", ""]
    for d in documents:
        token = d["timestamp_file"]
        if token is None:
            lines += [f"* `{d['key']}`: {d['timestamp_note']}.", ""]
            continue
        flag = " -token_in" if d["timestamp_form"] == "token" else ""
        data = d["file"] or "<the document>"
        unpack = []
        if d["content_type"] == "application/zip":
            data = "invoice-from-package.pdf"
            unpack = [f"      unzip -p {d['file'] or '<the package>'} '*.pdf' > {data}   # the token covers the PDF"]
        lines += [
            f"* `{token}` is the time-stamp authority's {'token' if flag else 'response'} over the SHA-256 of "
            "the PDF. Get the TSA's root certificate **from the TSA** (not from this bundle) as "
            "`tsa-root.pem`, then:",
            "",
            *unpack,
            f"      openssl ts -reply -in {token}{flag} -text            # the time, policy, serial and imprint",
            f"      openssl ts -verify -data {data} -in {token}{flag} -CAfile tsa-root.pem",
            "",
            "  `Verification: OK` means the TSA signed this document's hash at the time shown. The TSA's "
            "certificates embedded in the token can be listed with",
            f"  `openssl ts -reply -in {token}{flag} -token_out -out t.tst && "
            "openssl pkcs7 -inform DER -in t.tst -print_certs`.",
            "",
        ]
    if len(lines) == 2:
        lines += ["No document, so no timestamp.", ""]
    return "\n".join(lines)


def _chain_section(checkpoints: list[tuple[int, dict[str, Any]]], unproven: list[int], truncated: bool) -> str:
    lines = [_README_CHAIN.rstrip("\n") + "\n"]
    for i, cp in checkpoints:
        lines.append(
            f"      openssl pkeyutl -verify -pubin -inkey chain/public-keys/{cp['key_id']}.pem -rawin "
            f"-in chain/checkpoints/{i}.payload -sigfile chain/checkpoints/{i}.sig   # {cp['kind']} at {cp['seq']}"
        )
    if not checkpoints:
        lines.append("      (no signed checkpoint covers these records yet: fetch the bundle again in a few minutes)")
    lines.append("")
    if unproven:
        lines.append(f"Records at positions {unproven} are listed but their proof was left out to bound the size;")
        lines.append("`GET /v1/chain/export` gives the whole chain.")
    if truncated:
        lines.append(f"Only the first {MAX_RECORDS} records of this invoice are in this bundle.")
    return "\n".join(lines) + "\n"


_README_HEAD = """# Evidence bundle: invoice `{invoice}` of tenant `{tenant}`

Generated by the Factura audit service at {at} (UTC). Everything below can be checked offline with
standard tools: `sha256sum`, `openssl` (1.1.1 or 3.x) and Python 3 (`python3 verify_bundle.py` does
all checks at once; it needs only the standard library, and the `cryptography` package or `openssl`
for Ed25519).

    python3 verify_bundle.py . --tsa-ca tsa-root.pem     # prints OK/WARN/FAIL per check, then RESULT

| file | what it is |
| --- | --- |
| `documents/<n>/invoice.pdf` | the exact bytes sent (when still stored) |
| `documents/<n>/invoice.pdf.tsr` | the RFC 3161 timestamp over them (when one was taken) |
| `events.json` | the invoice's audit records as normalised events, with the provider's raw evidence |
| `chain/proof.json` | the hash-chain positions covering those records, the signed checkpoints, the public keys |
| `chain/checkpoints/<i>.payload`, `.sig` | each checkpoint's signed bytes and its raw Ed25519 signature |
| `chain/public-keys/<key_id>.pem` | the audit signing key(s), public half |
| `verify_bundle.py` | the verifier described here |
| `manifest.json`, `SHA256SUMS` | every file's SHA-256 (`SHA256SUMS` also covers `manifest.json`) |

## 1. The files are the ones generated

    sha256sum -c SHA256SUMS

This proves the files are intact since the bundle was made; sections 2-5 prove what they say.
"""

_README_EVENTS = """## 4. The delivery events

`events.json` lists every audit record of the invoice in chain order (`seq`): when it happened
(`occurred_at`) and was recorded, the channel, the outcome (`delivered`, `failed`, `exhausted`,
...) and reason, and what the event carried from the provider: `recipient`, `provider_message_id`
(the SMTP `Message-ID` or the SMS/voice provider's message id), for failures `detail` (the SMTP
reply text or the provider's status), `code` (SMTP reply code or provider error code),
`enhanced_code` (e.g. `5.1.1`) and `evidence` (the raw DSN or webhook body, up to 16,000
characters), the earlier attempts (`chain`), and for opens, clicks and downloads the link, user
agent class and the keyed hash of the client address. Each entry is derived from the hashed record
at its position in `chain/proof.json` (field `raw` holds the event exactly as received), so the
proof below covers it; `verify_bundle.py` re-derives every entry and compares.

Customers' contact data (email, phone, name) is stored encrypted, so `events.json` shows it as
the stored tokens. `events.revealed.json`, when present, is the same list with that data decrypted
by the audit service when the bundle was made (`[erased]` where the customer was erased): it is
the service's statement, not covered by the hash chain.
"""

_README_CHAIN = """## 5. The audit hash chain and its signed checkpoints

Audit records form one hash chain per tenant. `chain/proof.json` holds, for every record of this
invoice, each position from it up to the first signed checkpoint at or after it: `seq`, `prev`
(the hash of the position before), `hash`, and `record` (the canonical JSON that was hashed;
`raw` inside it is the event as received). The rule is

    hash = sha256( prev as 64 ASCII hex characters || record as UTF-8 bytes )

and each position's `prev` is the `hash` of the one before. Positions removed by retention appear
with `removed: true` and their hash; the retention checkpoint that removed them signs a digest
`sha256("seq:hash" lines joined by "\\n")` over its `members`. To recompute by hand:

```python
import hashlib, json
proof = json.load(open("chain/proof.json"))
for p in proof["positions"]:
    if "record" in p:
        assert hashlib.sha256(p["prev"].encode() + p["record"].encode()).hexdigest() == p["hash"], p["seq"]
```

A checkpoint signs `{kind, tenant_id, seq, hash, key_id, at}` (its `payload`, canonical JSON)
with the audit service's Ed25519 key, which never reaches the database. Check that the public key
is the one the operator published (`key_id` = first 16 hex digits of the SHA-256 of the raw 32-byte
key; `openssl pkey -pubin -in chain/public-keys/<key_id>.pem -outform DER | tail -c 32 | sha256sum`),
then verify each signature (`Signature Verified Successfully`):

"""

_README_LIMITS = """## 6. What this proves, and what it does not

* The document's bytes are the ones whose SHA-256 the renderer recorded when it was produced, and
  (with a timestamp) that they existed at the TSA's time.
* The events are the records the audit service chained when it received them; a signed checkpoint
  fixes every position up to it, so a record changed, removed or reordered afterwards fails.
* It does not prove what the recipient's server did after accepting a message beyond what the
  provider reported: a successful email delivery records the SMTP `Message-ID` the relay accepted,
  not the relay's full response line; an SMS status callback is recorded as its status and error
  code (`detail`, `code`), not as the provider's raw HTTP body.
* It proves the records it includes. That no other record of this invoice exists is shown only
  inside the proven segments (the verifier checks it there); `GET /v1/verify` and the chain export
  check the whole chain.
* Trust anchors come from outside the bundle: the TSA's root certificate, and the audit public key
  as published by the operator. The copies inside the bundle are for convenience.
"""
