"""Asynchronous bounce and complaint reports, parsed into :class:`Bounce` records.

An SMTP relay accepts an invoice email and only later learns that the mailbox does not exist, is
full, or that the customer pressed "spam". That news comes back in three shapes:

* a **DSN** (RFC 3464 ``multipart/report; report-type=delivery-status``) mailed to the envelope
  sender by Postfix, Exchange and every other MTA; or an **ARF** feedback report (RFC 5965,
  ``report-type=feedback-report``) from a mailbox provider's complaint loop;
* an **Amazon SES** bounce/complaint/delay notification inside an **SNS** envelope;
* a small **generic JSON** document, for relays and tools that can call a webhook (see
  :class:`GenericReport`).

Every parser returns the ORIGINAL message's ``Message-ID`` (the one the email-sender set), which is
how a report finds its delivery. Reports are untrusted input: anything malformed raises
:class:`BadReport` naming what is wrong, never another exception, so a webhook answers 400 rather
than 500 and the sender does not retry garbage for days. These parsers do not authenticate
anything; :mod:`factura.common.webhooks` does that before the body gets here.
"""

from __future__ import annotations

import base64
import email
import email.errors
import email.policy
import json
import quopri
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import HeaderParser
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

BounceKind = Literal["hard", "soft", "complaint", "delayed"]
ReportSource = Literal["dsn", "ses", "json"]

MAX_REPORT_BYTES = 1 << 20
MAX_EVIDENCE_CHARS = 16_000
MAX_DIAGNOSTIC_CHARS = 1000
MAX_GENERIC_ITEMS = 1000
#: Lines that may start a MIME boundary. A real DSN has a handful; thousands of nested parts cost
#: the stdlib parser seconds of CPU per megabyte, so such a body is refused before parsing.
MAX_BOUNDARY_LINES = 1000

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_REPLY = re.compile(r"\b([245])\d\d\b")
_MESSAGE_ID = re.compile(r"<([^<>\s]+)>")
_DELIVERY_STATUS = ("message/delivery-status", "message/global-delivery-status")
_NOT_BOUNCES = frozenset({"delivered", "relayed", "expanded"})
#: Stdlib parsing errors on hostile MIME: some headers or structures still raise from deep inside
#: ``email`` (and deep nesting from recursion). All of them mean "malformed report".
_MIME_ERRORS = (email.errors.MessageError, ValueError, TypeError, LookupError, AttributeError, RecursionError)
_HEADERS = HeaderParser(policy=email.policy.default)


class BadReport(ValueError):
    """The report cannot be used; the message says what is wrong with it."""


@dataclass(frozen=True)
class Bounce:
    """One recipient's bad news about one message we sent."""

    #: The original message's Message-ID, always ``<...>``.
    message_id: str
    recipient: str | None
    kind: BounceKind
    #: Enhanced status code (RFC 3463), e.g. ``5.1.1``.
    status: str | None
    #: Human-readable reason, at most ``MAX_DIAGNOSTIC_CHARS``.
    diagnostic: str
    source: ReportSource
    #: The raw report, at most ``MAX_EVIDENCE_CHARS``, kept for the audit trail.
    evidence: str


def _evidence(raw: bytes) -> str:
    return raw[: MAX_EVIDENCE_CHARS * 4].decode("utf-8", "replace")[:MAX_EVIDENCE_CHARS]


_DIAGNOSTIC_TYPE = re.compile(r"^\s*(?:smtp|x-[\w-]+)\s*;\s*", re.IGNORECASE)


def _diagnostic(text: str) -> str:
    """Human text: the ``smtp;`` diagnostic type dropped, whitespace unfolded, length capped."""
    return " ".join(_DIAGNOSTIC_TYPE.sub("", text).split())[:MAX_DIAGNOSTIC_CHARS]


def _check_size(raw: bytes) -> None:
    if len(raw) > MAX_REPORT_BYTES:
        raise BadReport(f"report is {len(raw)} bytes, over the {MAX_REPORT_BYTES} byte limit")


def normalise_message_id(value: str) -> str | None:
    """``<id@host>`` from a header value (brackets optional, comments and folding ignored)."""
    found = _MESSAGE_ID.search(value)
    if found:
        return f"<{found.group(1)}>"
    bare = value.strip()
    if bare and len(bare) <= 998 and not any(c.isspace() or c in "<>" for c in bare):
        return f"<{bare}>"
    return None


