"""Who is looking at the compliance page: the API key in a cookie, verified again on every request.

The page keeps no session of its own. The key an officer signed in with sits in an ``HttpOnly``
(no script can read it), ``SameSite=Strict`` (no other site's page sends it) cookie limited to
``/ui`` and to :data:`MAX_AGE_S`, and every request checks it with the same key store as the JSON
API, so a revoked key stops working on the next click (within the store's few-second cache).

Sign-in and sign-out are the only requests that change anything; they are POSTs, and a POST whose
``Origin`` names another site is refused, which also stops another site signing an officer in
with a key of its own.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qs, urlsplit

from fastapi import Request, Response

from factura.common.apikeys import Principal
from factura.common.apikeys.http import Verifier

COOKIE: Final = "factura_audit_key"
COOKIE_PATH: Final = "/ui"
MAX_AGE_S: Final = 30 * 60
#: A sign-in form holds one key (~64 characters): anything much larger is not our form.
MAX_FORM_BYTES: Final = 2048
FORM_TYPE: Final = "application/x-www-form-urlencoded"


#: Hosts a browser reaches over plain HTTP during development (the devstack): the only ones whose
#: cookie may lack ``Secure``.
LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})


def _secure(request: Request) -> bool:
    """``Secure`` unless the page is served over plain HTTP on loopback. Behind a TLS-terminating
    ingress the service sees ``http`` but the browser uses ``https``: the cookie must still be
    ``Secure`` there, so the scheme alone cannot decide."""
    return request.url.scheme == "https" or request.url.hostname not in LOOPBACK


def remember(response: Response, request: Request, key: str) -> None:
    response.set_cookie(
        COOKIE,
        key,
        max_age=MAX_AGE_S,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def forget(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=_secure(request))


def has_key(request: Request) -> bool:
    return bool(request.cookies.get(COOKIE))


async def signed_in(request: Request, keys: Verifier) -> Principal | None:
    """The key holder, or ``None`` (no cookie, or a key that is unknown, revoked or malformed).

    Like the API's authenticator, leaves the principal in ``request.state.principal`` for the
    access record."""
    key = request.cookies.get(COOKIE)
    principal = await keys.verify(key) if key else None
    if principal is not None:
        request.state.principal = principal
    return principal


def same_origin(request: Request) -> bool:
    """False when a browser says the request comes from a page of another origin.

    Browsers send ``Origin`` on every POST (``null`` from sandboxed or privacy-restricted
    contexts, refused too); a client without one is not a browser and has no cookie to abuse.
    """
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host", "")


async def posted_key(request: Request) -> str | None:
    """The ``key`` field of a sign-in form; ``None`` for anything that is not a small form with one."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != FORM_TYPE:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(body.decode("ascii"), max_num_fields=4)
    except (UnicodeDecodeError, ValueError):
        return None
    values = fields.get("key", [])
    return values[0].strip() if len(values) == 1 else None
