"""SMTP capture server: the local stand-in for the SMTP relay (or SES) the email-sender talks to.

Every accepted message lands in a Maildir so tests and the demo can read what was "sent". Some
recipient domains answer the way real relays do when things go wrong (permanent 550 for an unknown
user, 451 for a temporary failure), so the sender's bounce and retry paths run against a real
SMTP conversation rather than a mock. With a certificate it also speaks TLS the two ways relays
do (STARTTLS on the submission port, implicit TLS on SMTPS), so the sender's certificate checks
run against a real handshake too.

With ``--api-port`` it also answers a subset of Mailpit's HTTP API, so the email sender can ask,
before a retried delivery sends again, whether an earlier attempt's message was accepted:
``GET /api/v1/search?query=message-id:<id>`` (the id with or without angle brackets, optionally
in double quotes) lists the captured messages with exactly that Message-ID, newest first, as
Mailpit does: ``{"total": <messages captured>, "messages_count": <matches>, "count": <listed>,
"start": ..., "messages": [{"ID": <Maildir key>, "MessageID": <id without <>>, "Created":
<capture time, RFC 3339 UTC>}]}``; ``start`` and ``limit`` (default 50) page through the matches.
Unlike Mailpit's substring match, the id must match whole; any other query is a 400.
``GET /healthz`` answers 200. The index behind it lives in memory: built from the Maildir at
startup (so a restarted capture still finds what it accepted before) and updated before each 250
to DATA, so a message the relay accepted is found from that moment on. SMTP and HTTP share one
event loop, and SIGTERM or SIGINT stops both.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import io
import logging
import mailbox
import os
import re
import signal
import ssl
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from factura.common.http import server as http_server

log = logging.getLogger("factura.devstack.smtp")

DEFAULT_BOUNCE_DOMAINS = frozenset({"bounce.test"})
DEFAULT_TEMPFAIL_DOMAINS = frozenset({"tempfail.test"})
#: ``message-id:<id>``, ``message-id:"<id>"``: the one search term the API answers.
_MESSAGE_ID_QUERY = re.compile(r'^message-id:(?:"([^"]*)"|(\S+))$', re.IGNORECASE)


def bare_message_id(value: str) -> str:
    """A Message-ID as Mailpit gives it: no angle brackets, no folding whitespace."""
    return "".join(value.split()).strip("<>")


def _head(lines: Iterable[bytes]) -> bytes:
    """A message's header section: its lines up to the first empty one (the body is never read)."""
    head = bytearray()
    for line in lines:
        if line in (b"\r\n", b"\n"):
            break
        head += line
    return bytes(head)


def _message_id(head: bytes) -> str | None:
    value = BytesHeaderParser().parsebytes(head)["Message-ID"]
    return bare_message_id(str(value)) if value else None


@dataclass(frozen=True)
class Captured:
    """One captured message, as the search API lists it."""

    key: str
    message_id: str
    created: datetime

    def summary(self) -> dict[str, str]:
        created = self.created.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        return {"ID": self.key, "MessageID": self.message_id, "Created": created}


class MessageIndex:
    """Captured messages by Message-ID (bare), in memory."""

    def __init__(self) -> None:
        self._by_id: dict[str, list[Captured]] = {}
        self.total = 0

    def add(self, key: str, head: bytes, created: datetime) -> None:
        """Index one message by its header section; one without a Message-ID only counts in ``total``."""
        self.total += 1
        if message_id := _message_id(head):
            self._by_id.setdefault(message_id, []).append(Captured(key, message_id, created))

    def find(self, message_id: str) -> list[Captured]:
        """Every capture of ``message_id`` (bare or in angle brackets), newest first."""
        return sorted(self._by_id.get(bare_message_id(message_id), ()), key=lambda c: c.created, reverse=True)

    @classmethod
    def load(cls, maildir: Path) -> MessageIndex:
        """What a Maildir holds (``new`` and ``cur``), each message's capture time being its file's mtime."""
        index = cls()
        for sub in ("new", "cur"):
            folder = maildir / sub
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                with open(entry.path, "rb") as f:
                    head = _head(f)
                key = entry.name.split(mailbox.Maildir.colon)[0]  # cur/ names carry ":2,<flags>"
                index.add(key, head, datetime.fromtimestamp(entry.stat().st_mtime, UTC))
        return index


