"""SMTP capture server: the local stand-in for the SMTP relay (or SES) the email-sender talks to.

Every accepted message lands in a Maildir so tests and the demo can read what was "sent". Some
recipient domains answer the way real relays do when things go wrong (permanent 550 for an unknown
user, 451 for a temporary failure), so the sender's bounce and retry paths run against a real
SMTP conversation rather than a mock. With a certificate it also speaks TLS the two ways relays
do (STARTTLS on the submission port, implicit TLS on SMTPS), so the sender's certificate checks
run against a real handshake too.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import logging
import mailbox
import signal
import ssl
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger("factura.devstack.smtp")

DEFAULT_BOUNCE_DOMAINS = frozenset({"bounce.test"})
DEFAULT_TEMPFAIL_DOMAINS = frozenset({"tempfail.test"})


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
        key = self.maildir.add(trace.encode() + content)
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


async def serve(
    host: str,
    port: int,
    handler: CaptureHandler,
    *,
    tls_context: ssl.SSLContext | None = None,
    require_starttls: bool = False,
    tls_port: int | None = None,
) -> None:
    """Serve SMTP until SIGTERM or SIGINT; with ``tls_context``, STARTTLS on ``port`` and SMTPS on ``tls_port``."""
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
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m factura.devstack.smtp_capture", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--maildir", type=Path, required=True)
    parser.add_argument("--bounce-domain", action="append", help="repeatable; default bounce.test")
    parser.add_argument("--tempfail-domain", action="append", help="repeatable; default tempfail.test")
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
        )
    )


if __name__ == "__main__":
    main()
