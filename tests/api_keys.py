"""API keys for tests of the HTTP APIs: each caller's request headers filled with a real key."""

from __future__ import annotations

from collections.abc import Iterable

from factura.common.apikeys import ApiKeyStore, Role

#: A caller: the headers dict its requests send, the role and the tenant scope of its key.
Caller = tuple[dict[str, str], Role, list[str]]


async def grant(keys: ApiKeyStore, callers: Iterable[Caller]) -> None:
    """Create a key per caller in ``keys`` and put it in the caller's ``Authorization`` header."""
    for headers, role, tenants in callers:
        plaintext, _ = await keys.create(role, tenants, "test key", "test")
        headers["Authorization"] = f"Bearer {plaintext}"
