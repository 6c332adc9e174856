"""Twilio- and FCM-shaped provider capture server: the local stand-in for Twilio's Messages and
Calls APIs and for Firebase Cloud Messaging's HTTP v1 send.

The sms-sender only ever sees base URLs and credentials, so pointing it here exercises its real
HTTP clients: Basic or bearer auth, form or JSON requests, the providers' error bodies, 429 with
``Retry-After``, and signed status callbacks. Every message, call and push (sent or refused) is
recorded in memory (``GET /_capture/messages``, ``/_capture/calls``, ``/_capture/pushes``) and in
``sms.jsonl``, ``calls.jsonl`` and ``push.jsonl`` (read back when the server restarts) so tests and
the demo can see what would have reached a phone. Throttled requests (429) create nothing, as with
the real providers. Twilio's message list (``GET .../Messages.json``) answers what the sms-sender
asks before it retries a delivery: did an earlier attempt's message get through?

Rules, by the ``To`` number's prefix (see :class:`ProviderConfig`):

* failing (``+1312555``): 400/21211, not a valid phone number (messages and calls);
* not mobile (``+3491``, Spanish landlines): SMS 400/21614; calls go through (a landline rings);
* unsubscribed (``+1555610``): SMS 400/21610, the recipient replied STOP;
* busy (``+1555429``): 429/20429 with ``Retry-After`` (messages and calls);
* undelivered (``+1555000``): accepted, then the status callback says ``undelivered`` (30003) for
  a message and ``no-answer`` for a call; every other accepted number gets ``delivered`` /
  ``completed``.

Push device tokens starting with ``bad-`` answer 404 ``UNREGISTERED``; with ``busy-``, 429
``QUOTA_EXCEEDED`` with ``Retry-After``.

It is also a tenant's helpdesk: ``POST /_helpdesk/tickets`` takes the scheduler's JSON tickets,
signed with ``X-Factura-Signature`` under the helpdesk secret (``--helpdesk-secret``, by default the
auth token), and answers 201 ``{"id": "T-<n>"}``. By the ticket's ``invoice_number``: ``REJECT-...``
answers 422 with a JSON error; ``FLAKY-...`` answers 503 the first time its ``Idempotency-Key`` is
seen, 201 after. Every authenticated, well-formed request is recorded with the status it got
(``GET /_capture/tickets``, ``tickets.jsonl``); nothing is deduplicated, so a ticket sent twice
shows twice.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote
from xml.etree import ElementTree as ET

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from factura.common.webhooks import SIGNATURE_HEADER, WebhookAuthError, verify_hmac

log = logging.getLogger("factura.devstack.sms")

DEFAULT_FAILING_PREFIXES = ("+1312555",)
DEFAULT_NOT_MOBILE_PREFIXES = ("+3491",)
DEFAULT_UNSUBSCRIBED_PREFIXES = ("+1555610",)
DEFAULT_BUSY_PREFIXES = ("+1555429",)
DEFAULT_UNDELIVERED_PREFIXES = ("+1555000",)
REJECT_TICKET_PREFIX = "REJECT-"
FLAKY_TICKET_PREFIX = "FLAKY-"
DEAD_TOKEN_PREFIX = "bad-"
BUSY_TOKEN_PREFIX = "busy-"
#: Twilio's answers when a required field is missing.
_MISSING = {
    "To": (21604, "A 'To' phone number is required."),
    "From": (21603, "A 'From' phone number is required."),
    "Body": (21602, "Message body is required."),
}
_MISSING_CALL = {
    "To": (21201, "No 'To' number is specified"),
    "From": (21213, "No 'From' number is specified"),
}
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


@dataclass(frozen=True)
class ProviderConfig:
    data_dir: Path
    account_sid: str
    auth_token: str
    failing_prefixes: tuple[str, ...] = DEFAULT_FAILING_PREFIXES
    not_mobile_prefixes: tuple[str, ...] = DEFAULT_NOT_MOBILE_PREFIXES
    unsubscribed_prefixes: tuple[str, ...] = DEFAULT_UNSUBSCRIBED_PREFIXES
    busy_prefixes: tuple[str, ...] = DEFAULT_BUSY_PREFIXES
    undelivered_prefixes: tuple[str, ...] = DEFAULT_UNDELIVERED_PREFIXES
    retry_after_s: int = 2
    #: FCM bearer token the push endpoint accepts; ``None``: the Twilio auth token.
    push_token: str | None = None
    #: How long after accepting the status callback is sent (the real providers take seconds).
    callback_delay_s: float = 0.2
    #: HMAC key the helpdesk checks tickets' signatures with; ``None``: the Twilio auth token.
    helpdesk_secret: str | None = None


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's ``X-Twilio-Signature``: HMAC-SHA1 over the URL plus the sorted form fields."""
    payload = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def _error(code: int, message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "status": status}, status_code=status, headers=headers)


