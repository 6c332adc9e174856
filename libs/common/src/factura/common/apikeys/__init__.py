"""API keys for every Factura HTTP API: one key format, one store, one set of roles, one check.

* :mod:`~factura.common.apikeys.keys`: the key format (``fct_<key_id>_<secret>``), its hash,
  :class:`Role`, :class:`Principal` (who is calling) and :class:`KeyRecord` (what operators see).
* :mod:`~factura.common.apikeys.store`: :class:`ApiKeyStore`, keys in MongoDB ``api_keys``,
  verified with a few seconds' in-process cache (so a revocation takes up to that long elsewhere).
* :mod:`~factura.common.apikeys.http`: the FastAPI dependency (401) and the role and tenant
  checks (403), ``with_role`` (a dependency for both), with ``AUTH_RESPONSES`` for the OpenAPI schema.
* :mod:`~factura.common.apikeys.cli`: ``keys create|revoke|list`` for a service's ``__main__``.
"""

from factura.common.apikeys.http import (
    AUTH_RESPONSES,
    Authenticate,
    authenticator,
    require_role,
    require_tenant,
    with_role,
)
from factura.common.apikeys.keys import ALL_TENANTS, KeyRecord, Principal, Role
from factura.common.apikeys.store import COLLECTION, ApiKeyStore

__all__ = [
    "ALL_TENANTS",
    "AUTH_RESPONSES",
    "COLLECTION",
    "ApiKeyStore",
    "Authenticate",
    "KeyRecord",
    "Principal",
    "Role",
    "authenticator",
    "require_role",
    "require_tenant",
    "with_role",
]