def _status(*texts: str | None) -> str | None:
    """The first enhanced status code in ``texts``."""
    for text in texts:
        found = _STATUS.search(text or "")
        if found:
            return ".".join(found.groups())
    return None


# --- DSN and ARF ---------------------------------------------------------------------------------


def _header(part: Message, name: str) -> str | None:
    value = part.get(name)
    return None if value is None else " ".join(str(value).split())


def _field_blocks(part: Message) -> list[Message]:
    """The header blocks of a ``message/delivery-status`` or ``message/feedback-report`` part.

    The stdlib parses ``message/delivery-status`` into one sub-message per block and other
    ``message/*`` types into a single sub-message, without decoding a transfer encoding first
    (some gateways base64 the report): such a part is re-serialised, decoded and split here.
    """
    payload = part.get_payload()
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if isinstance(payload, list) and cte not in ("base64", "quoted-printable"):
        return [p for p in payload if isinstance(p, Message)]
    if isinstance(payload, list):
        encoded = part.as_bytes().partition(b"\n\n")[2]
        raw: Any = base64.b64decode(encoded) if cte == "base64" else quopri.decodestring(encoded)
    else:
        raw = part.get_payload(decode=True)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload)
    blocks = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    return [_HEADERS.parsestr(b) for b in blocks if b.strip()]


def _original_headers(report: Message) -> Message | None:
    """The returned message's headers: a ``text/rfc822-headers`` or ``message/rfc822`` part."""
    for part in report.iter_parts() if isinstance(report, EmailMessage) else ():
        kind = part.get_content_type()
        if kind == "text/rfc822-headers":
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                return _HEADERS.parsestr(raw.decode("utf-8", "replace"))
        if kind == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                return inner[0]
    return None


def _original_message_id(mail: Message, report: Message, per_message: Message | None) -> str:
    original = _original_headers(report)
    candidates = [
        _header(original, "Message-ID") if original else None,
        _header(per_message, "Original-Message-ID") if per_message else None,
        _header(report, "Original-Message-ID"),
        _header(mail, "Original-Message-ID"),
        _header(mail, "In-Reply-To"),
    ]
    for value in candidates:
        message_id = normalise_message_id(value) if value else None
        if message_id:
            return message_id
    raise BadReport("no Original-Message-ID or text/rfc822-headers part")


def _recipient(value: str | None) -> str | None:
    """``user@host`` from ``rfc822; <user@host>`` (the address type is dropped)."""
    if not value:
        return None
    address = value.partition(";")[2] if ";" in value else value
    return address.strip().strip("<>").strip() or None


def _dsn_kind(action: str, status: str | None, diagnostic: str) -> BounceKind:
    if action == "delayed":
        return "delayed"
    code = status or next(iter(_SMTP_REPLY.findall(diagnostic)), "")
    # "failed" is final by definition; only an explicit 4.x.x says the cause was temporary.
    return "soft" if code.startswith("4") else "hard"


def _dsn_bounces(mail: Message, report: Message, status_part: Message, evidence: str) -> list[Bounce]:
    blocks = _field_blocks(status_part)
    recipients = [b for b in blocks if _header(b, "Final-Recipient") or _header(b, "Action")]
    per_message = blocks[0] if blocks and blocks[0] is not next(iter(recipients), None) else None
    if not recipients:
        raise BadReport("delivery-status part has no per-recipient fields")
    message_id = _original_message_id(mail, report, per_message)
    bounces = []
    for index, block in enumerate(recipients):
        action = (_header(block, "Action") or "").split(" ")[0].lower()
        if action in _NOT_BOUNCES:
            continue
        if action not in ("failed", "delayed"):
            raise BadReport(f"per-recipient block {index}: Action {action or '(missing)'!r} is not a DSN action")
        diagnostic = _diagnostic(_header(block, "Diagnostic-Code") or "")
        status = _status(_header(block, "Status"), diagnostic)
        bounces.append(
            Bounce(
                message_id=message_id,
                recipient=_recipient(_header(block, "Final-Recipient") or _header(block, "Original-Recipient")),
                kind=_dsn_kind(action, status, diagnostic),
                status=status,
                diagnostic=diagnostic or f"delivery {action}, status {status or 'unknown'}",
                source="dsn",
                evidence=evidence,
            )
        )
    return bounces


