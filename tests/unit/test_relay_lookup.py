"""The relay lookup's reading of Mailpit-shaped answers (on httpx.MockTransport), its setting, and
the SMTP capture's message index and search API (in-process, on a Maildir of the test's own)."""

from __future__ import annotations

import mailbox
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from factura.common.errors import DependencyDown
from factura.devstack.smtp_capture import MessageIndex, create_api
from factura.email_sender.relay_lookup import PAGE_SIZE, RelayLookup
from factura.email_sender.settings import SmtpSettings

MID = "<1b2c.email@factura.example>"
BARE = "1b2c.email@factura.example"
SINCE = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
AFTER = "2026-03-01T12:00:01.5Z"


def listed(message_id: str = BARE, created: str = AFTER, key: str = "k1") -> dict[str, Any]:
    return {"ID": key, "MessageID": message_id, "Created": created, "Subject": "ignored"}


def page(*messages: dict[str, Any], count: int | None = None) -> dict[str, Any]:
    n = len(messages) if count is None else count
    return {"total": 99, "messages_count": n, "count": len(messages), "start": 0, "messages": list(messages)}


def lookup(answer: Callable[[httpx.Request], httpx.Response]) -> RelayLookup:
    return RelayLookup("http://relay.test:8025/", httpx.AsyncClient(transport=httpx.MockTransport(answer)), 1.0)


def replying(status: int = 200, **kwargs: Any) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, **kwargs)


# -- the client ----------------------------------------------------------------------------------


async def test_asks_mailpits_search_for_the_bare_id_and_returns_the_match() -> None:
    asked: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(200, json=page(listed(key="older", created="2026-03-01T12:00:01Z"), listed(key="newer")))

    found = await lookup(answer).accepted(MID, SINCE)

    assert found is not None and found.ID == "newer" and found.MessageID == BARE
    [request] = asked
    assert request.url.path == "/api/v1/search"
    assert request.url.params["query"] == f"message-id:{BARE}"
    assert request.url.params["limit"] == str(PAGE_SIZE)


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [listed(created="2026-03-01T11:59:59.999Z")],  # accepted before this delivery's first claim
        [listed(message_id=f"x{BARE}")],  # Mailpit matches substrings: only the whole id counts
        [listed(created="2026-03-01T13:00:00+02:00")],  # 11:00 UTC
    ],
    ids=["none", "before-since", "substring", "offset-before-since"],
)
async def test_no_exact_match_since_then_is_no(messages: list[dict[str, Any]]) -> None:
    assert await lookup(replying(json=page(*messages))).accepted(MID, SINCE) is None


async def test_a_match_in_angle_brackets_counts() -> None:
    assert await lookup(replying(json=page(listed(message_id=MID)))).accepted(MID, SINCE) is not None


@pytest.mark.parametrize(
    "answer",
    [
        replying(500, text="boom"),
        replying(503, headers={"Retry-After": "3"}),
        replying(404, text="no such page"),  # a relay without the API, or a wrong URL: a configuration fix
        replying(401),
        replying(200, text="<html>a login page</html>"),
        replying(200, json=[]),
        replying(200, json={"total": 1}),
        replying(200, json=page(listed(created="yesterday"))),
        replying(200, json=page(listed(created="2026-03-01T12:00:01"))),  # no zone: cannot compare
        replying(200, json=page({"ID": "k1", "Created": AFTER})),
    ],
    ids=["500", "503", "404", "401", "html", "list", "no-messages", "bad-date", "naive-date", "no-message-id"],
)
async def test_an_answer_that_is_not_a_readable_list_is_not_a_no(
    answer: Callable[[httpx.Request], httpx.Response],
) -> None:
    with pytest.raises(DependencyDown) as down:
        await lookup(answer).accepted(MID, SINCE)
    assert down.value.dependency == "smtp" and "relay lookup" in down.value.detail


async def test_a_503_carries_its_retry_after() -> None:
    with pytest.raises(DependencyDown) as down:
        await lookup(replying(503, headers={"Retry-After": "3"})).accepted(MID, SINCE)
    assert down.value.retry_after_s == 3


