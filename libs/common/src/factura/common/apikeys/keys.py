"""What an API key is: its format, its hash, its roles and scope, and who holds it.

A key reads ``fct_<key_id>_<secret>``: the prefix makes a leaked key recognisable (secret scanners,
log filters), the key id (16 hex digits, also the MongoDB ``_id``) makes verification one indexed
read, and the secret (43 base62 characters, 256 bits from :mod:`secrets`) is what proves possession.

Only ``sha256(whole key)`` is stored. A slow password hash (bcrypt, argon2) exists to make guessing
low-entropy passwords expensive; a 256-bit random secret cannot be guessed however fast the hash,
so a slow hash would only cost CPU on every request. A server-side pepper (HMAC) was left out for
the same reason: it would protect nothing a 256-bit secret does not already protect, and it would
be one more secret to distribute to every service and to the CLI, whose rotation revokes every key.
Hashing the whole key rather than the secret alone binds the hash to its key id.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from factura.common.envelope import TENANT_PATTERN

KEY_PREFIX: Final = "fct"
#: The tenant list of a key that may act on every tenant; only an admin key may have it.
ALL_TENANTS: Final = "*"
MAX_LABEL_CHARS: Final = 200
_KEY_ID_BYTES = 8
_SECRET_CHARS = 43  # 43 x log2(62) = 256.03 bits
_BASE62 = string.digits + string.ascii_letters
_KEY = re.compile(rf"^{KEY_PREFIX}_([0-9a-f]{{{2 * _KEY_ID_BYTES}}})_[0-9A-Za-z]{{{_SECRET_CHARS}}}$")
_TENANT = re.compile(TENANT_PATTERN)
_HINT_CHARS = 4


class Role(StrEnum):
    """Every role a key may have, in one place: a new API adds its role here.

    Roles are not ranked: an endpoint names every role it admits (``require_role``), so adding a
    role never widens what an existing key may do.
    """

    COMPLIANCE_READER = "compliance-reader"
    ADMIN = "admin"
    INGEST = "ingest"


def new_key() -> tuple[str, str]:
    """A fresh ``(key_id, plaintext key)``."""
    key_id = secrets.token_hex(_KEY_ID_BYTES)
    secret = "".join(secrets.choice(_BASE62) for _ in range(_SECRET_CHARS))
    return key_id, f"{KEY_PREFIX}_{key_id}_{secret}"


def parse_key(presented: str) -> str | None:
    """The key id of a well-formed key, else ``None`` (so garbage never reaches MongoDB)."""
    match = _KEY.fullmatch(presented)
    return match.group(1) if match else None


def key_hash(plaintext: str) -> str:
    """What is stored for a key: sha256 of the whole key, hex."""
    return hashlib.sha256(plaintext.encode("ascii")).hexdigest()


def key_hint(plaintext: str) -> str:
    """How a key is shown once created: enough for its holder to tell keys apart, nothing to guess with."""
    key_id = parse_key(plaintext)
    return f"{KEY_PREFIX}_{key_id}_…{plaintext[-_HINT_CHARS:]}"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the verified key, its role and its tenant scope."""

    key_id: str
    role: Role
    tenants: tuple[str, ...]
    label: str

    @property
    def all_tenants(self) -> bool:
        return ALL_TENANTS in self.tenants

    def may_read(self, tenant_id: str) -> bool:
        """Whether ``tenant_id`` is in this key's scope (for any access its role allows)."""
        return self.all_tenants or tenant_id in self.tenants

    def has_role(self, *roles: str) -> bool:
        """Whether the key has one of ``roles`` (role names or :class:`Role`; a misspelt name raises
        ``ValueError`` rather than quietly refusing everyone)."""
        return self.role in {Role(r) for r in roles}


def _utc(value: datetime | None) -> datetime | None:
    # MongoDB-wire servers may return a `$set` datetime naive (nx-27017 does): it was stored as UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _check_text(value: str) -> str:
    # Labels and names are printed to terminals: no control characters (escape sequences).
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


Text = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_LABEL_CHARS), AfterValidator(_check_text)
]
_ACTOR: TypeAdapter[str] = TypeAdapter(Text)


def check_actor(by: str) -> str:
    """Who creates or revokes a key, as recorded: 1-200 printable characters."""
    try:
        return _ACTOR.validate_python(by)
    except ValidationError as error:
        raise ValueError(f"by: {error.errors()[0]['msg']}") from None


class KeySpec(BaseModel):
    """What a new key is for; errors name the field (``role``, ``tenants.0``, ``label``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    tenants: tuple[str, ...] = Field(min_length=1, max_length=1000)
    label: Text
    created_by: Text

    @field_validator("tenants")
    @classmethod
    def _tenants(cls, tenants: tuple[str, ...]) -> tuple[str, ...]:
        for tenant in tenants:
            if tenant != ALL_TENANTS and not _TENANT.match(tenant):
                raise ValueError(f"{tenant!r} is not a tenant id ({TENANT_PATTERN}) nor {ALL_TENANTS!r}")
        if ALL_TENANTS in tenants and len(tenants) > 1:
            raise ValueError(f"{ALL_TENANTS!r} (all tenants) cannot be combined with tenant ids")
        return tuple(dict.fromkeys(tenants))

    @model_validator(mode="after")
    def _all_tenants_only_for_admin(self) -> KeySpec:
        if ALL_TENANTS in self.tenants and self.role is not Role.ADMIN:
            raise ValueError(f"only an {Role.ADMIN.value} key may cover all tenants")
        return self


class KeyRecord(BaseModel):
    """A stored key as operators see it: everything but its hash."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    role: Role
    tenants: tuple[str, ...]
    label: str
    hint: str
    created_at: datetime
    created_by: str
    revoked_at: Annotated[datetime | None, AfterValidator(_utc)] = None
    revoked_by: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> KeyRecord:
        fields = {k: v for k, v in doc.items() if k in cls.model_fields}
        return cls(key_id=doc["_id"], **fields)

    def principal(self) -> Principal:
        return Principal(key_id=self.key_id, role=self.role, tenants=self.tenants, label=self.label)
