"""The small HTML pages a customer sees when a link cannot take them to their invoice.

A customer who taps an old SMS link deserves better than a JSON error: the page says, in their
language, what happened and whom to ask for a new link. Only an *authentic* expired link names
the seller (its claims are signed); a forged or unknown one gets a generic page that reveals
nothing. API clients that ask for JSON (``Accept: application/json``) keep getting JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from jinja2 import PackageLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from factura.common.events import LOCALES
from factura.common.tenants import TenantConfig

PageKind = Literal["expired", "invalid", "unavailable"]
#: No scripts, no fetches, no framing; links on the page may still be followed.
HEADERS = {
    "Cache-Control": "private, no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
}
#: Longer Accept-Language headers are cut, not parsed: no client needs more.
MAX_ACCEPT_LANGUAGE = 512

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "expired_title": "This link has expired",
        "expired_body": "For your security, links to invoices only work for a limited time.",
        "expired_ask": "To receive a new link, please contact",
        "invalid_title": "This link is not valid",
        "invalid_body": "Please check that you opened the complete link from the message.",
        "unavailable_title": "This document is not available right now",
        "unavailable_body": "Please try again in a few minutes.",
        "help_ask": "If you need help, please contact",
        "sender": "the sender of the invoice",
    },
    "es": {
        "expired_title": "Este enlace ha caducado",
        "expired_body": "Por su seguridad, los enlaces a facturas solo funcionan durante un tiempo limitado.",
        "expired_ask": "Para recibir un enlace nuevo, contacte con",
        "invalid_title": "Este enlace no es válido",
        "invalid_body": "Compruebe que ha abierto el enlace completo del mensaje.",
        "unavailable_title": "Este documento no está disponible ahora mismo",
        "unavailable_body": "Inténtelo de nuevo dentro de unos minutos.",
        "help_ask": "Si necesita ayuda, contacte con",
        "sender": "el emisor de la factura",
    },
    "pt": {
        "expired_title": "Este link expirou",
        "expired_body": "Por segurança, os links para faturas só funcionam durante um período limitado.",
        "expired_ask": "Para receber um novo link, contacte",
        "invalid_title": "Este link não é válido",
        "invalid_body": "Verifique se abriu o link completo da mensagem.",
        "unavailable_title": "Este documento não está disponível de momento",
        "unavailable_body": "Tente novamente dentro de alguns minutos.",
        "help_ask": "Se precisar de ajuda, contacte",
        "sender": "o emissor da fatura",
    },
    "ro": {
        "expired_title": "Acest link a expirat",
        "expired_body": "Pentru siguranța dumneavoastră, linkurile către facturi expiră după o perioadă limitată.",
        "expired_ask": "Pentru a primi un link nou, contactați",
        "invalid_title": "Acest link nu este valid",
        "invalid_body": "Verificați dacă ați deschis linkul complet din mesaj.",
        "unavailable_title": "Acest document nu este disponibil momentan",
        "unavailable_body": "Încercați din nou peste câteva minute.",
        "help_ask": "Dacă aveți nevoie de ajutor, contactați",
        "sender": "emitentul facturii",
    },
}


@dataclass(frozen=True)
class Contact:
    """Whom the customer should ask: the tenant as its own configuration names it (never ERP text)."""

    name: str
    email: str | None


def contact_of(tenant: TenantConfig) -> Contact | None:
    name = tenant.display_name or (tenant.seller.legal_name if tenant.seller else None)
    if name is None:
        return None
    email = (tenant.sender.reply_to if tenant.sender else None) or (tenant.seller.email if tenant.seller else None)
    return Contact(name, email)


def negotiate(accept_language: str | None) -> str:
    """The product language the browser prefers most (RFC 9110 q-values), else ``en``."""
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate((accept_language or "")[:MAX_ACCEPT_LANGUAGE].split(",")):
        tag, _, params = item.partition(";")
        quality = 1.0
        name, _, value = params.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value)
            except ValueError:
                quality = 0.0
        language = tag.strip().lower().split("-")[0]
        if language in LOCALES and quality > 0:
            ranked.append((-quality, position, language))
    return min(ranked)[2] if ranked else "en"


def wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


class LinkPages:
    """Renders the pages; one instance per process (the template is parsed once)."""

    def __init__(self) -> None:
        self._env = SandboxedEnvironment(
            loader=PackageLoader("factura.renderer", "templates/link_pages"),
            autoescape=True,
            undefined=StrictUndefined,
        )

    def render(self, kind: PageKind, locale: str, contact: Contact | None = None) -> str:
        texts = TEXTS.get(locale, TEXTS["en"])
        return self._env.get_template("page.html.j2").render(
            locale=locale if locale in TEXTS else "en",
            title=texts[f"{kind}_title"],
            body=texts[f"{kind}_body"],
            ask=texts["expired_ask" if kind == "expired" else "help_ask"],
            sender=texts["sender"],
            contact=contact,
        )

    def respond(
        self,
        request: Request,
        kind: PageKind,
        status: int,
        json_body: dict[str, str],
        *,
        locale: str | None = None,
        contact: Contact | None = None,
    ) -> Response:
        """The page in ``locale`` (else the browser's language), or ``json_body`` for an API client."""
        if wants_json(request):
            return JSONResponse(json_body, status, headers=HEADERS)
        language = locale if locale in TEXTS else negotiate(request.headers.get("accept-language"))
        return HTMLResponse(self.render(kind, language, contact), status, headers=HEADERS)