@pytest.mark.parametrize("error", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")])
async def test_a_relay_that_cannot_be_reached_is_smtp_down(error: httpx.TransportError) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(DependencyDown) as down:
        await lookup(answer).accepted(MID, SINCE)
    assert down.value.dependency == "smtp" and type(error).__name__ in down.value.detail
    assert down.value.__cause__ is error


async def test_more_matches_than_one_page_without_a_hit_is_not_a_no() -> None:
    old = listed(created="2026-03-01T11:00:00Z")
    with pytest.raises(DependencyDown, match="more than"):
        await lookup(replying(json=page(old, count=PAGE_SIZE + 1))).accepted(MID, SINCE)


# -- the setting ---------------------------------------------------------------------------------


def test_lookup_url_is_off_by_default_and_when_empty() -> None:
    assert SmtpSettings().lookup_url is None
    assert SmtpSettings(lookup_url="").lookup_url is None
    assert SmtpSettings(lookup_url="https://mailpit.test:8025/").lookup_url == "https://mailpit.test:8025"


def test_lookup_url_must_be_http() -> None:
    with pytest.raises(ValidationError, match="lookup_url"):
        SmtpSettings(lookup_url="mailpit.test:8025")


# -- the capture's index and API -----------------------------------------------------------------


def mail(message_id: str | None) -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@factura.example", "b@cliente.test", "x"
    if message_id is not None:
        message["Message-ID"] = message_id
    message.set_content("Message-ID: <in-the-body@not.a.header>\n")
    return bytes(message)


def test_the_index_is_rebuilt_from_the_maildir_new_and_cur(tmp_path: Path) -> None:
    box = mailbox.Maildir(tmp_path / "md", create=True)
    fresh = box.add(mail(MID))
    seen = box.add(mail(MID))
    message = box.get_message(seen)
    message.set_subdir("cur")
    message.add_flag("S")  # read: moved to cur/ as <key>:2,S
    box[seen] = message
    box.add(mail(None))
    box.add(mail("<in-the-body@not.a.header.other>"))

    index = MessageIndex.load(tmp_path / "md")

    assert index.total == 4
    assert {c.key for c in index.find(MID)} == {fresh, seen} == {c.key for c in index.find(BARE)}
    assert index.find("<in-the-body@not.a.header>") == []


async def test_the_api_answers_like_mailpit_for_every_spelling_of_the_id(tmp_path: Path) -> None:
    index = MessageIndex()
    index.add("k1", mail(MID), SINCE)
    index.add("k2", mail(MID), SINCE + timedelta(seconds=1))
    index.add("k3", mail("<other@factura.example>"), SINCE)
    transport = httpx.ASGITransport(app=create_api(index))
    async with httpx.AsyncClient(transport=transport, base_url="http://capture") as client:
        answers = [
            (await client.get("/api/v1/search", params={"query": q})).json()
            for q in (f"message-id:{BARE}", f"message-id:{MID}", f'message-id:"{MID}"', f'Message-ID:"{BARE}"')
        ]
        second = (await client.get("/api/v1/search", params={"query": f"message-id:{BARE}", "start": 1})).json()
        unknown = (await client.get("/api/v1/search", params={"query": "message-id:nobody@x"})).json()
        other = await client.get("/api/v1/search", params={"query": "subject:x"})

    newest_first = [
        {"ID": "k2", "MessageID": BARE, "Created": "2026-03-01T12:00:01.000000Z"},
        {"ID": "k1", "MessageID": BARE, "Created": "2026-03-01T12:00:00.000000Z"},
    ]
    expected = {"total": 3, "messages_count": 2, "count": 2, "start": 0, "messages": newest_first}
    assert answers == [expected] * 4
    assert second["messages"] == newest_first[1:] and second["messages_count"] == 2
    assert unknown["messages"] == [] and unknown["messages_count"] == 0
    assert other.status_code == 400
