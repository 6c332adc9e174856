"""SMTP adapter: one connection per message, and what each SMTP answer means for the message.

A 5xx to MAIL, RCPT or DATA refuses the message for good (:class:`Undeliverable`); anything that
says "not now" (connection refused or dropped, a timeout, a 4xx, a relay that refuses our EHLO or
login) raises :class:`DependencyDown` ``("smtp", ...)`` so the consumer loop pauses and retries.

TLS follows ``SmtpSettings.security``, with the relay's certificate checked by default. A
certificate that fails the check is a misconfigured relay (or someone in the middle), not a
reason to send in clear or to switch channel: it is ``DependencyDown`` too, so mail waits, but its
detail starts with "TLS certificate verification failed" so the logs and readiness say why.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from email.errors import MessageError
from email.message import EmailMessage
from typing import Final, Protocol

import aiosmtplib

from factura.common.errors import DependencyDown
from factura.common.events import FailureReason
from factura.common.tls import client_context
from factura.email_sender.settings import SmtpSettings

DEPENDENCY: Final = "smtp"
ENHANCED_CODE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")

log = logging.getLogger(__name__)


class Undeliverable(Exception):
    """This message will never be accepted: a 5xx reply, or a message the client cannot send."""

    def __init__(self, reason: FailureReason, text: str, code: int | None = None) -> None:
        super().__init__(f"{code} {text}" if code is not None else text)
        self.reason: FailureReason = reason
        self.text = text
        self.code = code

    @property
    def enhanced_code(self) -> str | None:
        match = ENHANCED_CODE.search(self.text)
        return match.group(1) if match else None


def smtp_failure(error: aiosmtplib.SMTPException) -> Undeliverable | DependencyDown:
    """What an SMTP error during the transaction means: a permanent refusal, or "try again later".

    5xx replies to MAIL, RCPT or DATA refuse this message for good. A 4xx reply, a dropped
    connection, a timeout or a refused greeting/EHLO say nothing about the message.
    """
    reply = error
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused) and error.recipients:
        reply = error.recipients[0]
        if reply.code < 500:
            return DependencyDown(DEPENDENCY, f"recipient deferred: {reply.code} {reply.message}")
    if isinstance(reply, aiosmtplib.SMTPResponseException) and reply.code == 530:
        # "Must issue a STARTTLS command first" / "Authentication required" (RFC 3207, 4954): our
        # connection settings are wrong for this relay, the same for every message: not a bounce.
        return DependencyDown(DEPENDENCY, f"relay requires TLS or authentication: {reply.code} {reply.message}")
    if isinstance(reply, aiosmtplib.SMTPNotSupported):  # e.g. a UTF-8 address and no SMTPUTF8
        return Undeliverable("rejected_by_server", str(reply))
    if (
        isinstance(reply, aiosmtplib.SMTPResponseException)
        and not isinstance(reply, aiosmtplib.SMTPHeloError)
        and reply.code >= 500
    ):
        return Undeliverable("rejected_by_server", reply.message, reply.code)
    return DependencyDown(DEPENDENCY, f"{type(error).__name__}: {error}")


def tls_context(settings: SmtpSettings) -> ssl.SSLContext | None:
    """The client TLS context for ``settings`` (``None`` for ``security="none"``), built once.

    Chain and host name are checked unless ``verify_certificate`` is off; ``ca_file`` replaces
    the system's trusted CAs; TLS 1.0 and 1.1 are refused.
    """
    if settings.security == "none":
        return None
    return client_context(
        verify_certificate=settings.verify_certificate,
        ca_file=settings.ca_file,
        client_cert=settings.client_cert,
        client_key=settings.client_key,
    )


def tls_failure(error: BaseException) -> str | None:
    """What went wrong in a TLS handshake, if ``error`` (or what caused it) is such a failure."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {current.verify_message or current}"
        if isinstance(current, ssl.SSLError):
            return f"TLS handshake failed: {current.reason or current}"
        current = current.__cause__ or current.__context__
    return None


def _is_local(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Mailer(Protocol):
    async def send(self, message: EmailMessage, on_accepted: Callable[[], Awaitable[None]]) -> None:
        """Hand ``message`` to the relay and await ``on_accepted`` once the relay has taken it.

        Raises :class:`Undeliverable` for a permanent refusal and :class:`DependencyDown` for
        anything worth retrying; an exception from ``on_accepted`` propagates as is.
        """
        ...


class SmtpMailer:
    """One SMTP connection per message: connect, MAIL/RCPT/DATA, ``on_accepted``, then QUIT."""

    def __init__(self, settings: SmtpSettings) -> None:
        self._s = settings
        self._local_hostname = settings.local_hostname
        self._tls = tls_context(settings)
        if settings.security == "none" and not _is_local(settings.host):
            log.warning("SMTP to %s is not encrypted (security=none): set security=starttls or tls", settings.host)
        elif settings.security != "none" and not settings.verify_certificate:
            log.warning("SMTP certificate verification is OFF (verify_certificate=false): development only")

    async def _client(self) -> aiosmtplib.SMTP:
        if self._local_hostname is None:
            # aiosmtplib would call getfqdn() (DNS, possibly slow) on every connection; once is enough.
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        return aiosmtplib.SMTP(
            hostname=self._s.host,
            port=self._s.port,
            username=self._s.username,
            password=self._s.password.get_secret_value() if self._s.password else None,
            use_tls=self._s.security == "tls",
            start_tls=self._s.security == "starttls",  # never None: aiosmtplib would then upgrade only if offered
            tls_context=self._tls,
            timeout=self._s.timeout_s,
            local_hostname=self._local_hostname,
        )

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = await self._client()
        try:
            await smtp.connect()
        except (aiosmtplib.SMTPException, OSError) as e:  # OSError covers refused, unreachable, TimeoutError
            where = f"{self._s.host}:{self._s.port}"
            if tls := tls_failure(e):
                raise DependencyDown(DEPENDENCY, f"{tls} ({where}, security={self._s.security})") from e
            raise DependencyDown(DEPENDENCY, f"connect to {where}: {type(e).__name__}: {e}") from e
        return smtp

    async def send(self, message: EmailMessage, on_accepted: Callable[[], Awaitable[None]]) -> None:
        smtp = await self._connect()
        try:
            try:
                await smtp.send_message(message)
            except aiosmtplib.SMTPException as e:
                raise smtp_failure(e) from e
            except OSError as e:
                raise DependencyDown(DEPENDENCY, f"{type(e).__name__}: {e}") from e
            except (ValueError, UnicodeError, MessageError) as e:  # the message cannot be serialised
                raise Undeliverable("message_invalid", f"{type(e).__name__}: {e}") from e
            await on_accepted()
        except BaseException:
            smtp.close()
            raise
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError) as e:
            # The relay has the message and the ledger says so; a failed goodbye changes nothing.
            log.info("SMTP QUIT failed after the message was accepted: %s", e)
            smtp.close()

    async def probe(self) -> None:
        """Readiness: the relay greets, completes the TLS handshake, answers NOOP and QUIT in time."""
        smtp: aiosmtplib.SMTP | None = None
        try:
            async with asyncio.timeout(self._s.timeout_s):
                smtp = await self._connect()
                await smtp.noop()
                await smtp.quit()
        except TimeoutError as e:
            raise DependencyDown(DEPENDENCY, f"no answer within {self._s.timeout_s:g} s") from e
        except (aiosmtplib.SMTPException, OSError) as e:
            raise DependencyDown(DEPENDENCY, f"{type(e).__name__}: {e}") from e
        finally:
            if smtp is not None and smtp.is_connected:
                smtp.close()