def _arf_bounces(mail: Message, report: Message, feedback_part: Message, evidence: str) -> list[Bounce]:
    blocks = _field_blocks(feedback_part)
    if not blocks or not _header(blocks[0], "Feedback-Type"):
        raise BadReport("feedback-report part has no Feedback-Type")
    fields = blocks[0]
    original = _original_headers(report)
    recipient = _header(fields, "Original-Rcpt-To") or (_header(original, "To") if original else None)
    feedback = _header(fields, "Feedback-Type")
    agent = _header(fields, "User-Agent")
    return [
        Bounce(
            message_id=_original_message_id(mail, report, fields),
            recipient=_recipient(recipient),
            kind="complaint",
            status=None,
            diagnostic=_diagnostic(f"feedback-type {feedback}" + (f" from {agent}" if agent else "")),
            source="dsn",
            evidence=evidence,
        )
    ]


def _report_part(mail: EmailMessage) -> EmailMessage:
    """The first ``multipart/report`` in ``mail``, itself or forwarded inside it."""
    for part in mail.walk():
        if isinstance(part, EmailMessage) and part.get_content_type() == "multipart/report":
            return part
    raise BadReport(f"no multipart/report in a {mail.get_content_type()} message")


def _parse_mime(raw: bytes) -> list[Bounce]:
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    report = _report_part(mail)
    report_type = str(report.get_param("report-type", "")).lower()
    parts = list(report.iter_parts())
    evidence = _evidence(raw)
    if report_type == "delivery-status":
        found = [p for p in parts if p.get_content_type() in _DELIVERY_STATUS]
        if not found:
            raise BadReport("multipart/report has no message/delivery-status part")
        return _dsn_bounces(mail, report, found[0], evidence)
    if report_type == "feedback-report":
        feedback = [p for p in parts if p.get_content_type() == "message/feedback-report"]
        if not feedback:
            raise BadReport("multipart/report has no message/feedback-report part")
        return _arf_bounces(mail, report, feedback[0], evidence)
    raise BadReport(f"report-type {report_type or '(missing)'!r} is not delivery-status or feedback-report")


def parse_dsn(raw: bytes) -> list[Bounce]:
    """Bounces in an RFC 3464 DSN or RFC 5965 ARF email (the whole message, headers included).

    Action ``failed`` with a 5.x.x status is ``hard``, with 4.x.x ``soft``; ``delayed`` is
    ``delayed``; ``delivered``/``relayed``/``expanded`` recipients are skipped, so a success DSN
    gives ``[]``. An ARF report gives one ``complaint``.
    """
    _check_size(raw)
    if raw.count(b"\n--") > MAX_BOUNDARY_LINES:
        raise BadReport(f"more than {MAX_BOUNDARY_LINES} MIME boundary lines")
    try:
        return _parse_mime(raw)
    except BadReport:
        raise
    except _MIME_ERRORS as e:
        raise BadReport(f"malformed MIME: {type(e).__name__}") from e


# --- JSON: SES via SNS, and the generic document ---------------------------------------------------


class _SesModel(BaseModel):
    """SES's camelCase fields, named in errors by their JSON names."""

    model_config = ConfigDict(extra="ignore", frozen=True, alias_generator=to_camel)


class _SnsEnvelope(BaseModel):
    """The fields of SNS's HTTP(S) delivery we use (SNS names are PascalCase)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    Type: str
    Message: str = ""


class _Header(_SesModel):
    name: str
    value: str


class _CommonHeaders(_SesModel):
    message_id: str | None = None


class _SesMail(_SesModel):
    message_id: str
    headers: list[_Header] = []
    common_headers: _CommonHeaders | None = None


class _SesRecipient(_SesModel):
    email_address: str
    status: str | None = None
    diagnostic_code: str | None = None


class _SesBounce(_SesModel):
    bounce_type: Literal["Permanent", "Transient", "Undetermined"]
    bounce_sub_type: str = ""
    bounced_recipients: list[_SesRecipient]


class _SesComplaint(_SesModel):
    complained_recipients: list[_SesRecipient]
    complaint_feedback_type: str | None = None
    user_agent: str | None = None


class _SesDelay(_SesModel):
    delay_type: str = ""
    delayed_recipients: list[_SesRecipient]


class _SesNotification(_SesModel):
    #: ``notificationType`` for feedback notifications, ``eventType`` for configuration-set events.
    notification_type: str | None = None
    event_type: str | None = None
    mail: _SesMail
    bounce: _SesBounce | None = None
    complaint: _SesComplaint | None = None
    delivery_delay: _SesDelay | None = None


_SES_IGNORED = frozenset({"Delivery", "Send", "Reject", "Open", "Click", "Rendering Failure", "Subscription"})
_SES_KIND: dict[str, BounceKind] = {"Permanent": "hard", "Transient": "soft", "Undetermined": "soft"}

Model = TypeVar("Model")


def _field_path(loc: Sequence[int | str], prefix: str) -> str:
    path = prefix
    for item in loc:
        path += f"[{item}]" if isinstance(item, int) else f".{item}" if path else str(item)
    return path or "$"


def _validate(adapter: Callable[[Any], Model], data: Any, prefix: str = "") -> Model:
    """``adapter(data)``, with pydantic's errors turned into one BadReport naming the fields."""
    try:
        return adapter(data)
    except ValidationError as e:
        reasons = []
        for err in e.errors(include_url=False)[:5]:
            path = _field_path(err["loc"], prefix)
            reasons.append(f"field '{path}' missing" if err["type"] == "missing" else f"field '{path}': {err['msg']}")
        raise BadReport("; ".join(reasons)) from e