class CaptureHandler:
    """aiosmtpd handler: rejects recipients by domain, stores each accepted message once."""

    def __init__(
        self,
        maildir: Path,
        bounce_domains: Iterable[str] = DEFAULT_BOUNCE_DOMAINS,
        tempfail_domains: Iterable[str] = DEFAULT_TEMPFAIL_DOMAINS,
    ) -> None:
        self.path = maildir
        self.maildir = mailbox.Maildir(maildir, create=True)
        self.index = MessageIndex.load(maildir)
        self.bounce_domains = frozenset(d.lower() for d in bounce_domains)
        self.tempfail_domains = frozenset(d.lower() for d in tempfail_domains)

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        domain = address.rpartition("@")[2].lower()
        if domain in self.bounce_domains:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if domain in self.tempfail_domains:
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        content = envelope.original_content or b""
        # The envelope is not part of the message; record it the way a local delivery agent does.
        trace = f"Return-Path: <{envelope.mail_from}>\r\nX-Original-To: {', '.join(envelope.rcpt_tos)}\r\n"
        created = datetime.now(UTC)
        key = self.maildir.add(trace.encode() + content)
        self.index.add(key, _head(io.BytesIO(content)), created)  # findable before the 250
        log.info("captured %s from %s to %s", key, envelope.mail_from, envelope.rcpt_tos)
        return "250 Message accepted for delivery"


def read_messages(maildir: Path) -> list[EmailMessage]:
    """Every message captured so far, oldest first, parsed with the modern email API."""
    box = mailbox.Maildir(maildir, create=True)
    # Maildir keys carry no sortable order; a message's date is its delivery (file) time.
    keys = sorted(box.keys(), key=lambda k: (box.get_message(k).get_date(), k))
    return [email.message_from_bytes(box.get_bytes(k), policy=email.policy.default) for k in keys]


