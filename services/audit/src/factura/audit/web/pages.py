"""The compliance page under ``/ui/``: sign in with an API key, search, open a timeline, download an
export, see whether the tenant's chain verifies. Server-rendered Jinja2 and a little htmx.

It reads through the same :class:`AuditQueries`, cursors, exports, verification and access hook
as the JSON API, so the page shows what the API would answer, its cursors are the API's (same key,
same scopes), and every page view is an access record like every API call. Its routes stay out of
the OpenAPI schema, which documents the JSON API only.

Every value reaches HTML through Jinja2's autoescaping (invoice ids, reasons and customer ids come
from ERPs and providers); the Content-Security-Policy allows this origin's own script and style
only, so nothing inline runs even if a value ever slipped through; htmx's configuration (no eval,
no inline indicator style, no history snapshots of pages with personal data in localStorage) is a
``<meta>`` tag.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from factura.audit.api import EXPORT_BATCH, READ_ROLES, AccessHook, VerifyChain
from factura.audit.exports import csv_chunks, ndjson_chunks
from factura.audit.queries import AuditQueries, CursorError, Cursors, RecordFilter, scope_of
from factura.audit.store import AuditDb
from factura.audit.web import forms
from factura.audit.web.session import forget, has_key, posted_key, remember, same_origin, signed_in
from factura.common.apikeys import Principal
from factura.common.apikeys.http import Verifier
from factura.common.envelope import TENANT_PATTERN
from factura.common.mongo import Document

PREFIX: Final = "/ui"
DEFAULT_PAGE_SIZE: Final = 50
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
PAGE_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # not "no-referrer": with it, browsers send `Origin: null` on our own POSTs (see session.same_origin)
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # pages hold customer ids and outcomes
    "Vary": "Cookie, HX-Request",
}
#: Vendored files, served with a year's cache: their URLs carry a digest of their content.
ASSETS: Final = {
    "htmx.min.js": "text/javascript; charset=utf-8",
    "audit.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_INVOICE: Final = re.compile(r"[^\x00-\x1F\x7F]{1,200}")


class _Stop(Exception):
    """Raised by a page's checks: answer with ``response`` now (a redirect, a 400/403/404 page)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def router(
    db: AuditDb,
    *,
    keys: Verifier,
    cursor_key: bytes,
    on_access: AccessHook,
    verify: VerifyChain,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> APIRouter:
    """The ``/ui`` routes; ``keys`` is the :class:`ApiKeyStore` the API authenticates with, and
    ``cursor_key``, ``on_access`` and ``verify`` are the API router's."""
    assets = _Assets()
    pages = _Pages(
        queries=AuditQueries(db.records),
        cursors=Cursors(cursor_key),
        keys=keys,
        verify=verify,
        page_size=page_size,
        env=_environment(assets),
    )
    ui = APIRouter(prefix=PREFIX, include_in_schema=False, route_class=_recorded(on_access))
    ui.add_api_route("/", pages.home, methods=["GET"])
    ui.add_api_route("/sign-in", pages.sign_in_form, methods=["GET"])
    ui.add_api_route("/sign-in", pages.sign_in, methods=["POST"])
    ui.add_api_route("/sign-out", pages.sign_out, methods=["POST"])
    ui.add_api_route("/search", pages.search, methods=["GET"])
    ui.add_api_route("/timeline", pages.timeline, methods=["GET"])
    ui.add_api_route("/chain", pages.chain, methods=["GET"])
    ui.add_api_route("/export/records.csv", pages.export_csv, methods=["GET"])
    ui.add_api_route("/export/records.ndjson", pages.export_ndjson, methods=["GET"])
    ui.add_api_route("/static/{name}", assets.serve, methods=["GET"], route_class_override=APIRoute)
    return ui


def _recorded(on_access: AccessHook) -> type[APIRoute]:
    """Pages answer :class:`_Stop` with its response, carry the security headers, and every view is
    handed to ``on_access`` (the API's access hook) before it is sent."""

    class PageRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handle = super().get_route_handler()

            async def recorded(request: Request) -> Response:
                try:
                    response = await handle(request)
                except _Stop as stop:
                    response = stop.response
                except Exception:
                    await on_access(_principal(request), request, 500)
                    raise
                response.headers.update(PAGE_HEADERS)
                await on_access(_principal(request), request, response.status_code)
                return response

            return recorded

    return PageRoute


def _principal(request: Request) -> Principal | None:
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal


class _Assets:
    def __init__(self) -> None:
        folder = resources.files(__package__) / "static"
        self.files = {name: (folder / name).read_bytes() for name in ASSETS}
        self.digest = hashlib.sha256(b"".join(self.files.values())).hexdigest()[:12]

    def url(self, name: str) -> str:
        return f"{PREFIX}/static/{name}?v={self.digest}"

    async def serve(self, name: str) -> Response:
        if name not in self.files:
            return Response(status_code=404, headers={"X-Content-Type-Options": "nosniff"})
        headers = {"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"}
        return Response(self.files[name], media_type=ASSETS[name], headers=headers)


