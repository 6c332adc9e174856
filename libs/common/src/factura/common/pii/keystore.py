"""Tenant key encryption keys (KEKs): what wraps each customer's data key, and where it lives.

A :class:`KeyStore` only ever sees data keys to wrap or unwrap; the KEK itself never leaves it. Three
shapes, one protocol:

- :class:`FileKeyStore`: a directory (a mounted Kubernetes secret) with one file per tenant,
  ``<tenant>.kek``, lines ``<kek id> <base64 of 32 random bytes>``; the **last** line wraps new
  data keys, every line unwraps (rotation: append a line, keep the old ones until every data key
  was rewrapped or erased). ``python -m factura.common.pii new-kek`` prints a line.
- :class:`SecretKeyStore`: a KEK per tenant derived (HKDF-SHA256) from one secret; for a
  development stack, or where one secret per deployment is all there is.
- :class:`KmsKeyStore`: a KMS (AWS KMS ``Encrypt``/``Decrypt`` with an ``EncryptionContext``,
  Google Cloud KMS with ``additionalAuthenticatedData``, Vault transit with ``context``) behind
  the two-call :class:`KmsClient` protocol; the KEK stays in the KMS. No client ships here (no
  network from this repository): an adapter of a few lines maps a vendor SDK onto ``KmsClient``.

Every wrap binds the data key to its context (tenant, customer, key id) as authenticated data,
so a wrapped key copied to another customer's document does not unwrap.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from factura.common.envelope import TENANT_PATTERN
from factura.common.errors import DependencyDown

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12
_KEK_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class KeyStoreError(DependencyDown):
    """The tenant's KEK is missing or cannot unwrap: a configuration problem or a KMS outage, never
    bad input. Like an outage, work pauses and retries; nothing is stored in the clear instead."""

    def __init__(self, detail: str) -> None:
        super().__init__("pii-keystore", detail)


@dataclass(frozen=True)
class Wrapped:
    """A data key as stored: which KEK wrapped it and the wrapped bytes."""

    kek_id: str
    blob: bytes


class KeyStore(Protocol):
    """Wraps and unwraps data keys with a tenant's KEK. ``context`` is authenticated, not secret."""

    async def wrap(self, tenant_id: str, data_key: bytes, context: Mapping[str, str]) -> Wrapped: ...

    async def unwrap(self, tenant_id: str, wrapped: Wrapped, context: Mapping[str, str]) -> bytes: ...


def _aad(tenant_id: str, context: Mapping[str, str]) -> bytes:
    parts = [f"{k}={context[k]}" for k in sorted(context)]
    return "\x00".join(["factura.pii.kek.v1", tenant_id, *parts]).encode()


def _wrap(kek: bytes, tenant_id: str, data_key: bytes, context: Mapping[str, str]) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(kek).encrypt(nonce, data_key, _aad(tenant_id, context))


def _unwrap(kek: bytes, tenant_id: str, blob: bytes, context: Mapping[str, str]) -> bytes:
    try:
        return AESGCM(kek).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(tenant_id, context))
    except InvalidTag as e:
        raise KeyStoreError(f"the data key of tenant {tenant_id!r} does not unwrap with its KEK") from e


class _LocalKeys:
    """A store whose KEKs are local bytes: ``keks(tenant)`` gives them, the current one last."""

    def __init__(self, keks: Callable[[str], list[tuple[str, bytes]]]) -> None:
        self._keks = keks

    async def wrap(self, tenant_id: str, data_key: bytes, context: Mapping[str, str]) -> Wrapped:
        kek_id, kek = self._keks(tenant_id)[-1]
        return Wrapped(kek_id, _wrap(kek, tenant_id, data_key, context))

    async def unwrap(self, tenant_id: str, wrapped: Wrapped, context: Mapping[str, str]) -> bytes:
        for kek_id, kek in self._keks(tenant_id):
            if kek_id == wrapped.kek_id:
                return _unwrap(kek, tenant_id, wrapped.blob, context)
        raise KeyStoreError(f"tenant {tenant_id!r} has no KEK {wrapped.kek_id!r} (retired too early?)")