def server_tls_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """The relay's side of TLS (1.2 or later); with ``client_ca`` it also demands a client certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def start_server(
    handler: CaptureHandler,
    host: str,
    port: int,
    *,
    tls_context: ssl.SSLContext | None = None,
    implicit_tls: bool = False,
    require_starttls: bool = False,
) -> asyncio.Server:
    """One listening SMTP endpoint, the way a relay offers them.

    Without ``tls_context``: plain SMTP. With it: STARTTLS is offered (port 587 style), and
    ``require_starttls`` refuses mail until the client upgraded; or, with ``implicit_tls``, TLS
    from the first byte (SMTPS, port 465 style).
    """
    if tls_context is None and (implicit_tls or require_starttls):
        raise ValueError("implicit_tls and require_starttls need a tls_context")
    if implicit_tls and require_starttls:
        raise ValueError("require_starttls makes no sense on an implicit TLS endpoint")
    starttls_context = None if implicit_tls else tls_context

    def protocol() -> SMTP:
        # A fixed hostname: aiosmtpd would otherwise call getfqdn(), which can stall on DNS.
        return SMTP(
            handler,
            hostname="factura-devstack-smtp",
            enable_SMTPUTF8=True,
            tls_context=starttls_context,
            require_starttls=require_starttls,
        )

    loop = asyncio.get_running_loop()
    return await loop.create_server(protocol, host, port, ssl=tls_context if implicit_tls else None)


def create_api(index: MessageIndex) -> FastAPI:
    """The Mailpit-compatible search over ``index`` (see the module docstring)."""
    app = FastAPI(title="SMTP capture", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/api/v1/search", response_model=None)
    async def search(query: str, start: int = 0, limit: int = 50) -> dict[str, Any] | JSONResponse:
        match = _MESSAGE_ID_QUERY.match(query.strip())
        if match is None or start < 0 or limit < 1:
            error = "only message-id:<id> searches are supported (start >= 0, limit >= 1)"
            return JSONResponse({"Error": error}, status_code=400)
        found = index.find(match.group(1) if match.group(1) is not None else match.group(2))
        page = [c.summary() for c in found[start : start + limit]]
        return {
            "total": index.total,
            "messages_count": len(found),
            "count": len(page),
            "start": start,
            "messages": page,
        }

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def serve(
    host: str,
    port: int,
    handler: CaptureHandler,
    *,
    tls_context: ssl.SSLContext | None = None,
    require_starttls: bool = False,
    tls_port: int | None = None,
    api_port: int | None = None,
) -> None:
    """Serve SMTP until SIGTERM or SIGINT; with ``tls_context``, STARTTLS on ``port`` and SMTPS on
    ``tls_port``; with ``api_port``, the search API on HTTP. Returns once all of them are closed."""
    servers = [await start_server(handler, host, port, tls_context=tls_context, require_starttls=require_starttls)]
    if tls_port is not None:
        servers.append(await start_server(handler, host, tls_port, tls_context=tls_context, implicit_tls=True))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starttls = " (STARTTLS required)" if require_starttls else " (STARTTLS offered)" if tls_context else ""
    log.info("SMTP capture listening on %s:%d%s, maildir %s", host, port, starttls, handler.path)
    if tls_port is not None:
        log.info("SMTP capture listening with implicit TLS on %s:%d", host, tls_port)
    async with AsyncExitStack() as stack:
        for server in servers:
            await stack.enter_async_context(server)
        if api_port is None:
            await stop.wait()
            return
        api = http_server(create_api(handler.index), host, api_port)  # serve() owns SIGTERM and SIGINT
        log.info("SMTP capture search API on http://%s:%d, %d messages indexed", host, api_port, handler.index.total)
        # A port already in use ends the process (uvicorn raises SystemExit); so does SIGTERM.
        serving, stopping = asyncio.create_task(api.serve()), asyncio.create_task(stop.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        api.should_exit = True
        await serving


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m factura.devstack.smtp_capture", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--maildir", type=Path, required=True)
    parser.add_argument("--bounce-domain", action="append", help="repeatable; default bounce.test")
    parser.add_argument("--tempfail-domain", action="append", help="repeatable; default tempfail.test")
    parser.add_argument("--api-port", type=int, help="also serve the Mailpit-compatible search API on this port")
    tls = parser.add_argument_group("TLS (see factura.devstack.tls for a throwaway CA)")
    tls.add_argument("--tls-cert", type=Path, help="server certificate (PEM); with --tls-key, offers STARTTLS")
    tls.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    tls.add_argument("--require-starttls", action="store_true", help="refuse mail on --port until STARTTLS")
    tls.add_argument("--tls-port", type=int, help="also serve implicit TLS (SMTPS) on this port")
    tls.add_argument("--client-ca", type=Path, help="demand client certificates issued by this CA")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_cert is None and (args.require_starttls or args.tls_port is not None or args.client_ca):
        parser.error("--require-starttls, --tls-port and --client-ca need --tls-cert and --tls-key")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    handler = CaptureHandler(
        args.maildir,
        args.bounce_domain or DEFAULT_BOUNCE_DOMAINS,
        args.tempfail_domain or DEFAULT_TEMPFAIL_DOMAINS,
    )
    context = server_tls_context(args.tls_cert, args.tls_key, args.client_ca) if args.tls_cert else None
    asyncio.run(
        serve(
            args.host,
            args.port,
            handler,
            tls_context=context,
            require_starttls=args.require_starttls,
            tls_port=args.tls_port,
            api_port=args.api_port,
        )
    )


if __name__ == "__main__":
    main()