def _utc(value: object) -> str:
    if not isinstance(value, datetime):
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def timeline_url(tenant_id: str, invoice_id: str, cursor: str | None = None) -> str:
    query = {"tenant_id": tenant_id, "invoice_id": invoice_id} | ({"cursor": cursor} if cursor else {})
    return f"{PREFIX}/timeline?{urlencode(query)}"


def _environment(assets: _Assets) -> Environment:
    env = Environment(
        loader=PackageLoader(__package__ or "factura.audit.web", "templates"),
        autoescape=select_autoescape(("html",)),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = _utc
    env.globals.update(static_url=assets.url, timeline_url=timeline_url, statuses=forms.STATUSES)
    return env


class _Pages:
    def __init__(
        self,
        *,
        queries: AuditQueries,
        cursors: Cursors,
        keys: Verifier,
        verify: VerifyChain,
        page_size: int,
        env: Environment,
    ) -> None:
        self._queries = queries
        self._cursors = cursors
        self._keys = keys
        self._verify = verify
        self._page_size = page_size
        self._env = env

    # --- rendering and checks ---

    def _render(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("principal", None)
        return HTMLResponse(self._env.get_template(name).render(context), status_code=status)

    def _error(self, status: int, message: str, principal: Principal | None = None) -> _Stop:
        return _Stop(self._render("error.html", status, message=message, principal=principal, code=status))

    async def _reader(self, request: Request) -> Principal:
        """The signed-in key holder, if their key may read the audit; else sign-in or a 403 page."""
        principal = await signed_in(request, self._keys)
        if principal is None:
            target = f"{PREFIX}/sign-in" + ("?ended=1" if has_key(request) else "")
            response: Response
            if request.headers.get("hx-request"):
                response = Response(status_code=401, headers={"HX-Redirect": target})
            else:
                response = RedirectResponse(target, 303)
            forget(response, request)
            raise _Stop(response)
        if not principal.has_role(*READ_ROLES):
            raise self._error(403, f"A key with role “{principal.role.value}” may not read the audit.", principal)
        return principal

    def _single(self, request: Request, name: str) -> str | None:
        values = request.query_params.getlist(name)
        if len(values) > 1:
            raise self._error(400, f"“{name}” was given {len(values)} times; give it once.")
        return (values[0].strip() or None) if values else None

    def _tenant(self, request: Request, principal: Principal) -> str | None:
        """The tenant asked about, checked against the key's scope; ``None`` when none was named."""
        tenant = self._single(request, "tenant_id")
        if tenant is None:
            return None
        if not re.fullmatch(TENANT_PATTERN, tenant):
            raise self._error(400, "“tenant_id” is not a tenant id.", principal)
        if not principal.may_read(tenant):
            raise self._error(403, f"Tenant “{tenant}” is outside this API key's scope.", principal)
        return tenant

    def _required_tenant(self, request: Request, principal: Principal) -> str:
        tenant = self._tenant(request, principal)
        if tenant is None:
            raise self._error(400, "“tenant_id” is required.", principal)
        return tenant

    def _seq(self, token: str | None, tenant: str, scope: str, principal: Principal) -> int | None:
        if token is None:
            return None
        try:
            position = self._cursors.decode(token, tenant, scope)
        except CursorError as e:
            raise self._error(400, f"This page link is not valid ({e}); start again.", principal) from e
        if not isinstance(position, int):
            raise self._error(400, "This page link is not valid; start again.", principal)
        return position

    def _next(self, docs: list[Document], tenant: str, scope: str) -> str | None:
        """The cursor after a page when the query found one record more than the page."""
        if len(docs) <= self._page_size:
            return None
        return self._cursors.encode(tenant, scope, int(docs[self._page_size - 1]["seq"]))

    @staticmethod
    def _start(principal: Principal) -> str:
        if principal.all_tenants:
            return f"{PREFIX}/search"
        return f"{PREFIX}/search?{urlencode({'tenant_id': principal.tenants[0]})}"

    # --- pages ---

    async def home(self, request: Request) -> Response:
        return RedirectResponse(self._start(await self._reader(request)), 303)

    async def sign_in_form(self, request: Request) -> Response:
        ended = request.query_params.get("ended") == "1"
        return self._render("sign_in.html", error="Your key is no longer valid; sign in again." if ended else None)

    async def sign_in(self, request: Request) -> Response:
        if not same_origin(request):
            raise self._error(403, "Sign-in from another site's page is refused.")
        key = await posted_key(request)
        principal = await self._keys.verify(key) if key else None
        if key is None or principal is None:
            return self._render("sign_in.html", 401, error="That API key is not valid (mistyped, unknown or revoked).")
        request.state.principal = principal
        if not principal.has_role(*READ_ROLES):
            message = f"A key with role “{principal.role.value}” may not read the audit."
            return self._render("sign_in.html", 403, error=message)
        response = RedirectResponse(self._start(principal), 303)
        remember(response, request, key)
        return response

    async def sign_out(self, request: Request) -> Response:
        if not same_origin(request):
            raise self._error(403, "Sign-out from another site's page is refused.")
        response = RedirectResponse(f"{PREFIX}/sign-in", 303)
        forget(response, request)
        return response

    async def search(self, request: Request) -> Response:
        principal = await self._reader(request)
        tenant = self._tenant(request, principal)
        if tenant is None:
            if not principal.all_tenants:  # name the tenant in the URL, so the view is in its chain
                return RedirectResponse(self._start(principal), 303)
            return self._render("search.html", principal=principal, tenant=None, typed={}, errors={}, results=None)
        pairs = [(k, v) for k, v in request.query_params.multi_items() if k != "tenant_id"]
        parsed = forms.parse(pairs, tenant)
        context: dict[str, Any] = {
            "principal": principal,
            "tenant": tenant,
            "typed": parsed.typed,
            "errors": parsed.errors,
        }
        if parsed.search is None:
            return self._render("search.html", 400, **context, results=None)
        where = parsed.search.record_filter()
        scope = where.scope("records")  # the API's scope: a page's cursor works on /v1/records too
        before = self._seq(parsed.cursor, tenant, scope, principal)
        docs = await self._queries.search(where, before, self._page_size + 1)
        cursor = self._next(docs, tenant, scope)
        results = {
            "rows": docs[: self._page_size],
            "more": f"{PREFIX}/search?{parsed.search.query(cursor=cursor)}" if cursor else None,
            "csv": f"{PREFIX}/export/records.csv?{parsed.search.query()}",
            "ndjson": f"{PREFIX}/export/records.ndjson?{parsed.search.query()}",
        }
        if parsed.cursor and request.headers.get("hx-request"):
            return self._render("_rows.html", **context, results=results)
        return self._render("search.html", **context, results=results)

    async def timeline(self, request: Request) -> Response:
        principal = await self._reader(request)
        tenant = self._required_tenant(request, principal)
        invoice = self._single(request, "invoice_id")
        if invoice is None or not _INVOICE.fullmatch(invoice):
            raise self._error(400, "“invoice_id” must be 1 to 200 characters on one line.", principal)
        scope = scope_of("timeline", invoice_id=invoice)  # the API's scope, as for search
        after = self._seq(self._single(request, "cursor"), tenant, scope, principal)
        docs = await self._queries.timeline(tenant, invoice, after or 0, self._page_size + 1)
        if not docs and after is None:
            raise self._error(404, f"Tenant “{tenant}” has no record of invoice “{invoice}”.", principal)
        cursor = self._next(docs, tenant, scope)
        context: dict[str, Any] = {
            "principal": principal,
            "tenant": tenant,
            "invoice_id": invoice,
            "entries": docs[: self._page_size],
            "more": timeline_url(tenant, invoice, cursor) if cursor else None,
        }
        if after is not None and request.headers.get("hx-request"):
            return self._render("_entries.html", **context)
        return self._render("timeline.html", **context)

    async def chain(self, request: Request) -> Response:
        """The chain's verification; a fragment for htmx (the search page loads it after itself)."""
        principal = await self._reader(request)
        tenant = self._required_tenant(request, principal)
        result = await self._verify(tenant)
        template = "_chain.html" if request.headers.get("hx-request") else "chain.html"
        return self._render(template, principal=principal, tenant=tenant, result=result)

    async def export_csv(self, request: Request) -> Response:
        where = await self._export_filter(request)
        return StreamingResponse(
            csv_chunks(self._queries.stream(where, EXPORT_BATCH)),
            media_type="text/csv",
            headers=_attachment(where.tenant_id, "csv"),
        )

    async def export_ndjson(self, request: Request) -> Response:
        where = await self._export_filter(request)
        return StreamingResponse(
            ndjson_chunks(self._queries.stream(where, EXPORT_BATCH)),
            media_type="application/x-ndjson",
            headers=_attachment(where.tenant_id, "ndjson"),
        )

    async def _export_filter(self, request: Request) -> RecordFilter:
        principal = await self._reader(request)
        tenant = self._required_tenant(request, principal)
        parsed = forms.parse([(k, v) for k, v in request.query_params.multi_items() if k != "tenant_id"], tenant)
        if parsed.search is None:
            problems = "; ".join(f"{name}: {message}" for name, message in parsed.errors.items())
            raise self._error(400, f"The export's filters are not valid ({problems}).", principal)
        return parsed.search.record_filter()


def _attachment(tenant: str, extension: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="audit-records-{tenant}.{extension}"'}