class FileKeyStore(_LocalKeys):
    """KEKs from ``<directory>/<tenant>.kek`` (see the module docstring), read once per tenant."""

    def __init__(self, directory: Path) -> None:
        super().__init__(self._load)
        self._directory = directory
        self._loaded: dict[str, list[tuple[str, bytes]]] = {}

    def _load(self, tenant_id: str) -> list[tuple[str, bytes]]:
        if tenant_id not in self._loaded:
            if not re.fullmatch(TENANT_PATTERN, tenant_id):
                raise KeyStoreError(f"not a tenant id: {tenant_id[:100]!r}")
            path = self._directory / f"{tenant_id}.kek"
            try:
                text = path.read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as e:
                raise KeyStoreError(
                    f"no KEK file for tenant {tenant_id!r} ({path.name}): {e.__class__.__name__}"
                ) from e
            self._loaded[tenant_id] = parse_keks(text, path.name)
        return self._loaded[tenant_id]


def parse_keks(text: str, where: str) -> list[tuple[str, bytes]]:
    """``<kek id> <base64 key>`` lines (``#`` comments and blank lines skipped), in file order."""
    keks: list[tuple[str, bytes]] = []
    for number, text_line in enumerate(text.splitlines(), 1):
        line = text_line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            key = base64.b64decode(parts[1], validate=True) if len(parts) == 2 else b""
        except binascii.Error:
            key = b""
        if not _KEK_ID.fullmatch(parts[0]) or len(key) != KEY_BYTES:
            raise KeyStoreError(f"{where} line {number}: expected '<kek id> <base64 of {KEY_BYTES} bytes>'")
        keks.append((parts[0], key))
    if not keks:
        raise KeyStoreError(f"{where} holds no KEK")
    return keks


def new_kek_line(kek_id: str) -> str:
    """A fresh KEK as a line for a ``<tenant>.kek`` file."""
    if not _KEK_ID.fullmatch(kek_id):
        raise ValueError("a KEK id is 1 to 64 of A-Z a-z 0-9 . _ -")
    return f"{kek_id} {base64.b64encode(os.urandom(KEY_BYTES)).decode()}"


class SecretKeyStore(_LocalKeys):
    """One KEK per tenant, HKDF-SHA256 of ``secret`` (at least 32 bytes) and the tenant id.

    Whoever holds the secret holds every tenant's KEK, and losing it loses every customer's contact
    data: prefer :class:`FileKeyStore` or a KMS in production.
    """

    def __init__(self, secret: bytes, kek_id: str = "derived-1") -> None:
        if len(secret) < KEY_BYTES:
            raise ValueError(f"the secret must have at least {KEY_BYTES} bytes")
        super().__init__(lambda tenant: [(kek_id, self._derive(tenant))])
        self._secret = secret
        self._kek_id = kek_id

    def _derive(self, tenant_id: str) -> bytes:
        info = f"factura.pii.kek\x00{self._kek_id}\x00{tenant_id}".encode()
        return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(self._secret)


class NoKeyStore:
    """Wraps and unwraps nothing: for code that only creates indexes, or erases (deleting a key
    needs no KEK), e.g. building the API's OpenAPI schema. ``reason`` is what every call raises."""

    def __init__(self, reason: str = "no key store is configured here") -> None:
        self._reason = reason

    async def wrap(self, tenant_id: str, data_key: bytes, context: Mapping[str, str]) -> Wrapped:
        raise KeyStoreError(self._reason)

    async def unwrap(self, tenant_id: str, wrapped: Wrapped, context: Mapping[str, str]) -> bytes:
        raise KeyStoreError(self._reason)


class KmsClient(Protocol):
    """The two calls every KMS has. ``key`` names the KEK in the KMS (an ARN, a resource name);
    ``context`` must be bound as authenticated data and required again on decrypt."""

    async def encrypt(self, key: str, plaintext: bytes, context: Mapping[str, str]) -> bytes: ...

    async def decrypt(self, key: str, ciphertext: bytes, context: Mapping[str, str]) -> bytes: ...


class KmsKeyStore:
    """Data keys wrapped by a KMS; ``key_for`` maps a tenant to its KEK's name in the KMS.

    The KMS's errors should reach the caller as :class:`KeyStoreError` (an outage: retry), which is
    the adapter's job, since only it knows its SDK's exceptions.
    """

    def __init__(self, client: KmsClient, key_for: Callable[[str], str]) -> None:
        self._client = client
        self._key_for = key_for

    async def wrap(self, tenant_id: str, data_key: bytes, context: Mapping[str, str]) -> Wrapped:
        key = self._key_for(tenant_id)
        blob = await self._client.encrypt(key, data_key, {"tenant_id": tenant_id, **context})
        return Wrapped(key, blob)

    async def unwrap(self, tenant_id: str, wrapped: Wrapped, context: Mapping[str, str]) -> bytes:
        return await self._client.decrypt(wrapped.kek_id, wrapped.blob, {"tenant_id": tenant_id, **context})
