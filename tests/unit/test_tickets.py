"""The helpdesk client: what it sends, and how it sorts the helpdesk's answers, on canned HTTP responses.

Against the capture server, a real ledger and the broker, see tests/integration/test_tickets.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from factura.common.envelope import Envelope, make_event
from factura.common.errors import DependencyDown, ErrorKind, classify
from factura.common.events import InvoiceSummary, TicketDueV1, parse_event
from factura.common.schemas import EXAMPLES_DIR
from factura.common.webhooks import SIGNATURE_HEADER, WebhookAuthError, verify_hmac
from factura.scheduler.tickets import HelpdeskClient, HelpdeskDown, HelpdeskSettings, Opened, Refused, ticket_payload

Handler = Callable[[httpx.Request], httpx.Response]
SECRET = "helpdesk-secret-for-tests"
URL = "http://helpdesk.test/tickets"
TENANT = "harinas-sur"


def ticket_due(number: str = "F-2026-000123", *, tenant: str = TENANT, outstanding: str = "86.55") -> Envelope[Any]:
    """A fresh ``ticket.due`` (new event id) for the example invoice, renumbered."""
    example = parse_event((EXAMPLES_DIR / "reminder.due.v2.json").read_bytes()).data.invoice
    invoice: InvoiceSummary = example.model_copy(update={"invoice_number": number})
    return make_event(
        event_id=uuid.uuid4(),
        type="ticket.due",
        schema_version=1,
        data=TicketDueV1(step="after-60", days_from_due=60, outstanding=Decimal(outstanding), invoice=invoice),
        tenant_id=tenant,
        invoice_id=number,
        correlation_id=str(uuid.uuid4()),
        causation_id=None,
        producer="scheduler",
    )


def helpdesk(handler: Handler, **settings: Any) -> HelpdeskClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return HelpdeskClient(HelpdeskSettings(secret=SecretStr(SECRET), **settings), http)


def answer(status: int, body: Any = None, text: str | None = None, headers: dict[str, str] | None = None) -> Handler:
    def handle(_: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handle


async def send(handler: Handler) -> Opened | Refused:
    event = ticket_due()
    return await helpdesk(handler).open_ticket(URL, ticket_payload(event), str(event.event_id))


# -- what is sent -------------------------------------------------------------------------------


def test_the_payload_names_invoice_customer_amount_and_the_idempotency_key() -> None:
    event = ticket_due("F-9", outstanding="86.50")
    assert ticket_payload(event) == {
        "tenant_id": TENANT,
        "invoice_number": "F-9",
        "customer": {
            "id": "C-1042",
            "name": "Pastelería Lucía S.L.",
            "email": "facturas@pasteleria-lucia.es",
            "phone": "+34612345678",
        },
        "amount_outstanding": "86.50",
        "currency": "EUR",
        "due_date": "2026-12-02",
        "days_overdue": 60,
        "step": "after-60",
        "idempotency_key": str(event.event_id),
    }


async def test_the_request_is_signed_json_with_an_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"id": "T-1"})

    event = ticket_due()
    await helpdesk(handle).open_ticket(URL, ticket_payload(event), str(event.event_id))
    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == URL
    assert request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"] == str(event.event_id)
    verify_hmac(request.content, request.headers[SIGNATURE_HEADER], [SECRET.encode()])
    with pytest.raises(WebhookAuthError, match="does not match"):
        verify_hmac(request.content, request.headers[SIGNATURE_HEADER], [b"another-secret-entirely"])
    assert json.loads(request.content) == ticket_payload(event)


# -- accepted -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "ref"),
    [
        (201, {"id": "T-7"}, "T-7"),
        (200, {"ticket_id": 4021}, "4021"),
        (202, {"id": "", "ticket_id": "ZD-9"}, "ZD-9"),
        (201, {"id": True}, None),
        (201, {"id": "x" * 201}, None),
        (201, ["T-7"], None),
        (204, None, None),
    ],
)
async def test_2xx_opens_the_ticket_with_the_helpdesks_id_when_it_gave_one(
    status: int, body: Any, ref: str | None
) -> None:
    assert await send(answer(status, body)) == Opened(status, ref)


async def test_a_2xx_that_is_not_json_still_opens_the_ticket() -> None:
    assert await send(answer(201, text="created")) == Opened(201, None)


# -- not now ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_timeouts_throttling_and_5xx_mean_the_helpdesk_is_down(status: int) -> None:
    with pytest.raises(HelpdeskDown) as caught:
        await send(answer(status, {"error": "busy"}))
    assert caught.value.status == status
    assert caught.value.dependency == "helpdesk"
    assert classify(caught.value) == (ErrorKind.TRANSIENT, "helpdesk")  # the loop retries, never dead-letters


async def test_429_carries_retry_after() -> None:
    with pytest.raises(DependencyDown) as caught:
        await send(answer(429, headers={"Retry-After": "7"}))
    assert caught.value.retry_after_s == 7.0
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    with pytest.raises(DependencyDown) as caught:
        await send(answer(429, headers={"Retry-After": soon}))
    assert 25 <= (caught.value.retry_after_s or 0) <= 30
    with pytest.raises(DependencyDown) as caught:
        await send(answer(503))
    assert caught.value.retry_after_s is None


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("connection refused"), httpx.ReadTimeout("timed out"), httpx.RemoteProtocolError("eof")],
)
async def test_no_answer_means_the_helpdesk_is_down(error: httpx.TransportError) -> None:
    def handle(_: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(HelpdeskDown) as caught:
        await send(handle)
    assert caught.value.status is None
    assert type(error).__name__ in caught.value.detail


# -- refused ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
async def test_other_4xx_refuse_the_ticket_with_the_start_of_the_body(status: int) -> None:
    body = {"error": "invalid", "detail": "customer unknown " + "x" * 1000}
    refused = await send(answer(status, body))
    assert isinstance(refused, Refused)
    assert refused.status == status
    assert refused.detail == json.dumps(body, separators=(",", ":"))[:500]


async def test_an_empty_refusal_still_says_what_happened() -> None:
    assert await send(answer(404, text="")) == Refused(404, "HTTP 404 with an empty body")


async def test_a_redirect_is_a_refusal_not_followed() -> None:
    refused = await send(answer(301, text="moved", headers={"Location": "http://elsewhere.test/"}))
    assert refused == Refused(301, "moved")


async def test_a_url_that_cannot_be_fetched_is_refused_without_an_answer() -> None:
    client = HelpdeskClient(HelpdeskSettings(secret=SecretStr(SECRET)), httpx.AsyncClient())
    refused = await client.open_ticket("ftp://helpdesk.test/tickets", {"invoice_number": "F-1"}, "k")
    assert isinstance(refused, Refused)
    assert refused.status == 0
    assert "unsupported protocol" in refused.detail


def test_settings_refuse_an_empty_secret_and_a_zero_attempt_budget() -> None:
    with pytest.raises(ValueError, match="secret"):
        HelpdeskSettings(secret=SecretStr(""))
    with pytest.raises(ValueError, match="max_attempts"):
        HelpdeskSettings(secret=SecretStr(SECRET), max_attempts=0)
