"""Bounce and complaint reports (DSN, ARF, SES via SNS, generic JSON) into ``Bounce`` records.

The samples under ``samples/bounces/`` are shaped like what Postfix, Exchange Online, a mailbox
provider's feedback loop and SES really send. Malformed input of any kind must end in ``BadReport``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factura.email_sender.bounces import (
    MAX_DIAGNOSTIC_CHARS,
    MAX_EVIDENCE_CHARS,
    BadReport,
    Bounce,
    parse_dsn,
    parse_generic,
    parse_report,
    parse_ses,
)

SAMPLES = Path(__file__).parent / "samples" / "bounces"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def summary(bounces: list[Bounce]) -> list[tuple[str, str | None, str, str | None, str]]:
    return [(b.message_id, b.recipient, b.kind, b.status, b.source) for b in bounces]


# --- DSN / ARF samples ---------------------------------------------------------------------------


def test_postfix_dsn_gives_one_bounce_per_failed_recipient() -> None:
    raw = sample("postfix_dsn.eml")
    bounces = parse_dsn(raw)
    mid = "<9b2f6f0e-6a44-4c1e-9d0c-2a1f3f6d8e01@factura.example.com>"
    assert summary(bounces) == [
        (mid, "nobody@bounce.test", "hard", "5.1.1", "dsn"),
        (mid, "cuentas@lleno.example.org", "soft", "4.2.2", "dsn"),
    ]
    assert bounces[0].diagnostic == (
        "550 5.1.1 <nobody@bounce.test>: Recipient address rejected: User unknown in local recipient table"
    )
    assert bounces[0].evidence == raw.decode()
    assert parse_report("multipart/report; report-type=delivery-status", raw) == bounces


def test_exchange_ndr() -> None:
    bounces = parse_dsn(sample("exchange_dsn.eml"))
    assert summary(bounces) == [
        ("<7d1e0c4a-2b3f-4a5e-8c6d-9e0f1a2b3c4d@factura.example.com>", "facturas@contoso.com", "hard", "5.1.10", "dsn")
    ]
    assert bounces[0].diagnostic.startswith("550 5.1.10 RESOLVER.ADR.RecipientNotFound")


def test_delayed_dsn() -> None:
    (bounce,) = parse_dsn(sample("delayed_dsn.eml"))
    assert summary([bounce]) == [
        (
            "<1c0ffee0-1234-4abc-8def-0123456789ab@factura.example.com>",
            "contabilidade@lenta.example.com.br",
            "delayed",
            "4.4.1",
            "dsn",
        )
    ]
    assert bounce.diagnostic == "connect to mx.lenta.example.com.br[203.0.113.80]:25: Connection timed out"


def test_arf_feedback_report_is_a_complaint() -> None:
    (bounce,) = parse_report("message/rfc822", sample("arf_complaint.eml"))
    assert summary([bounce]) == [
        ("<aa11bb22-cc33-4d44-8e55-ff6677889900@factura.example.com>", "queja@isp.example", "complaint", None, "dsn")
    ]
    assert bounce.diagnostic == "feedback-type abuse from SomeGenerator/1.0"


def test_arf_without_original_rcpt_to_falls_back_to_the_original_to() -> None:
    raw = sample("arf_complaint.eml").replace(b"Original-Rcpt-To: <queja@isp.example>\n", b"")
    (bounce,) = parse_dsn(raw)
    assert bounce.recipient == "queja@isp.example"
    with pytest.raises(BadReport, match="feedback-report part has no Feedback-Type"):
        parse_dsn(raw.replace(b"Feedback-Type: abuse\n", b""))


# --- DSN variants ---------------------------------------------------------------------------------


def dsn(recipients: str, original: str = "", top: str = "", report_type: str = "delivery-status") -> bytes:
    """A minimal DSN; ``original`` is the third part with its own Content-Type line."""
    third = f"--B\n{original}\n" if original else ""
    return (
        f"From: MAILER-DAEMON@mta.example\n{top}MIME-Version: 1.0\n"
        f'Content-Type: multipart/report; report-type={report_type}; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nIt failed.\n\n"
        "--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mta.example\n\n"
        f"{recipients}\n{third}--B--\n"
    ).encode()


HEADERS_PART = "Content-Type: text/rfc822-headers\n\nFrom: a@factura.example\nMessage-ID: <orig@factura.example>\n"
FAILED = "Final-Recipient: rfc822; x@y.example\nAction: failed\nStatus: 5.1.1\n"


def test_success_dsn_gives_no_bounce() -> None:
    recipients = (
        "Final-Recipient: rfc822; a@y.example\nAction: delivered\nStatus: 2.0.0\n\n"
        "Final-Recipient: rfc822; b@y.example\nAction: relayed (to a non-DSN MTA)\nStatus: 2.0.0\n\n"
        "Final-Recipient: rfc822; c@y.example\nAction: expanded\nStatus: 2.0.0\n"
    )
    assert parse_dsn(dsn(recipients, HEADERS_PART)) == []


def test_original_message_as_message_rfc822_part() -> None:
    original = "Content-Type: message/rfc822\n\nMessage-ID: <whole@factura.example>\nSubject: x\n\nbody\n"
    (bounce,) = parse_dsn(dsn(FAILED, original))
    assert bounce.message_id == "<whole@factura.example>"


@pytest.mark.parametrize(
    ("top", "per_message", "want"),
    [
        ("In-Reply-To: <reply@factura.example>\n", "", "<reply@factura.example>"),
        ("Original-Message-ID: <top@factura.example>\n", "", "<top@factura.example>"),
        (
            "In-Reply-To: <reply@factura.example>\n",
            "Original-Message-ID: bare@factura.example\n",
            "<bare@factura.example>",
        ),
    ],
)
def test_message_id_fallbacks_without_the_original_part(top: str, per_message: str, want: str) -> None:
    raw = dsn(FAILED, top=top).replace(
        b"Reporting-MTA: dns; mta.example\n", f"Reporting-MTA: x\n{per_message}".encode()
    )
    (bounce,) = parse_dsn(raw)
    assert bounce.message_id == want


def test_dsn_without_per_message_fields() -> None:
    raw = dsn(FAILED, HEADERS_PART).replace(b"Reporting-MTA: dns; mta.example\n\n", b"")
    assert summary(parse_dsn(raw)) == [("<orig@factura.example>", "x@y.example", "hard", "5.1.1", "dsn")]


def test_exchange_ndr_without_headers_part_uses_in_reply_to() -> None:
    raw = sample("exchange_dsn.eml")
    raw = raw[: raw.index(b"Content-Type: text/rfc822-headers")] + b"Content-Type: text/plain\n\nremoved\n"
    (bounce,) = parse_dsn(raw)
    assert bounce.message_id == "<7d1e0c4a-2b3f-4a5e-8c6d-9e0f1a2b3c4d@factura.example.com>"


def test_status_missing_is_taken_from_the_diagnostic_or_defaults_to_hard() -> None:
    soft = "Final-Recipient: rfc822; x@y.example\nAction: failed\nDiagnostic-Code: smtp; 451 try later\n"
    assert summary(parse_dsn(dsn(soft, HEADERS_PART)))[0][2:4] == ("soft", None)
    enhanced = "Final-Recipient: rfc822; x@y.example\nAction: failed\nDiagnostic-Code: smtp; 550 5.7.1 spam\n"
    assert summary(parse_dsn(dsn(enhanced, HEADERS_PART)))[0][2:4] == ("hard", "5.7.1")
    (bare,) = parse_dsn(dsn("Final-Recipient: rfc822;<x@y.example>\nAction: FAILED\n", HEADERS_PART))
    assert (bare.recipient, bare.kind, bare.status, bare.diagnostic) == (
        "x@y.example",
        "hard",
        None,
        "delivery failed, status unknown",
    )


def test_base64_delivery_status_part_is_decoded() -> None:
    import base64

    encoded = base64.encodebytes(b"Reporting-MTA: dns; m\r\n\r\n" + FAILED.encode()).decode()
    raw = dsn(FAILED, HEADERS_PART).replace(
        b"Content-Type: message/delivery-status\n\nReporting-MTA: dns; mta.example\n\n" + FAILED.encode(),
        f"Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n{encoded}".encode(),
    )
    assert summary(parse_dsn(raw)) == [("<orig@factura.example>", "x@y.example", "hard", "5.1.1", "dsn")]


def test_http_body_without_mime_headers_takes_the_boundary_from_the_content_type() -> None:
    raw = sample("postfix_dsn.eml")
    body = raw.partition(b"\n\n")[2]
    content_type = (
        'multipart/report; report-type=delivery-status; boundary="4XkQ2T0dLVz9vBT.1736842364/mail.factura.example.com"'
    )
    assert summary(parse_report(content_type, body)) == summary(parse_dsn(raw))


def test_forwarded_bounce_is_found_inside_the_wrapper() -> None:
    wrapper = b"From: helpdesk@factura.example\nMIME-Version: 1.0\nContent-Type: message/rfc822\n\n"
    assert summary(parse_report("message/rfc822", wrapper + sample("postfix_dsn.eml")))[0][2] == "hard"


def test_diagnostic_and_evidence_are_capped() -> None:
    long = "Final-Recipient: rfc822; x@y.example\nAction: failed\nStatus: 5.0.0\nDiagnostic-Code: smtp; " + "z" * 5000
    raw = dsn(long + "\n", HEADERS_PART + "X-Pad: " + "p" * 40_000 + "\n")
    (bounce,) = parse_dsn(raw)
    assert len(bounce.diagnostic) == MAX_DIAGNOSTIC_CHARS
    assert len(bounce.evidence) == MAX_EVIDENCE_CHARS
    assert raw.decode().startswith(bounce.evidence)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (dsn(FAILED), "no Original-Message-ID or text/rfc822-headers part"),
        (dsn("Final-Recipient: rfc822; x@y.example\nStatus: 5.1.1\n", HEADERS_PART), "Action '(missing)'"),
        (dsn("Final-Recipient: rfc822; x@y.example\nAction: bounced\n", HEADERS_PART), "Action 'bounced'"),
        (dsn("", HEADERS_PART), "delivery-status part has no per-recipient fields"),
        (dsn(FAILED, HEADERS_PART, report_type="disposition-notification"), "report-type 'disposition-notification'"),
        (dsn(FAILED, HEADERS_PART).replace(b"message/delivery-status", b"text/plain"), "no message/delivery-status"),
        (b"Subject: hello\n\nnot a report", "no multipart/report in a text/plain message"),
        (b"", "no multipart/report"),
        (b"Content-Type: message/rfc822\n\n" * 30_000, "malformed MIME: RecursionError"),
        (b"\n--b" * 1001, "more than 1000 MIME boundary lines"),
        (b"x" * (1024 * 1024 + 1), "over the 1048576 byte limit"),
    ],
)
def test_bad_dsns(raw: bytes, want: str) -> None:
    with pytest.raises(BadReport, match=want.replace("(", r"\(").replace(")", r"\)")):
        parse_dsn(raw)


# --- SES via SNS ---------------------------------------------------------------------------------


def test_ses_permanent_bounce() -> None:
    body = sample("ses_bounce_permanent.json")
    (bounce,) = parse_ses(body)
    assert summary([bounce]) == [
        (
            "<3f9c2d1e-7b6a-4c5d-9e8f-0a1b2c3d4e5f@factura.example.com>",
            "pagos@inexistente.example.net",
            "hard",
            "5.1.1",
            "ses",
        )
    ]
    assert bounce.diagnostic.startswith("550 5.1.1 <pagos@inexistente.example.net>")
    assert bounce.evidence == body.decode()


def test_ses_transient_bounce_and_complaint() -> None:
    assert summary(parse_ses(sample("ses_bounce_transient.json"))) == [
        (
            "<8e7d6c5b-4a39-4281-b0c9-d8e7f6a5b4c3@factura.example.com>",
            "facturacion@lleno.example.ro",
            "soft",
            "4.2.2",
            "ses",
        )
    ]
    (complaint,) = parse_ses(sample("ses_complaint.json"))
    assert summary([complaint]) == [
        (
            "<5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d@factura.example.com>",
            "cliente@correo.example.es",
            "complaint",
            None,
            "ses",
        )
    ]
    assert complaint.diagnostic == "complaint feedback type abuse from Yahoo!-Mail-Feedback/2.0"


def ses(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    envelope = json.loads(sample(name))
    return envelope, json.loads(envelope["Message"])


def wrap(envelope: dict[str, Any], message: dict[str, Any]) -> bytes:
    return json.dumps({**envelope, "Message": json.dumps(message)}).encode()


def test_ses_undetermined_is_soft_and_common_headers_are_the_fallback() -> None:
    envelope, message = ses("ses_bounce_permanent.json")
    message["bounce"]["bounceType"] = "Undetermined"
    del message["mail"]["headers"]
    message["mail"]["commonHeaders"]["messageId"] = "common@factura.example.com"
    (bounce,) = parse_ses(wrap(envelope, message))
    assert (bounce.kind, bounce.message_id) == ("soft", "<common@factura.example.com>")


def test_ses_raw_delivery_without_envelope_and_event_publishing() -> None:
    _, message = ses("ses_bounce_permanent.json")
    raw = json.dumps(message).encode()
    assert summary(parse_ses(raw)) == summary(parse_report("application/json", raw))
    event = {k: v for k, v in message.items() if k not in ("notificationType", "bounce")}
    delay = {"delayType": "MailboxFull", "delayedRecipients": [{"emailAddress": "d@y.example", "status": "4.2.2"}]}
    delayed = parse_report(
        "text/plain; charset=UTF-8",
        json.dumps({**event, "eventType": "DeliveryDelay", "deliveryDelay": delay}).encode(),
    )
    assert summary(delayed)[0][1:4] == ("d@y.example", "delayed", "4.2.2")
    assert delayed[0].diagnostic == "delivery delayed: MailboxFull"
    assert parse_ses(json.dumps({**event, "eventType": "Delivery"}).encode()) == []


def test_sns_text_plain_is_dispatched_to_ses() -> None:
    assert parse_report("text/plain; charset=UTF-8", sample("ses_complaint.json"))[0].source == "ses"


def refusal(parse: Any, body: bytes) -> str:
    with pytest.raises(BadReport) as excinfo:
        parse(body)
    return str(excinfo.value)


def test_ses_errors_name_the_field() -> None:
    envelope, _ = ses("ses_bounce_permanent.json")

    def changed(change: Any) -> bytes:
        _, message = ses("ses_bounce_permanent.json")
        change(message)
        return wrap(envelope, message)

    confirmation = {**envelope, "Type": "SubscriptionConfirmation", "Message": "You have chosen to subscribe..."}
    cases = [
        (json.dumps(confirmation).encode(), "SNS Type SubscriptionConfirmation is not a notification"),
        (changed(lambda m: m["bounce"].pop("bouncedRecipients")), "field 'bounce.bouncedRecipients' missing"),
        (changed(lambda m: m["bounce"].update(bounceType="Sideways")), "field 'bounce.bounceType': Input should be"),
        (changed(lambda m: m.pop("bounce")), "field 'bounce' missing"),
        (
            changed(lambda m: [m["mail"].pop("headers"), m["mail"].pop("commonHeaders")]),
            "no Message-ID in mail.headers or mail.commonHeaders.messageId",
        ),
        (changed(lambda m: m.update(notificationType="Mystery")), "SES notificationType 'Mystery' is not Bounce"),
        (json.dumps({**envelope, "Message": "{nope"}).encode(), "SNS Message is not JSON: JSONDecodeError"),
        (b'{"notificationType": "Bounce"}', "field 'mail' missing"),
        (b"\xff", "SES notification is not JSON: UnicodeDecodeError"),
    ]
    for body, want in cases:
        assert refusal(parse_ses, body).startswith(want)


# --- generic JSON --------------------------------------------------------------------------------


def test_generic_list_and_single() -> None:
    body = sample("generic.json")
    bounces = parse_generic(body)
    assert summary(bounces) == [
        (
            "<0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6@factura.example.com>",
            "tesoreria@cliente.example.com",
            "hard",
            "5.1.1",
            "json",
        ),
        (
            "<1e2f3a4b-5c6d-4e7f-8091-a2b3c4d5e6f7@factura.example.com>",
            "admin@cliente.example.com",
            "complaint",
            None,
            "json",
        ),
    ]
    assert bounces[1].diagnostic == "recipient marked the invoice as spam"
    assert parse_report("application/json", body) == bounces
    (single,) = parse_generic(b'{"message_id": "bare@x.example", "type": "soft"}')
    assert (single.message_id, single.recipient, single.diagnostic) == ("<bare@x.example>", None, "soft bounce")


@pytest.mark.parametrize(
    ("doc", "want"),
    [
        ({"type": "hard"}, "field 'message_id' missing"),
        ({"message_id": "<a@b>", "type": "bounced"}, "field 'type': Input should be"),
        ({"message_id": "<a@b>", "type": "hard", "status": "550"}, "field 'status': String should match"),
        ({"message_id": "<a@b>", "type": "hard", "messageId": "x"}, "field 'messageId': Extra inputs"),
        ({"message_id": "two words", "type": "hard"}, "field 'message_id' is not a Message-ID"),
        ([{"message_id": "<a@b>", "type": "hard"}, {"message_id": "<c@d>"}], "field '[1].type' missing"),
        (
            [{"message_id": "<a@b>", "type": "hard"}, {"message_id": "<>", "type": "hard"}],
            "field '[1].message_id' is not",
        ),
        ([{"message_id": "<a@b>", "type": "hard"}] * 1001, "list of 1001 reports, over the 1000 limit"),
        ("hard", "field '$': Input should be a valid dictionary"),
    ],
)
def test_generic_errors_name_the_field(doc: Any, want: str) -> None:
    with pytest.raises(BadReport) as excinfo:
        parse_generic(json.dumps(doc).encode())
    assert str(excinfo.value).startswith(want)


def test_generic_accepts_a_thousand_items() -> None:
    assert len(parse_generic(json.dumps([{"message_id": "<a@b>", "type": "hard"}] * 1000).encode())) == 1000


# --- dispatch ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "want"),
    [
        ("text/html", b"<p>bounce</p>", "content type 'text/html' is not multipart/report"),
        ("", b"{}", "content type '(missing)'"),
        ("application/json", b"[" * 100_000, "report is not JSON: RecursionError"),
        ("application/json", b"{not json", "report is not JSON: JSONDecodeError"),
        ("application/json", b" " * (1024 * 1024 + 1), "report is 1048577 bytes, over the 1048576 byte limit"),
    ],
)
def test_parse_report_refusals(content_type: str, body: bytes, want: str) -> None:
    with pytest.raises(BadReport) as excinfo:
        parse_report(content_type, body)
    assert str(excinfo.value).startswith(want)


# --- fuzzing: arbitrary or damaged input ends in a list or BadReport --------------------------------

CONTENT_TYPES = [
    "multipart/report; report-type=delivery-status; boundary=B",
    "multipart/report",
    "message/rfc822",
    "application/json",
    "text/plain; charset=utf-8",
    "image/png",
]
ALL_SAMPLES = sorted(p.name for p in SAMPLES.iterdir())


def outcome(parse: Any, *args: Any) -> None:
    try:
        result = parse(*args)
    except BadReport:
        return
    assert isinstance(result, list)
    for bounce in result:
        assert bounce.message_id.startswith("<")
        assert bounce.message_id.endswith(">")
        assert len(bounce.diagnostic) <= MAX_DIAGNOSTIC_CHARS
        assert len(bounce.evidence) <= MAX_EVIDENCE_CHARS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=4096), content_type=st.sampled_from(CONTENT_TYPES))
def test_arbitrary_bytes(body: bytes, content_type: str) -> None:
    outcome(parse_report, content_type, body)
    outcome(parse_dsn, body)
    outcome(parse_ses, body)
    outcome(parse_generic, body)


@st.composite
def damaged(draw: st.DrawFn) -> tuple[str, bytes]:
    """A sample with a few slices deleted, duplicated or replaced: reaches deep into the parsers."""
    name = draw(st.sampled_from(ALL_SAMPLES))
    raw = bytearray(sample(name))
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(raw)))
        end = draw(st.integers(start, min(len(raw), start + 64)))
        replacement = draw(
            st.one_of(
                st.binary(max_size=16),
                st.just(bytes(raw[start:end]) * 2),
                st.sampled_from(
                    [
                        b"\n",
                        b"\n\n",
                        b"--",
                        b";",
                        b":",
                        b"<",
                        b">",
                        b'"',
                        b"\\",
                        b"{",
                        b"}",
                        b"[",
                        b"null",
                        b"=?utf-8?q?=FF?=",
                    ]
                ),
            )
        )
        raw[start:end] = replacement
    return ("multipart/report" if name.endswith(".eml") else "application/json"), bytes(raw)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=damaged())
def test_damaged_samples(case: tuple[str, bytes]) -> None:
    content_type, raw = case
    outcome(parse_report, content_type, raw)
    outcome(parse_dsn, raw)


@settings(max_examples=200, deadline=None)
@given(
    doc=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "Type",
                        "Message",
                        "notificationType",
                        "eventType",
                        "mail",
                        "bounce",
                        "complaint",
                        "message_id",
                        "type",
                        "bounceType",
                        "bouncedRecipients",
                        "emailAddress",
                        "headers",
                        "commonHeaders",
                        "messageId",
                        "status",
                    ]
                ),
                children,
                max_size=6,
            )
        ),
        max_leaves=20,
    )
)
def test_arbitrary_json_documents(doc: Any) -> None:
    body = json.dumps(doc).encode()
    outcome(parse_report, "application/json", body)
    outcome(parse_ses, body)
