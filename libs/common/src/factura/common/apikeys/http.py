"""API keys in FastAPI: who is calling (401 if nobody we know), and may they (403 if not).

A router authenticates with one dependency and checks with two helpers::

    auth = authenticator(store)

    @api.get("/v1/things", responses=AUTH_RESPONSES)
    async def things(principal: Annotated[Principal, Depends(auth)], tenant_id: str) -> ...:
        require_role(principal, Role.COMPLIANCE_READER, Role.ADMIN)
        require_tenant(principal, tenant_id)

A key is sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; both schemes appear in
the OpenAPI schema, and ``AUTH_RESPONSES`` documents the 401 and 403 answers. Bodies have
FastAPI's shape (``{"detail": ...}``) and never repeat the key. A record the caller's tenant scope
does not cover but whose id it named is not this module's concern: answer it with the same 404 as
a missing one, so ids cannot be probed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final, Protocol

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from factura.common.apikeys.keys import Principal, Role
from factura.common.errors import ErrorKind, classify
from factura.common.metrics import counter

API_KEY_HEADER = "X-API-Key"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_bearer = HTTPBearer(
    scheme_name="ApiKeyBearer",
    description="An API key as a bearer token: `Authorization: Bearer fct_…`",
    auto_error=False,
)
_header = APIKeyHeader(
    name=API_KEY_HEADER, scheme_name="ApiKeyHeader", description="The same API key in its own header", auto_error=False
)
log = logging.getLogger(__name__)
REJECTIONS = counter("api_key_rejections_total", "Requests refused by API-key checks.", ("reason",))


class ErrorBody(BaseModel):
    detail: str


#: Put in a router's or route's ``responses=`` so the schema documents the refusals.
AUTH_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    401: {
        "model": ErrorBody,
        "description": "No API key, or one that is malformed, unknown or revoked",
        "headers": {"WWW-Authenticate": {"description": "Always `Bearer`", "schema": {"type": "string"}}},
    },
    403: {"model": ErrorBody, "description": "The API key's role or tenant scope does not cover this request"},
    503: {
        "model": ErrorBody,
        "description": "The key store (or another dependency) is unreachable: retry later",
        "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}},
    },
}
#: How long a caller is asked to wait while the key store is unreachable.
RETRY_AFTER_S = 5


class Verifier(Protocol):
    async def verify(self, presented: str) -> Principal | None: ...


class Authenticate:
    """FastAPI dependency: the calling :class:`Principal`, also left in ``request.state.principal``
    for whatever records who asked what."""

    def __init__(self, verifier: Verifier) -> None:
        self._verifier = verifier

    async def __call__(
        self,
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        header: Annotated[str | None, Depends(_header)],
    ) -> Principal:
        presented = {c for c in (bearer.credentials if bearer else None, header) if c}
        if not presented:
            REJECTIONS.labels("missing").inc()
            raise HTTPException(
                401,
                detail=f"an API key is required: Authorization: Bearer <key> or {API_KEY_HEADER}",
                headers=_CHALLENGE,
            )
        if len(presented) > 1:
            REJECTIONS.labels("conflicting").inc()
            raise HTTPException(401, detail="two different API keys were sent; send one", headers=_CHALLENGE)
        try:
            principal = await self._verifier.verify(presented.pop())
        except Exception as e:
            if classify(e)[0] is not ErrorKind.TRANSIENT:
                raise
            # The key store is down: not the caller's fault, and no reason to call the key invalid.
            log.warning("API key not verified: key store unavailable", extra={"error": repr(e)[:300]})
            raise HTTPException(
                503, detail="API keys cannot be checked right now; retry", headers={"Retry-After": str(RETRY_AFTER_S)}
            ) from e
        if principal is None:
            REJECTIONS.labels("invalid").inc()
            raise HTTPException(401, detail="invalid or revoked API key", headers=_CHALLENGE)
        request.state.principal = principal
        return principal


def authenticator(verifier: Verifier) -> Authenticate:
    """The dependency for an app whose keys live in ``verifier`` (an :class:`ApiKeyStore`)."""
    return Authenticate(verifier)


def with_role(auth: Authenticate, *roles: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency: the caller ``auth`` found, 403 unless its key has one of ``roles``.

    The parameter's annotation is set as an object, not written in the signature: it names this
    call's ``auth``, which a string annotation (this module's ``from __future__``) cannot reach.
    """

    async def caller(principal: Principal) -> Principal:
        require_role(principal, *roles)
        return principal

    caller.__annotations__["principal"] = Annotated[Principal, Depends(auth)]
    return caller


def require_role(principal: Principal, *roles: str) -> None:
    """403 unless the key has one of ``roles`` (:class:`Role` members or their names)."""
    if not principal.has_role(*roles):
        REJECTIONS.labels("role").inc()
        wanted = ", ".join(Role(r).value for r in roles)
        raise HTTPException(
            403, detail=f"an API key with role {principal.role.value!r} may not do this (needs: {wanted})"
        )


def require_tenant(principal: Principal, tenant_id: str) -> None:
    """403 unless ``tenant_id`` is in the key's tenant scope."""
    if not principal.may_read(tenant_id):
        REJECTIONS.labels("tenant").inc()
        raise HTTPException(403, detail=f"tenant {tenant_id!r} is outside this API key's scope")
