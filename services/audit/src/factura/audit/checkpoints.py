"""Signed checkpoints: an Ed25519 signature over a chain's head, so its past cannot be rewritten.

The hash chain alone shows that records were changed, removed or reordered, but someone who can
write to MongoDB could rebuild a whole consistent chain. A checkpoint signs ``(tenant, seq,
hash)`` with a key MongoDB never sees (a secret file mounted into the audit pod): every record
up to ``seq`` is then fixed, and a chain that ends before a signed ``seq`` was truncated.

Head checkpoints are written every ``interval_s`` for each chain this process extended, and
once more on shutdown. Retention checkpoints sign what the retention job removed
(:mod:`factura.audit.retention`). Checkpoints are only ever inserted; their ``_id`` makes two
replicas signing the same head one document.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pymongo.errors import DuplicateKeyError, PyMongoError

from factura.audit.chain import ChainWriter, Head
from factura.audit.records import canonical
from factura.audit.store import AuditDb
from factura.common.envelope import utcnow
from factura.common.metrics import counter

log = logging.getLogger(__name__)
SIGNED = counter("audit_checkpoints_total", "Checkpoints signed.", ("kind",))


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the start of the sha256 of its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def generate_key(path: Path) -> None:
    """Write a new PKCS#8 PEM Ed25519 private key readable by its owner only (devstack, first setup)."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=False)
    path.write_bytes(pem)


class Signer:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.key_id = key_id(self.public)

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
        return cls(key)

    def derived_secret(self, purpose: str) -> bytes:
        """A secret for another use (e.g. signing API cursors) derived from this key, never the key."""
        raw = self._private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return hashlib.sha256(raw + b"\x00factura-audit\x00" + purpose.encode()).digest()

    def checkpoint(self, tenant: str, head: Head, kind: Literal["head", "retention"], **extra: Any) -> dict[str, Any]:
        signed = {"kind": kind, "tenant_id": tenant, "seq": head.seq, "hash": head.hash, "key_id": self.key_id}
        payload = canonical(signed | {"at": utcnow()} | extra)
        return {
            "_id": f"{tenant}:{head.seq}:{kind}" + (f":{extra['digest'][:16]}" if "digest" in extra else ""),
            "tenant_id": tenant,
            "seq": head.seq,
            "hash": head.hash,
            "kind": kind,
            "key_id": self.key_id,
            "payload": payload,
            "signature": self._private.sign(payload.encode()).hex(),
        }


class Keyring:
    """The public keys checkpoints may be signed with: the current one and every retired one.

    Rotating the signing key must not break verification of what the old key signed, so each
    checkpoint names its ``key_id`` and is checked against that key; a checkpoint naming a key
    not in the ring is invalid.
    """

    def __init__(self, current: Ed25519PublicKey, retired: Sequence[Ed25519PublicKey] = ()) -> None:
        self.current = current
        self.keys = {key_id(k): k for k in (*retired, current)}

    @classmethod
    def of(cls, keys: Keyring | Ed25519PublicKey) -> Keyring:
        return keys if isinstance(keys, Keyring) else cls(keys)

    @classmethod
    def from_files(cls, current: Path, retired: Sequence[Path] = ()) -> Keyring:
        """From PEM files: ``current`` may hold the private key (the service) or only the public one."""
        return cls(_public(current), [_public(path) for path in retired])

    def valid(self, checkpoint: dict[str, Any]) -> bool:
        public = self.keys.get(str(checkpoint.get("key_id")))
        if public is None:
            return False
        try:
            public.verify(bytes.fromhex(checkpoint["signature"]), checkpoint["payload"].encode())
        except (InvalidSignature, ValueError, KeyError, TypeError):
            return False
        return True


def _public(path: Path) -> Ed25519PublicKey:
    data = path.read_bytes()
    key = (
        serialization.load_pem_private_key(data, password=None).public_key()
        if b"PRIVATE KEY" in data
        else serialization.load_pem_public_key(data)
    )
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


@dataclass
class Checkpointer:
    """Signs each chain head this process moved, every ``interval_s`` and when it stops."""

    db: AuditDb
    writer: ChainWriter
    signer: Signer
    interval_s: float = 60.0

    def __post_init__(self) -> None:
        self._signed: dict[str, int] = {}

    async def sign_heads(self) -> int:
        signed = 0
        for tenant, head in self.writer.heads().items():
            if self._signed.get(tenant) == head.seq:
                continue
            with contextlib.suppress(DuplicateKeyError):  # another replica signed the same head
                await self.db.checkpoints.insert_one(self.signer.checkpoint(tenant, head, "head"))
            self._signed[tenant] = head.seq
            SIGNED.labels(kind="head").inc()
            signed += 1
        return signed

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.interval_s)
            try:
                await self.sign_heads()
            except PyMongoError as e:  # MongoDB down: the next turn signs the then-current heads
                log.warning("checkpoints not written; retrying next interval", extra={"error": repr(e)[:300]})
