"""SMTP capture server: the local stand-in for the SMTP relay (or SES) the email-sender talks to.

Every accepted message lands in a Maildir so tests and the demo can read what was "sent". Some
recipient domains answer the way real relays do when things go wrong (permanent 550 for an unknown
user, 451 for a temporary failure), so the sender's bounce and retry paths run against a real
SMTP conversation rather than a mock.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import logging
import mailbox
import signal
from collections.abc import Iterable, Sequence
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


async def serve(host: str, port: int, handler: CaptureHandler) -> None:
    """Serve SMTP until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    # A fixed hostname: aiosmtpd would otherwise call getfqdn(), which can stall on DNS.
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="factura-devstack-smtp", enable_SMTPUTF8=True), host, port
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("SMTP capture listening on %s:%d, maildir %s", host, port, handler.path)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m factura.devstack.smtp_capture", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--maildir", type=Path, required=True)
    parser.add_argument("--bounce-domain", action="append", help="repeatable; default bounce.test")
    parser.add_argument("--tempfail-domain", action="append", help="repeatable; default tempfail.test")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    handler = CaptureHandler(
        args.maildir,
        args.bounce_domain or DEFAULT_BOUNCE_DOMAINS,
        args.tempfail_domain or DEFAULT_TEMPFAIL_DOMAINS,
    )
    asyncio.run(serve(args.host, args.port, handler))


if __name__ == "__main__":
    main()
