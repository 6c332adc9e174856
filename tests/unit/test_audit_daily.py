"""The daily summary without servers: local days, the route's checks, the request the senders make of
``report.due``, and the owner's email in every product language."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from factura.audit.daily import DailyReports, daily_router, local_day, report_event
from factura.common.apikeys import Principal, Role, authenticator
from factura.common.delivery.sender import PROCESS_OWNER, request_of
from factura.common.events import LOCALES, Amount, Attempt, ChannelFigures, DailyReport, parse_event
from factura.common.locales import money
from factura.common.tenants import TenantConfig, TenantDirectory
from factura.email_sender.message import EmailLinks, build_email

KEYS = {
    "reader": Principal("k1", Role.COMPLIANCE_READER, ("acme",), "reader"),
    "admin": Principal("k2", Role.ADMIN, ("*",), "admin"),
    "ingest": Principal("k3", Role.INGEST, ("acme",), "ingest"),
}


class Keys:
    async def verify(self, presented: str) -> Principal | None:
        return KEYS.get(presented)


class NoRecords:
    """A collection with nothing in it: what the route reads for a tenant without records."""

    def find(self, *args: Any, **kwargs: Any) -> NoRecords:
        return self

    def limit(self, n: int) -> NoRecords:
        return self

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        raise StopAsyncIteration


def tenant(**audit: Any) -> TenantConfig:
    return TenantConfig.model_validate(
        {
            "tenant_id": "acme",
            "branding": {"display_name": "Acme"},
            "reminders": {"timezone": "Europe/Madrid"},
            "audit": audit,
        }
    )


def report(day: date = date(2026, 11, 20)) -> DailyReport:
    start, end = local_day("Europe/Madrid", day)
    return DailyReport(
        tenant_id="acme",
        day=day,
        timezone="Europe/Madrid",
        start=start,
        end=end,
        sent=5,
        delivered=3,
        failed=2,
        exhausted=1,
        failed_by_reason={"hard_bounce": 2},
        by_channel={"email": ChannelFigures(delivered=2, failed=2), "sms": ChannelFigures(delivered=1, failed=0)},
        by_purpose={"invoice": 2, "reminder": 1},
        reminders_due=1,
        reminders_delivered=1,
        payments=1,
        paid=[Amount(currency="EUR", amount=Decimal("10.00"))],
        unpaid=2,
        unpaid_amount=[Amount(currency="EUR", amount=Decimal("1234.50"))],
        unpaid_window_days=365,
        unpaid_complete=True,
    )


def test_a_local_day_follows_daylight_saving_time() -> None:
    start, end = local_day("Europe/Madrid", date(2026, 3, 29))  # clocks go forward: 23 hours
    assert start == datetime(2026, 3, 28, 23, tzinfo=UTC)
    assert end - start == timedelta(hours=23)
    assert local_day("UTC", date(2026, 1, 1)) == (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))


def test_due_after_the_local_report_hour_for_tenants_with_an_owner() -> None:
    class Directory(TenantDirectory):
        def __init__(self, *configs: TenantConfig) -> None:
            super().__init__(None)
            self._configs = {c.tenant_id: c for c in configs}

    owned = tenant(owner_email="owner@acme.test", daily_report_hour=7)
    silent = TenantConfig.model_validate({"tenant_id": "quiet"})
    records = cast(Any, NoRecords())

    def due_at(now: datetime) -> list[tuple[str, date]]:
        task = DailyReports(records, records, Directory(owned, silent), cast(Any, None), now=lambda: now)
        return [(t.tenant_id, d) for t, d in task.due()]

    assert due_at(datetime(2026, 11, 21, 5, 59, tzinfo=UTC)) == []  # 06:59 in Madrid
    assert due_at(datetime(2026, 11, 21, 6, 0, tzinfo=UTC)) == [("acme", date(2026, 11, 20))]


def test_report_due_is_an_email_to_the_owner_and_nothing_else() -> None:
    config = tenant(owner_email="owner@acme.test")
    event = report_event(config, report())
    assert event is not None
    assert report_event(tenant(), report()) is None  # no owner, no report
    again = report_event(config, report())
    assert again is not None and again.event_id == event.event_id  # one id per tenant and day
    parsed = parse_event(event.model_dump_json())
    config = config.model_copy(update={"delivery": config.delivery.model_copy(update={"channels": ["sms", "email"]})})
    request = request_of(parsed, config)
    assert request is not None
    assert request.channel == "email"
    assert request.notice.purpose == "report"
    assert request.notice.invoice.customer.customer_id == PROCESS_OWNER
    assert request.notice.invoice.customer.email == "owner@acme.test"
    bounced = Attempt(channel="email", reason="hard_bounce", detail="550")
    assert config.delivery.after(request.notice, [bounced]) is None  # no SMS fallback


@pytest.mark.parametrize("lang", LOCALES)
def test_the_owner_email_in_every_language(lang: str) -> None:
    config = tenant(owner_email="owner@acme.test")
    event = report_event(config, report())
    assert event is not None
    data = event.data.model_copy(update={"locale": lang})
    request = request_of(event.model_copy(update={"data": data}), config)
    assert request is not None
    mail = build_email(
        notice=request.notice,
        tenant=config,
        recipient="owner@acme.test",
        attachment=None,
        links=EmailLinks(payment="https://pay.example/x", pixel="https://t.example/p.gif"),
        message_id="<r.email@acme.test>",
        default_sender=("Acme", "billing@acme.test"),
    )
    assert mail["To"] == "owner@acme.test"
    assert "Acme" in mail["Subject"] and "{" not in mail["Subject"]
    text, html = mail.get_body(("plain",)), mail.get_body(("html",))
    assert text is not None and html is not None
    body, page = text.get_content(), html.get_content()
    owner = request.notice.invoice.customer
    assert "{" not in body and money(Decimal("1234.50"), "EUR", owner) in body
    assert "pay.example" not in page and "t.example" not in page  # no payment link, no pixel
    assert not list(mail.iter_attachments())


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    app.include_router(daily_router(cast(Any, NoRecords()), TenantDirectory(None), auth=authenticator(Keys())))
    return TestClient(app)


def test_the_route_answers_readers_of_the_tenant_only(client: TestClient) -> None:
    url = "/v1/reports/daily?tenant_id=acme&date=2026-11-20"
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"X-API-Key": "ingest"}).status_code == 403
    assert client.get(url.replace("acme", "other"), headers={"X-API-Key": "reader"}).status_code == 403
    answer = client.get(url, headers={"X-API-Key": "reader"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["day"], body["sent"], body["unpaid"], body["timezone"]) == ("2026-11-20", 0, 0, "UTC")
    assert client.get(url, headers={"Authorization": "Bearer admin"}).status_code == 200


@pytest.mark.parametrize("day", ["2026-13-01", "20261120", "1999-12-31", "2999-01-01", "", "2026-11-20T00:00"])
def test_a_bad_date_is_a_422_naming_it(client: TestClient, day: str) -> None:
    answer = client.get(f"/v1/reports/daily?tenant_id=acme&date={day}", headers={"X-API-Key": "reader"})
    assert answer.status_code == 422, answer.text
    assert json.dumps(answer.json()).count('"date"') >= 1


def test_every_answer_is_documented(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    responses = schema["paths"]["/v1/reports/daily"]["get"]["responses"]
    assert set(responses) == {"200", "400", "401", "403", "422", "503"}