def _json(body: bytes, what: str) -> Any:
    _check_size(body)
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadReport(f"{what} is not JSON: {type(e).__name__}") from e


def _is_sns(doc: Any) -> bool:
    return isinstance(doc, dict) and "Type" in doc and "Message" in doc


def _is_raw_ses(doc: Any) -> bool:
    """An SES notification delivered without the SNS envelope (SNS "raw message delivery")."""
    return isinstance(doc, dict) and "mail" in doc and ("notificationType" in doc or "eventType" in doc)


def _ses_message_id(mail: _SesMail) -> str:
    values = [h.value for h in mail.headers if h.name.lower() == "message-id"]
    if mail.common_headers and mail.common_headers.message_id:
        values.append(mail.common_headers.message_id)
    for value in values:
        message_id = normalise_message_id(value)
        if message_id:
            return message_id
    raise BadReport("no Message-ID in mail.headers or mail.commonHeaders.messageId")


def _ses_bounces(doc: Any, evidence: str) -> list[Bounce]:
    if _is_sns(doc):
        envelope = _validate(_SnsEnvelope.model_validate, doc)
        if envelope.Type != "Notification":
            raise BadReport(f"SNS Type {envelope.Type} is not a notification")
        doc = _json(envelope.Message.encode("utf-8", "surrogatepass"), "SNS Message")
    note = _validate(_SesNotification.model_validate, doc)
    kind = note.notification_type or note.event_type
    if kind in _SES_IGNORED:
        return []
    if kind == "Bounce":
        bounce = note.bounce
        if bounce is None:
            raise BadReport("field 'bounce' missing")
        recipients, bounce_kind = bounce.bounced_recipients, _SES_KIND[bounce.bounce_type]
        fallback = f"{bounce.bounce_type}/{bounce.bounce_sub_type}"
    elif kind == "Complaint":
        if note.complaint is None:
            raise BadReport("field 'complaint' missing")
        recipients, bounce_kind = note.complaint.complained_recipients, "complaint"
        agent = f" from {note.complaint.user_agent}" if note.complaint.user_agent else ""
        fallback = f"complaint feedback type {note.complaint.complaint_feedback_type or 'unknown'}{agent}"
    elif kind == "DeliveryDelay":
        if note.delivery_delay is None:
            raise BadReport("field 'deliveryDelay' missing")
        recipients, bounce_kind = note.delivery_delay.delayed_recipients, "delayed"
        fallback = f"delivery delayed: {note.delivery_delay.delay_type}"
    else:
        raise BadReport(f"SES notificationType {kind!r} is not Bounce, Complaint or DeliveryDelay")
    message_id = _ses_message_id(note.mail)
    return [
        Bounce(
            message_id=message_id,
            recipient=r.email_address,
            kind=bounce_kind,
            status=_status(r.status, r.diagnostic_code) if bounce_kind != "complaint" else None,
            diagnostic=_diagnostic(r.diagnostic_code or fallback),
            source="ses",
            evidence=evidence,
        )
        for r in recipients
    ]