def _fcm_error(
    status: int, rpc_status: str, message: str, error_code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """FCM's error body: a google.rpc status, with FCM's own ``errorCode`` in ``details`` when it has one."""
    details = [{"@type": _FCM_ERROR, "errorCode": error_code}] if error_code else []
    body = {"error": {"code": status, "message": message, "status": rpc_status, "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def _authorized(request: Request, cfg: ProviderConfig, account_sid: str) -> bool:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    expected = f"{cfg.account_sid}:{cfg.auth_token}".encode()
    return account_sid == cfg.account_sid and hmac.compare_digest(f"{user}:{password}".encode(), expected)


def _bearer_ok(request: Request, cfg: ProviderConfig) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = cfg.push_token if cfg.push_token is not None else cfg.auth_token
    return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), expected.encode())


async def _status_callback(url: str, params: dict[str, str], auth_token: str, delay_s: float) -> None:
    """Tell the sender how its message or call ended; best effort, like the real provider."""
    await asyncio.sleep(delay_s)
    headers = {"X-Twilio-Signature": twilio_signature(auth_token, url, params)}
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.post(url, data=params, headers=headers)
        log.info("status callback %s -> %d", url, response.status_code)
    except httpx.HTTPError as e:
        log.warning("status callback %s failed: %s", url, e)


def _spoken(twiml: str) -> tuple[str, str | None]:
    """The text and language of a TwiML document's ``<Say>`` verbs; ``ET.ParseError`` if not XML."""
    says = list(ET.fromstring(twiml).iter("Say"))  # Python's expat expands no external entities
    return " ".join("".join(s.itertext()) for s in says), (says[0].get("language") if says else None)


def _now() -> str:
    return datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")


class _Answer(Exception):
    """An error answer, raised by the checks so each endpoint reads as its happy path."""

    def __init__(self, response: JSONResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


class _Capture:
    """What the endpoints share: the rules, the logs (memory and journals), pending callbacks."""

    def __init__(self, cfg: ProviderConfig) -> None:
        self.cfg = cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        # A restarted capture remembers what it took, as a real provider does across its deploys.
        self.logs: dict[str, list[dict[str, Any]]] = {
            kind: self._journal(kind) for kind in ("sms", "calls", "push", "tickets")
        }
        self._tickets_opened = sum(1 for t in self.logs["tickets"] if t.get("status") == 201)
        self._flaky_answered: set[str] = set()  # idempotency keys already answered 503
        self._callbacks: set[asyncio.Task[None]] = set()  # held so pending ones are not garbage-collected

    def _journal(self, kind: str) -> list[dict[str, Any]]:
        path = self.cfg.data_dir / f"{kind}.jsonl"
        if not path.exists():
            return []
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def record(self, kind: str, entry: dict[str, Any]) -> None:
        self.logs[kind].append(entry)
        with (self.cfg.data_dir / f"{kind}.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def callback(self, url: str, params: dict[str, str]) -> None:
        task = asyncio.create_task(_status_callback(url, params, self.cfg.auth_token, self.cfg.callback_delay_s))
        self._callbacks.add(task)
        task.add_done_callback(self._callbacks.discard)

    async def _twilio_form(
        self, request: Request, account_sid: str, required: dict[str, tuple[int, str]]
    ) -> dict[str, str]:
        """The request's form once authenticated, complete, and not throttled by the busy rule."""
        if not _authorized(request, self.cfg, account_sid):
            raise _Answer(_error(20003, "Authenticate", 401))
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        for field, (code, text) in required.items():
            if not form.get(field):
                raise _Answer(_error(code, text, 400))
        if form["To"].startswith(self.cfg.busy_prefixes):
            raise _Answer(_error(20429, "Too Many Requests", 429, {"Retry-After": str(self.cfg.retry_after_s)}))
        return form

    def _sms_refusal(self, to: str) -> tuple[int, str] | None:
        cfg = self.cfg
        if to.startswith(cfg.failing_prefixes):
            return 21211, f"The 'To' number {to} is not a valid phone number."
        if to.startswith(cfg.unsubscribed_prefixes):
            return 21610, "Attempt to send to unsubscribed recipient"
        if to.startswith(cfg.not_mobile_prefixes):
            return 21614, f"'To' number {to} is not a valid mobile number"
        return None

    async def message(self, account_sid: str, request: Request) -> JSONResponse:
        form = await self._twilio_form(request, account_sid, _MISSING)
        to = form["To"]
        refusal = self._sms_refusal(to)
        message: dict[str, Any] = {
            "sid": "SM" + secrets.token_hex(16),
            "status": "failed" if refusal else "queued",
            "to": to,
            "from": form["From"],
            "body": form["Body"],
            "account_sid": account_sid,
            "date_created": _now(),
            "error_code": refusal[0] if refusal else None,
            "error_message": refusal[1] if refusal else None,
        }
        self.record("sms", message)
        if refusal:
            return _error(*refusal, 400)
        if url := form.get("StatusCallback"):
            params = {"MessageSid": message["sid"], "AccountSid": account_sid, "To": to, "From": form["From"]}
            if to.startswith(self.cfg.undelivered_prefixes):
                params |= {"MessageStatus": "undelivered", "ErrorCode": "30003"}
            else:
                params |= {"MessageStatus": "delivered"}
            self.callback(url, params)
        return JSONResponse(message, status_code=201)

    async def messages(self, account_sid: str, request: Request) -> JSONResponse:
        """Twilio's message list: newest first, filtered by ``To`` and ``From``, ``PageSize`` a page.

        Like Twilio's, it lists what the provider took; the refusals (400s) recorded for the tests
        are not messages there.
        """
        if not _authorized(request, self.cfg, account_sid):
            return _error(20003, "Authenticate", 401)
        query = request.query_params
        try:
            size, page = min(int(query.get("PageSize", "50")), 1000), int(query.get("Page", "0"))
        except ValueError:
            return _error(20001, "Invalid paging parameters", 400)
        if size < 1 or page < 0:
            return _error(20001, "Invalid paging parameters", 400)
        listed = [
            m
            for m in reversed(self.logs["sms"])
            if m["error_code"] is None
            and m["account_sid"] == account_sid
            and query.get("To", m["to"]) == m["to"]
            and query.get("From", m["from"]) == m["from"]
        ]
        path = f"/2010-04-01/Accounts/{account_sid}/Messages.json"
        filters = "".join(f"{name}={quote(query[name])}&" for name in ("To", "From") if name in query)
        following = f"{path}?{filters}PageSize={size}&Page={page + 1}" if len(listed) > (page + 1) * size else None
        return JSONResponse(
            {
                "messages": listed[page * size : (page + 1) * size],
                "page": page,
                "page_size": size,
                "next_page_uri": following,
                "uri": f"{path}?{filters}PageSize={size}&Page={page}",
            }
        )

    async def call(self, account_sid: str, request: Request) -> JSONResponse:
        form = await self._twilio_form(request, account_sid, _MISSING_CALL)
        if not form.get("Twiml") and not form.get("Url"):
            return _error(21205, "Url parameter is required.", 400)
        to, twiml = form["To"], form.get("Twiml", "")
        try:
            said, language = _spoken(twiml) if twiml else ("", None)
        except ET.ParseError as e:
            return _error(12100, f"Document parse failure: {e}", 400)
        invalid = f"Invalid 'To' Phone Number: {to}" if to.startswith(self.cfg.failing_prefixes) else None
        entry: dict[str, Any] = {
            "sid": "CA" + secrets.token_hex(16),
            "status": "failed" if invalid else "queued",
            "to": to,
            "from": form["From"],
            "twiml": twiml or None,
            "url": form.get("Url"),
            "say": said,
            "language": language,
            "account_sid": account_sid,
            "date_created": _now(),
            "error_code": 21211 if invalid else None,
            "error_message": invalid,
        }
        self.record("calls", entry)
        if invalid:
            return _error(21211, invalid, 400)
        if url := form.get("StatusCallback"):
            answered = not to.startswith(self.cfg.undelivered_prefixes)
            params = {"CallSid": entry["sid"], "AccountSid": account_sid, "To": to, "From": form["From"]}
            self.callback(url, params | {"CallStatus": "completed" if answered else "no-answer"})
        return JSONResponse(entry, status_code=201)

    async def push(self, project_id: str, request: Request) -> JSONResponse:
        if not _bearer_ok(request, self.cfg):
            return _fcm_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        body, message = await _fcm_message(request)
        name = f"projects/{project_id}/messages/"
        if body.get("validate_only"):
            return JSONResponse({"name": name + "fake_message_id"})
        token = str(message.get("token", ""))
        if token.startswith(BUSY_TOKEN_PREFIX):
            retry = {"Retry-After": str(self.cfg.retry_after_s)}
            return _fcm_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", "QUOTA_EXCEEDED", retry)
        dead = token.startswith(DEAD_TOKEN_PREFIX)
        entry = {
            "name": None if dead else name + f"0:{secrets.randbelow(10**16)}%{secrets.token_hex(8)}",
            "project_id": project_id,
            "token": token or None,
            "topic": message.get("topic"),
            "notification": message.get("notification"),
            "data": message.get("data", {}),
            "date_created": _now(),
            "error_code": "UNREGISTERED" if dead else None,
        }
        self.record("push", entry)
        if dead:
            return _fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
        return JSONResponse({"name": entry["name"]})

    async def ticket(self, request: Request) -> JSONResponse:
        raw = await request.body()
        secret = self.cfg.helpdesk_secret if self.cfg.helpdesk_secret is not None else self.cfg.auth_token
        try:
            verify_hmac(raw, request.headers.get(SIGNATURE_HEADER), [secret.encode()])
        except WebhookAuthError as e:
            return _ticket_error(401, "unauthenticated", e.reason)
        try:
            ticket = json.loads(raw)
        except ValueError:
            return _ticket_error(400, "invalid_json", "the body is not JSON")
        if not isinstance(ticket, dict) or not isinstance(number := ticket.get("invoice_number"), str):
            return _ticket_error(400, "invalid_ticket", "invoice_number (a string) is required")
        key = request.headers.get("idempotency-key", "")
        if not key:
            return _ticket_error(400, "invalid_ticket", "the Idempotency-Key header is required")
        answer: dict[str, Any]
        if number.startswith(REJECT_TICKET_PREFIX):
            status, answer = 422, _ticket_problem("unprocessable", f"invoice {number} cannot be ticketed here")
        elif number.startswith(FLAKY_TICKET_PREFIX) and key not in self._flaky_answered:
            self._flaky_answered.add(key)
            status, answer = 503, _ticket_problem("unavailable", "the helpdesk is busy, try again")
        else:
            self._tickets_opened += 1
            status, answer = 201, {"id": f"T-{self._tickets_opened}"}
        entry = {"id": answer.get("id"), "status": status, "idempotency_key": key, "date_created": _now()}
        self.record("tickets", entry | {"ticket": ticket})
        return JSONResponse(answer, status_code=status)


def _ticket_problem(error: str, detail: str) -> dict[str, Any]:
    return {"error": error, "detail": detail}


def _ticket_error(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse(_ticket_problem(error, detail), status_code=status)


async def _fcm_message(request: Request) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request body and its ``message``, checked the way FCM checks them."""
    try:
        body = await request.json()
    except ValueError as e:
        raise _Answer(_fcm_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")) from e
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, dict) or not (message.get("token") or message.get("topic")):
        raise _Answer(_fcm_error(400, "INVALID_ARGUMENT", "Recipient of the message is not set."))
    data = message.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise _Answer(_fcm_error(400, "INVALID_ARGUMENT", "Invalid value at 'message.data': values must be strings"))
    return body, message


def create_app(cfg: ProviderConfig) -> FastAPI:
    app = FastAPI(title="Factura devstack SMS, voice and push capture")
    capture = _Capture(cfg)

    async def answer(_: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, _Answer)
        return e.response

    app.add_exception_handler(_Answer, answer)
    app.post("/2010-04-01/Accounts/{account_sid}/Messages.json")(capture.message)
    app.get("/2010-04-01/Accounts/{account_sid}/Messages.json")(capture.messages)
    app.post("/2010-04-01/Accounts/{account_sid}/Calls.json")(capture.call)
    app.post("/v1/projects/{project_id}/messages:send")(capture.push)
    app.post("/_helpdesk/tickets")(capture.ticket)

    @app.get("/_capture/messages")
    async def captured_messages() -> list[dict[str, Any]]:
        return capture.logs["sms"]

    @app.get("/_capture/calls")
    async def captured_calls() -> list[dict[str, Any]]:
        return capture.logs["calls"]

    @app.get("/_capture/pushes")
    async def captured_pushes() -> list[dict[str, Any]]:
        return capture.logs["push"]

    @app.get("/_capture/tickets")
    async def captured_tickets() -> list[dict[str, Any]]:
        return capture.logs["tickets"]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _prefixes(given: list[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p for p in given if p) if given else default


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m factura.devstack.sms_capture",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--account-sid", required=True)
    parser.add_argument("--auth-token", required=True)
    rules = "repeatable; '' turns the rule off; default "
    parser.add_argument("--failing-prefix", action="append", help=rules + DEFAULT_FAILING_PREFIXES[0])
    parser.add_argument("--not-mobile-prefix", action="append", help=rules + DEFAULT_NOT_MOBILE_PREFIXES[0])
    parser.add_argument("--unsubscribed-prefix", action="append", help=rules + DEFAULT_UNSUBSCRIBED_PREFIXES[0])
    parser.add_argument("--busy-prefix", action="append", help=rules + DEFAULT_BUSY_PREFIXES[0])
    parser.add_argument("--undelivered-prefix", action="append", help=rules + DEFAULT_UNDELIVERED_PREFIXES[0])
    parser.add_argument("--retry-after", type=int, default=2, help="Retry-After seconds of a 429 (default 2)")
    parser.add_argument("--push-token", help="FCM bearer token accepted (default: the auth token)")
    parser.add_argument("--callback-delay", type=float, default=0.2, help="seconds before a status callback")
    parser.add_argument("--helpdesk-secret", help="HMAC key of helpdesk tickets' signatures (default: the auth token)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cfg = ProviderConfig(
        args.data_dir,
        args.account_sid,
        args.auth_token,
        failing_prefixes=_prefixes(args.failing_prefix, DEFAULT_FAILING_PREFIXES),
        not_mobile_prefixes=_prefixes(args.not_mobile_prefix, DEFAULT_NOT_MOBILE_PREFIXES),
        unsubscribed_prefixes=_prefixes(args.unsubscribed_prefix, DEFAULT_UNSUBSCRIBED_PREFIXES),
        busy_prefixes=_prefixes(args.busy_prefix, DEFAULT_BUSY_PREFIXES),
        undelivered_prefixes=_prefixes(args.undelivered_prefix, DEFAULT_UNDELIVERED_PREFIXES),
        retry_after_s=args.retry_after,
        push_token=args.push_token,
        callback_delay_s=args.callback_delay,
        helpdesk_secret=args.helpdesk_secret,
    )
    uvicorn.run(create_app(cfg), host=args.host, port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