def parse_ses(body: bytes) -> list[Bounce]:
    """Bounces in an Amazon SES notification, normally inside an SNS ``Notification`` envelope.

    ``Permanent`` bounces are ``hard``, ``Transient`` and ``Undetermined`` ones ``soft``;
    complaints are ``complaint`` and ``DeliveryDelay`` events ``delayed``; other SES events
    (``Delivery``, ``Open``, ...) give ``[]``. The Message-ID is the one we set (``mail.headers`` or
    ``mail.commonHeaders.messageId``), not SES's own ``mail.messageId``.

    The SNS signature is NOT verified here: that needs SNS's signing certificate from the network.
    The webhook authenticates the request with :mod:`factura.common.webhooks` (HMAC or bearer
    token, e.g. in the subscription URL's credentials) before calling this.
    """
    return _ses_bounces(_json(body, "SES notification"), _evidence(body))


_MessageId = Annotated[str, Field(min_length=1, max_length=998)]


class GenericReport(BaseModel):
    """The generic webhook document; the body is one of these or a JSON list of up to 1000.

    ``{"message_id": "<id@host>", "recipient": "a@b", "type": "hard", "status": "5.1.1",
    "diagnostic": "..."}``. ``type`` is ``hard``, ``soft``, ``complaint`` or ``delayed``;
    ``recipient``, ``status`` and ``diagnostic`` are optional. Unknown fields are refused, so a
    misspelt field is an error rather than silently lost.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    message_id: _MessageId
    recipient: str | None = Field(default=None, max_length=320)
    type: BounceKind
    status: str | None = Field(default=None, pattern=r"^[245]\.\d{1,3}\.\d{1,3}$")
    diagnostic: str = Field(default="", max_length=100_000)


_GENERIC_LIST = TypeAdapter(list[GenericReport])


def _generic_bounces(doc: Any, evidence: str) -> list[Bounce]:
    if isinstance(doc, list):
        if len(doc) > MAX_GENERIC_ITEMS:
            raise BadReport(f"list of {len(doc)} reports, over the {MAX_GENERIC_ITEMS} limit")
        reports = _validate(_GENERIC_LIST.validate_python, doc)
    else:
        reports = [_validate(GenericReport.model_validate, doc)]
    bounces = []
    for index, report in enumerate(reports):
        message_id = normalise_message_id(report.message_id)
        if message_id is None:
            where = f"[{index}]." if isinstance(doc, list) else ""
            raise BadReport(f"field '{where}message_id' is not a Message-ID")
        bounces.append(
            Bounce(
                message_id=message_id,
                recipient=report.recipient,
                kind=report.type,
                status=report.status,
                diagnostic=_diagnostic(report.diagnostic or f"{report.type} bounce"),
                source="json",
                evidence=evidence,
            )
        )
    return bounces


def parse_generic(body: bytes) -> list[Bounce]:
    """Bounces in the generic JSON document (:class:`GenericReport`, or a list of them)."""
    return _generic_bounces(_json(body, "report"), _evidence(body))


_HEADER_LINE = re.compile(rb"^[!-9;-~]+:")


def _with_content_type(content_type: str, body: bytes) -> bytes:
    """``body`` as a whole message.

    A ``multipart/report`` HTTP body may be the whole email (it starts with a header line) or only
    the MIME body (a preamble or ``--boundary``), whose boundary is in the HTTP ``Content-Type``.
    """
    if _HEADER_LINE.match(body):
        return body
    header = " ".join(content_type.split()).encode("utf-8", "replace")
    return b"MIME-Version: 1.0\r\nContent-Type: " + header + b"\r\n\r\n" + body


def parse_report(content_type: str, body: bytes) -> list[Bounce]:
    """Dispatch a webhook body on its ``Content-Type`` to the parser for its shape.

    ``multipart/report`` and ``message/rfc822`` are DSN/ARF emails; ``application/json`` and
    ``text/plain`` (how SNS posts) are SES when they carry an SNS envelope (or are a raw SES
    notification) and the generic document otherwise.
    """
    _check_size(body)
    media = content_type.partition(";")[0].strip().lower()
    if media == "multipart/report":
        return parse_dsn(_with_content_type(content_type, body))
    if media == "message/rfc822":
        return parse_dsn(body)
    if media in ("application/json", "text/plain"):
        doc = _json(body, "report")
        evidence = _evidence(body)
        if _is_sns(doc) or _is_raw_ses(doc):
            return _ses_bounces(doc, evidence)
        return _generic_bounces(doc, evidence)
    raise BadReport(
        f"content type {media or '(missing)'!r} is not multipart/report, message/rfc822, application/json or text/plain"
    )
