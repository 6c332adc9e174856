"""Reminder plans: validation, and the calendar math the scheduler relies on.

Instants are checked in the tenant's local time (``local()``), so each case reads like the plan:
"Monday 09:00 in Madrid", whatever the UTC offset that day.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from factura.common.reminders import (
    WEEKDAYS,
    Escalation,
    Occurrence,
    ReminderPlan,
    Repeat,
    Step,
    Ticket,
    Window,
    first_for_new_invoice,
    local_date,
    next_after,
    next_window_start,
    occurrences,
    window_open,
)
from factura.common.tenants import TenantConfig, TenantConfigError, TenantDirectory

DOC = Path(__file__).resolve().parents[2] / "docs" / "scheduler.md"
ALL_DAYS = list(WEEKDAYS)


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, *, tz: str = "UTC") -> int:
    """UTC epoch ms of a local wall time in ``tz`` (the first one, if the clocks show it twice)."""
    local = datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz))
    return int(local.timestamp() * 1000)


def local(instant_ms: int, tz: str) -> str:
    return datetime.fromtimestamp(instant_ms / 1000, ZoneInfo(tz)).strftime("%a %Y-%m-%d %H:%M")


def utc(instant_ms: int) -> str:
    return local(instant_ms, "UTC")


def by_key(plan: ReminderPlan, due: date, anchor: date | None = None) -> dict[str, Occurrence]:
    return {o.key: o for o in occurrences(plan, due, anchor=anchor)}


def plan(**fields: Any) -> ReminderPlan:
    return ReminderPlan.model_validate(fields)


# --- the model --------------------------------------------------------------------------------


def test_default_plan() -> None:
    p = TenantConfig.default("acme").reminders
    assert p == ReminderPlan()
    assert p.timezone == "UTC"
    assert p.window == Window(start=time(9), end=time(18), weekdays=["mon", "tue", "wed", "thu", "fri"])
    assert [(s.name, s.offset_days) for s in p.steps] == [
        ("before-5", -5),
        ("due", 0),
        ("after-3", 3),
        ("after-10", 10),
    ]
    assert p.repeat == Repeat(every_days=7, max_times=4)
    assert (p.escalation, p.ticket, p.receipt, p.reanchor_on_partial) == (None, None, False, False)
    assert [o.key for o in occurrences(p, date(2025, 6, 16))] == [
        "before-5#1",
        "due#1",
        "after-3#1",
        "after-10#1",
        "after-10#2",
        "after-10#3",
        "after-10#4",
        "after-10#5",
    ]


def _doc_toml() -> str:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1
    return str(blocks[0])


def test_the_documented_example_loads_and_gives_the_documented_times(tmp_path: Path) -> None:
    folder = tmp_path / "acme"
    folder.mkdir()
    (folder / "tenant.toml").write_text(_doc_toml(), encoding="utf-8")
    p = TenantDirectory(tmp_path).get("acme").reminders
    assert p.window.start == time(9) and p.window.end == time(18, 30)
    assert p.escalation == Escalation(after_days=30, every_days=7, max_times=3, channels=["voice"])
    assert p.ticket == Ticket(after_days=45, url="https://helpdesk.example.com/hooks/factura")
    assert p.step("after-3") == Step(name="after-3", offset_days=3, channels=["email", "sms"], template="reminder_firm")
    got = {o.key: (local(o.at_ms, "Europe/Madrid"), o.days_from_due) for o in occurrences(p, date(2025, 12, 29))}
    assert got == {
        "before-5#1": ("Wed 2025-12-24 09:00", -5),
        "due#1": ("Mon 2025-12-29 09:00", 0),
        "after-3#1": ("Fri 2026-01-02 09:00", 3),  # Thursday 1 January is a holiday
        "after-3#2": ("Thu 2026-01-08 09:00", 10),
        "after-3#3": ("Thu 2026-01-15 09:00", 17),
        "after-3#4": ("Thu 2026-01-22 09:00", 24),
        "after-3#5": ("Thu 2026-01-29 09:00", 31),
        "call#1": ("Wed 2026-01-28 09:00", 30),
        "call#2": ("Wed 2026-02-04 09:00", 37),
        "call#3": ("Wed 2026-02-11 09:00", 44),
        "ticket#1": ("Thu 2026-02-12 09:00", 45),
    }


@pytest.mark.parametrize(
    ("reminders", "loc", "message"),
    [
        (
            {"steps": [{"name": "due", "offset_days": 0}, {"name": "today", "offset_days": 0}]},
            "reminders.steps",
            "overlapping steps 'due' and 'today' on day 0",
        ),
        (
            {"steps": [{"name": "due", "offset_days": 0}, {"name": "due", "offset_days": 1}]},
            "reminders.steps",
            "step name 'due' is used twice",
        ),
        ({"steps": [{"name": "call", "offset_days": 0}]}, "reminders.steps", "step name 'call' is reserved"),
        ({"steps": [{"name": "ticket", "offset_days": 9}]}, "reminders.steps", "step name 'ticket' is reserved"),
        ({"steps": [{"name": "Due", "offset_days": 0}]}, "reminders.steps.0.name", "should match pattern"),
        ({"steps": [{"name": "due", "offset_days": 366}]}, "reminders.steps.0.offset_days", "less than or equal"),
        ({"steps": [{"name": "due", "offset_days": -366}]}, "reminders.steps.0.offset_days", "greater than or equal"),
        (
            {"steps": [{"name": "due", "offset_days": 0}, {"name": "late", "offset_days": 5, "channels": ["fax"]}]},
            "reminders.steps.1.channels.0",
            "Input should be 'email', 'sms', 'voice' or 'push'",
        ),
        (
            {"steps": [{"name": "due", "offset_days": 0, "channels": ["sms", "sms"]}]},
            "reminders.steps.0.channels",
            "a channel is listed twice",
        ),
        ({"steps": [{"name": "due", "offset_days": 0, "channels": []}]}, "reminders.steps.0.channels", "at least 1"),
        ({"steps": [{"name": "due", "offset_days": 0, "template": "../x"}]}, "reminders.steps.0.template", "pattern"),
        ({"steps": [{"name": "due", "offset_days": 0, "chanels": ["sms"]}]}, "reminders.steps.0.chanels", "Extra"),
        ({"repeat": {"max_times": -1}}, "reminders.repeat.max_times", "greater than or equal to 0"),
        ({"repeat": {"every_days": 0}}, "reminders.repeat.every_days", "greater than or equal to 1"),
        ({"repeat": {"until_days": 16}}, "reminders.repeat", "until_days 16 leaves no repetition of step 'after-10'"),
        ({"steps": []}, "reminders.repeat", "nothing to repeat; set repeat.max_times = 0"),
        ({"timezone": "Mars/Olympus"}, "reminders.timezone", "unknown time zone 'Mars/Olympus'"),
        ({"timezone": "CEST"}, "reminders.timezone", "unknown time zone 'CEST'"),
        ({"timezone": "/etc/localtime"}, "reminders.timezone", "unknown time zone"),
        ({"window": {"start": "18:00", "end": "09:00"}}, "reminders.window.end", "end 09:00 must be after start 18:00"),
        ({"window": {"start": "09:00", "end": "09:00"}}, "reminders.window.end", "must be after start"),
        ({"window": {"start": "09:00+02:00"}}, "reminders.window.start", "local time without offset"),
        ({"window": {"weekdays": []}}, "reminders.window.weekdays", "at least 1 item"),
        ({"window": {"weekdays": ["mon", "mon"]}}, "reminders.window.weekdays", "a weekday is listed twice"),
        ({"window": {"weekdays": ["monday"]}}, "reminders.window.weekdays.0", "'mon', 'tue'"),
        ({"window": {"holidays": ["2025-02-30"]}}, "reminders.window.holidays.0", "date"),
        ({"escalation": {"after_days": 0, "every_days": 7}}, "reminders.escalation.after_days", "greater than 0"),
        ({"escalation": {"after_days": 30}}, "reminders.escalation.every_days", "Field required"),
        ({"escalation": {"after_days": 30, "every_days": 7, "max_times": 0}}, "reminders.escalation.max_times", ">="),
        (
            {"escalation": {"after_days": 30, "every_days": 7, "channels": ["pigeon"]}},
            "reminders.escalation.channels.0",
            "Input should be",
        ),
        ({"ticket": {"after_days": 0, "url": "https://h.example"}}, "reminders.ticket.after_days", "greater than 0"),
        (
            {"ticket": {"after_days": 45, "url": "http://helpdesk.example.com/x"}},
            "reminders.ticket.url",
            "http:// is allowed only for loopback hosts",
        ),
        (
            {"ticket": {"after_days": 45, "url": "ftp://h.example/x"}},
            "reminders.ticket.url",
            "https:// URL with a host",
        ),
        ({"ticket": {"after_days": 45, "url": "https:///x"}}, "reminders.ticket.url", "https:// URL with a host"),
        ({"ticket": {"after_days": 45, "url": "https://h.example:99999/"}}, "reminders.ticket.url", "not a valid URL"),
        ({"colour": "red"}, "reminders.colour", "Extra inputs are not permitted"),
    ],
)
def test_invalid_plans_name_the_field(reminders: dict[str, Any], loc: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TenantConfig.model_validate({"tenant_id": "acme", "reminders": reminders})
    errors = [(".".join(map(str, e["loc"])), e["msg"]) for e in caught.value.errors()]
    assert len(errors) == 1, errors
    assert errors[0][0] == loc
    if message != ">=":
        assert message in errors[0][1]


def test_a_bad_plan_stops_loading_naming_file_and_field(tmp_path: Path) -> None:
    folder = tmp_path / "acme"
    folder.mkdir()
    (folder / "tenant.toml").write_text(
        '[[reminders.steps]]\nname = "due"\noffset_days = 0\n\n[[reminders.steps]]\nname = "today"\noffset_days = 0\n',
        encoding="utf-8",
    )
    with pytest.raises(TenantConfigError) as caught:
        TenantDirectory(tmp_path)
    text = str(caught.value)
    assert str(folder / "tenant.toml") in text
    assert "reminders.steps" in text and "overlapping steps 'due' and 'today' on day 0" in text


@pytest.mark.parametrize(
    "reminders",
    [
        {"ticket": {"after_days": 4, "url": "http://127.0.0.1:8080/hook"}},
        {"ticket": {"after_days": 4, "url": "http://[::1]:8080/hook"}},
        {"ticket": {"after_days": 4, "url": "http://localhost/hook"}},
        {"steps": [], "repeat": {"max_times": 0}},
        {"repeat": {"until_days": 17}},
        {"window": {"start": "00:00", "end": "23:59:59"}},
        {"timezone": "America/Sao_Paulo", "window": {"always": True}},
    ],
)
def test_valid_edge_plans(reminders: dict[str, Any]) -> None:
    TenantConfig.model_validate({"tenant_id": "acme", "reminders": reminders})


# --- windows, weekends, holidays, time zones ------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "due", "expected"),
    [
        ({}, date(2025, 6, 16), "Mon 2025-06-16 09:00"),  # a Monday: as is
        ({}, date(2025, 6, 21), "Mon 2025-06-23 09:00"),  # Saturday -> Monday
        ({}, date(2025, 6, 22), "Mon 2025-06-23 09:00"),  # Sunday -> Monday
        ({"holidays": ["2025-06-23"]}, date(2025, 6, 21), "Tue 2025-06-24 09:00"),  # weekend, then a holiday
        ({"holidays": ["2025-06-20"]}, date(2025, 6, 20), "Mon 2025-06-23 09:00"),  # Friday holiday + weekend
        ({"holidays": ["2025-06-17"]}, date(2025, 6, 16), "Mon 2025-06-16 09:00"),  # not that day: no effect
        ({"weekdays": ["sat"]}, date(2025, 6, 16), "Sat 2025-06-21 09:00"),
        ({"weekdays": ["sun", "wed"], "start": "07:30", "end": "08:00"}, date(2025, 6, 16), "Wed 2025-06-18 07:30"),
        ({"always": True, "holidays": ["2025-06-21"]}, date(2025, 6, 21), "Sat 2025-06-21 00:00"),
    ],
)
def test_a_step_goes_out_at_the_next_window_start(window: dict[str, Any], due: date, expected: str) -> None:
    p = plan(window=window, steps=[{"name": "due", "offset_days": 0}], repeat={"max_times": 0})
    [only] = occurrences(p, due)
    assert (only.key, utc(only.at_ms), only.days_from_due) == ("due#1", expected, 0)


@pytest.mark.parametrize(
    ("tz", "day", "expected_utc"),
    [
        # Europe/Madrid: CET (+1) until Sunday 30 March 2025 02:00, CEST (+2) until Sunday 26 October 03:00.
        ("Europe/Madrid", date(2025, 3, 29), "Sat 2025-03-29 08:00"),
        ("Europe/Madrid", date(2025, 3, 30), "Sun 2025-03-30 07:00"),
        ("Europe/Madrid", date(2025, 3, 31), "Mon 2025-03-31 07:00"),
        ("Europe/Madrid", date(2025, 10, 25), "Sat 2025-10-25 07:00"),
        ("Europe/Madrid", date(2025, 10, 26), "Sun 2025-10-26 08:00"),
        ("Europe/Madrid", date(2025, 10, 27), "Mon 2025-10-27 08:00"),
        # America/Sao_Paulo: -3, with DST (-2) from 4 November 2018 to 17 February 2019; none since.
        ("America/Sao_Paulo", date(2018, 11, 3), "Sat 2018-11-03 12:00"),
        ("America/Sao_Paulo", date(2018, 11, 4), "Sun 2018-11-04 11:00"),
        ("America/Sao_Paulo", date(2019, 2, 16), "Sat 2019-02-16 11:00"),
        ("America/Sao_Paulo", date(2019, 2, 17), "Sun 2019-02-17 12:00"),
        ("America/Sao_Paulo", date(2025, 6, 16), "Mon 2025-06-16 12:00"),
        # Asia/Tokyo: +9 all year, so 09:00 local is midnight UTC of the same date.
        ("Asia/Tokyo", date(2025, 3, 30), "Sun 2025-03-30 00:00"),
        ("Asia/Tokyo", date(2025, 10, 26), "Sun 2025-10-26 00:00"),
    ],
)
def test_window_start_is_local_on_both_sides_of_dst(tz: str, day: date, expected_utc: str) -> None:
    p = plan(timezone=tz, window={"weekdays": ALL_DAYS}, steps=[{"name": "due", "offset_days": 0}], repeat=None)
    [only] = occurrences(p, day)
    assert local(only.at_ms, tz) == f"{day:%a %Y-%m-%d} 09:00"
    assert utc(only.at_ms) == expected_utc


def test_weekly_reminders_keep_local_time_across_dst() -> None:
    p = plan(timezone="Europe/Madrid", steps=[{"name": "after-1", "offset_days": 1}], repeat={"max_times": 3})
    got = [(local(o.at_ms, "Europe/Madrid"), utc(o.at_ms)) for o in occurrences(p, date(2025, 10, 13))]
    assert got == [
        ("Tue 2025-10-14 09:00", "Tue 2025-10-14 07:00"),
        ("Tue 2025-10-21 09:00", "Tue 2025-10-21 07:00"),
        ("Tue 2025-10-28 09:00", "Tue 2025-10-28 08:00"),
        ("Tue 2025-11-04 09:00", "Tue 2025-11-04 08:00"),
    ]


@pytest.mark.parametrize(
    ("tz", "window", "day", "expected_utc"),
    [
        # Sao Paulo skipped 00:00-00:59 on 4 November 2018: the day starts at 01:00 local (03:00 UTC).
        ("America/Sao_Paulo", {"always": True}, date(2018, 11, 4), "Sun 2018-11-04 03:00"),
        # 17 February 2019 00:00 came once, after the repeated hour of the 16th.
        ("America/Sao_Paulo", {"always": True}, date(2019, 2, 17), "Sun 2019-02-17 03:00"),
        ("Asia/Tokyo", {"always": True}, date(2025, 6, 16), "Sun 2025-06-15 15:00"),
        # Apia skipped Friday 30 December 2011 (-10 -> +14): a Friday-only window waits a week.
        ("Pacific/Apia", {"weekdays": ["fri"]}, date(2011, 12, 30), "Thu 2012-01-05 19:00"),
        ("Pacific/Apia", {"weekdays": ["fri", "sat"]}, date(2011, 12, 30), "Fri 2011-12-30 19:00"),  # Sat 09:00
        # Madrid skipped 02:00-02:59 on 30 March 2025: a 02:30 start moves forward by the jump.
        ("Europe/Madrid", {"start": "02:30", "weekdays": ALL_DAYS}, date(2025, 3, 30), "Sun 2025-03-30 01:30"),
        # Madrid had 02:00-02:59 twice on 26 October 2025: the first 02:30 (CEST) counts.
        ("Europe/Madrid", {"start": "02:30", "weekdays": ALL_DAYS}, date(2025, 10, 26), "Sun 2025-10-26 00:30"),
    ],
)
def test_dst_gaps_and_repeated_hours(tz: str, window: dict[str, Any], day: date, expected_utc: str) -> None:
    p = plan(timezone=tz, window=window, steps=[{"name": "due", "offset_days": 0}], repeat=None)
    [only] = occurrences(p, day)
    assert utc(only.at_ms) == expected_utc
    assert window_open(p, only.at_ms)


@pytest.mark.parametrize(
    ("tz", "window", "now", "is_open", "next_start"),
    [
        ("UTC", {}, ms(2025, 6, 16, 8, 59), False, "Mon 2025-06-16 09:00"),
        ("UTC", {}, ms(2025, 6, 16, 9), True, "Mon 2025-06-16 09:00"),
        ("UTC", {}, ms(2025, 6, 16, 17, 59) + 59_999, True, "Mon 2025-06-16 17:59"),
        ("UTC", {}, ms(2025, 6, 16, 18), False, "Tue 2025-06-17 09:00"),  # end is exclusive
        ("UTC", {}, ms(2025, 6, 20, 18), False, "Mon 2025-06-23 09:00"),  # Friday evening -> Monday
        ("UTC", {}, ms(2025, 6, 21, 12), False, "Mon 2025-06-23 09:00"),
        ("UTC", {"holidays": ["2025-06-23"]}, ms(2025, 6, 21, 12), False, "Tue 2025-06-24 09:00"),
        ("UTC", {"always": True}, ms(2025, 6, 21, 3, 7), True, "Sat 2025-06-21 03:07"),
        ("Europe/Madrid", {}, ms(2025, 3, 29, 12), False, "Mon 2025-03-31 07:00"),
        ("Europe/Madrid", {}, ms(2025, 10, 24, 15, 30), True, "Fri 2025-10-24 15:30"),  # 17:30 CEST
        ("Europe/Madrid", {}, ms(2025, 10, 24, 17, 0), False, "Mon 2025-10-27 08:00"),  # 19:00 CEST
        ("Asia/Tokyo", {}, ms(2025, 6, 16, 8, 59), True, "Mon 2025-06-16 08:59"),  # 17:59 JST
        ("Asia/Tokyo", {}, ms(2025, 6, 16, 9), False, "Tue 2025-06-17 00:00"),
        ("Asia/Tokyo", {}, ms(2025, 6, 20, 23, 30), False, "Mon 2025-06-23 00:00"),  # Saturday 08:30 JST
        ("America/Sao_Paulo", {}, ms(2025, 6, 16, 11, 59), False, "Mon 2025-06-16 12:00"),
        ("America/Sao_Paulo", {}, ms(2025, 6, 16, 21, 0), False, "Tue 2025-06-17 12:00"),  # 18:00 local
        # Goose Bay fell back from Sunday 00:01 to Saturday 23:01 on 28 October 1990: a Sunday window
        # from 00:00 is open while the clocks show Saturday 23:30 the second time.
        (
            "America/Goose_Bay",
            {"start": "00:00", "end": "01:00", "weekdays": ["sun"]},
            ms(1990, 10, 28, 3, 30),
            True,
            "Sun 1990-10-28 03:30",
        ),
        # Nuuk skips Saturday 23:00-23:59 on 29 March 2025 (-02 -> -01): a 23:30 end falls in the gap
        # and becomes Sunday 00:30, so Saturday's window runs into the first half hour of Sunday.
        (
            "America/Nuuk",
            {"start": "22:00", "end": "23:30", "weekdays": ["sat"]},
            ms(2025, 3, 30, 1, 15),
            True,
            "Sun 2025-03-30 01:15",
        ),
        (
            "America/Nuuk",
            {"start": "22:00", "end": "23:30", "weekdays": ["sat"]},
            ms(2025, 3, 30, 1, 30),
            False,
            "Sat 2025-04-05 23:00",
        ),
    ],
)
def test_window_open_and_next_start(tz: str, window: dict[str, Any], now: int, is_open: bool, next_start: str) -> None:
    p = plan(timezone=tz, window=window)
    assert window_open(p, now) is is_open
    start = next_window_start(p, now)
    assert utc(start) == next_start
    assert start == now if is_open else start > now


@pytest.mark.parametrize(
    ("now", "sent_at"),
    [
        (ms(2025, 6, 16, 8), "Mon 2025-06-16 09:00"),  # not late: at its own time
        (ms(2025, 6, 16, 11, 15), "Mon 2025-06-16 11:15"),  # late, window open: now
        (ms(2025, 6, 16, 20), "Tue 2025-06-17 09:00"),  # late, window closed: next start
        (ms(2025, 6, 21, 10), "Mon 2025-06-23 09:00"),  # down over the weekend
    ],
)
def test_a_step_found_late_goes_out_now_or_at_the_next_window(now: int, sent_at: str) -> None:
    p = ReminderPlan()
    due = by_key(p, date(2025, 6, 16))["due#1"]
    assert utc(next_window_start(p, max(now, due.at_ms))) == sent_at


# --- repeats, escalation, ticket, anchor ----------------------------------------------------------


@pytest.mark.parametrize(
    ("repeat", "expected_days"),
    [
        ({"every_days": 7, "max_times": 4}, [17, 24, 31, 38]),
        ({"every_days": 7, "max_times": 0}, []),
        ({"every_days": 5, "max_times": 10, "until_days": 25}, [15, 20, 25]),  # until is inclusive
        ({"every_days": 5, "max_times": 2, "until_days": 60}, [15, 20]),  # max comes first
        (None, []),
    ],
)
def test_repeats_are_bounded_by_max_times_and_until(repeat: dict[str, Any] | None, expected_days: list[int]) -> None:
    p = plan(
        steps=[{"name": "after-10", "offset_days": 10, "channels": ["sms"]}, {"name": "due", "offset_days": 0}],
        repeat=repeat,
        window={"always": True},
    )
    repeats = [o for o in occurrences(p, date(2025, 1, 1)) if o.occurrence > 1]
    assert [o.days_from_due for o in repeats] == expected_days
    assert [o.key for o in repeats] == [f"after-10#{n}" for n in range(2, len(expected_days) + 2)]
    assert all(o.step == "after-10" and o.kind == "reminder" and o.channels == ("sms",) for o in repeats)


def test_escalation_calls_are_bounded_and_the_ticket_comes_once() -> None:
    p = plan(
        window={"always": True},
        escalation={"after_days": 20, "every_days": 3, "max_times": 4, "channels": ["voice", "sms"]},
        ticket={"after_days": 25, "url": "https://helpdesk.example.com/h"},
    )
    items = by_key(p, date(2025, 1, 1))
    calls = [o for o in items.values() if o.kind == "call"]
    assert [(o.key, o.occurrence, o.days_from_due) for o in calls] == [
        ("call#1", 1, 20),
        ("call#2", 2, 23),
        ("call#3", 3, 26),
        ("call#4", 4, 29),
    ]
    assert all(o.step == "call" and o.channels == ("voice", "sms") for o in calls)
    tickets = [o for o in items.values() if o.kind == "ticket"]
    assert [(o.key, o.step, o.days_from_due, o.channels) for o in tickets] == [("ticket#1", "ticket", 25, None)]
    assert utc(items["ticket#1"].at_ms) == "Sun 2025-01-26 00:00"


def test_anchor_moves_only_after_due_steps_and_repeats() -> None:
    p = plan(
        reanchor_on_partial=True,
        window={"always": True},
        repeat={"every_days": 7, "max_times": 2},
        escalation={"after_days": 30, "every_days": 7, "max_times": 1},
        ticket={"after_days": 40, "url": "https://helpdesk.example.com/h"},
    )
    due = date(2025, 1, 10)
    plain = {k: o.days_from_due for k, o in by_key(p, due).items()}
    moved = {k: o.days_from_due for k, o in by_key(p, due, anchor=date(2025, 1, 16)).items()}
    assert plain == {
        "before-5#1": -5,
        "due#1": 0,
        "after-3#1": 3,
        "after-10#1": 10,
        "after-10#2": 17,
        "after-10#3": 24,
        "call#1": 30,
        "ticket#1": 40,
    }
    assert moved == plain | {"after-3#1": 9, "after-10#1": 16, "after-10#2": 23, "after-10#3": 30}
    early = by_key(p, due, anchor=date(2025, 1, 8))  # a partial payment before the due date
    assert early["after-3#1"].days_from_due == 1 and early["due#1"].days_from_due == 0


def test_occurrences_sort_by_instant_then_key() -> None:
    # Due Thursday 19 June: after-1 falls on the Friday holiday, after-3 on Sunday; both move to Monday.
    p = plan(
        steps=[{"name": "after-3", "offset_days": 3}, {"name": "after-1", "offset_days": 1}],
        repeat={"max_times": 0},
        window={"holidays": ["2025-06-20"]},
    )
    [a, b] = occurrences(p, date(2025, 6, 19))
    assert utc(a.at_ms) == utc(b.at_ms) == "Mon 2025-06-23 09:00"
    assert (a.key, a.days_from_due, b.key, b.days_from_due) == ("after-1#1", 1, "after-3#1", 3)


def test_the_anchor_is_the_payment_day_in_the_tenant_zone() -> None:
    p = plan(timezone="Asia/Tokyo", reanchor_on_partial=True, window={"always": True})
    paid = ms(2025, 6, 15, 20)  # Sunday 20:00 UTC is Monday 05:00 in Tokyo
    assert local_date(p, paid) == date(2025, 6, 16)
    moved = by_key(p, date(2025, 6, 10), anchor=local_date(p, paid))
    assert local(moved["after-3#1"].at_ms, "Asia/Tokyo") == "Thu 2025-06-19 00:00"


def test_occurrences_of_different_plans_compare_without_channels() -> None:
    def only_due(**step: Any) -> Occurrence:
        p = plan(steps=[{"name": "due", "offset_days": 0, **step}], repeat=None)
        [occurrence] = occurrences(p, date(2025, 6, 16))
        return occurrence

    with_channels, without = only_due(channels=["sms"]), only_due()
    assert with_channels == without and with_channels.channels == ("sms",) and without.channels is None
    assert sorted([with_channels, without, with_channels]) == [without] * 3  # tuple vs None: never compared


# --- cursors: next_after, first_for_new_invoice ---------------------------------------------------


def test_next_after_walks_the_list() -> None:
    p = ReminderPlan()
    due = date(2025, 6, 16)
    items = occurrences(p, due)
    assert next_after(p, due, None) == items[0]
    assert next_after(p, due, items[2].cursor) == items[3]
    assert next_after(p, due, items[-1].cursor) is None
    assert next_after(p, due, (items[2].at_ms, items[2].key + "~")) == items[3]  # strictly after, not equal
    assert next_after(p, due, (items[2].at_ms - 1, "zzz")) == items[2]
    empty = plan(steps=[], repeat={"max_times": 0})
    assert next_after(empty, due, None) is None


@pytest.mark.parametrize(
    ("now", "next_key"),
    [
        (ms(2025, 6, 1), "before-5#1"),  # nothing past: start at the beginning
        (ms(2025, 6, 11, 9), "before-5#1"),  # only before-5 past: it is the one to send
        (ms(2025, 6, 16, 8), "before-5#1"),  # due#1 is not due yet at 08:00
        (ms(2025, 6, 16, 9), "due#1"),  # at 09:00 it is: before-5 is skipped
        (ms(2025, 6, 19, 12), "after-3#1"),  # 3 days overdue: only the most recent step, once
        (ms(2025, 7, 30), "after-10#5"),  # all past: just the last repetition
    ],
)
def test_an_invoice_arriving_late_gets_the_most_recent_step_once(now: int, next_key: str) -> None:
    p = ReminderPlan()
    due = date(2025, 6, 16)
    cursor = first_for_new_invoice(p, due, now)
    first = next_after(p, due, cursor)
    assert first is not None and first.key == next_key
    if first.at_ms <= now:  # past: it goes out once and the plan goes on from there
        following = next_after(p, due, first.cursor)
        assert following is None or following.at_ms > now


def test_first_for_new_invoice_returns_none_only_when_at_most_one_is_past() -> None:
    p = ReminderPlan()
    due = date(2025, 6, 16)
    assert first_for_new_invoice(p, due, ms(2025, 6, 1)) is None
    assert first_for_new_invoice(p, due, ms(2025, 6, 11, 9)) is None
    assert first_for_new_invoice(p, due, ms(2025, 6, 19, 12)) == by_key(p, due)["due#1"].cursor


# --- properties -----------------------------------------------------------------------------------

ZONES = [
    "UTC",
    "Europe/Madrid",
    "America/Sao_Paulo",
    "Asia/Tokyo",
    "America/New_York",
    "Australia/Lord_Howe",  # 30-minute DST shifts
    "Pacific/Apia",  # skipped a whole day (30 December 2011)
]


@st.composite
def plans(draw: st.DrawFn) -> ReminderPlan:
    start = draw(st.times(max_value=time(22)).map(lambda t: t.replace(second=0, microsecond=0)))
    length = draw(st.integers(1, 24 * 60 - 1 - (start.hour * 60 + start.minute)))
    end = (datetime.combine(date(2000, 1, 1), start) + timedelta(minutes=length)).time()
    window = Window(
        start=start,
        end=end,
        weekdays=draw(st.lists(st.sampled_from(WEEKDAYS), min_size=1, max_size=7, unique=True)),
        holidays=draw(st.lists(st.dates(date(2011, 11, 1), date(2012, 3, 1)), max_size=20)),
        always=draw(st.booleans()),
    )
    offsets = draw(st.lists(st.integers(-30, 60), max_size=6, unique=True))
    steps = [
        Step(name=f"s{i}", offset_days=o, channels=draw(st.none() | st.just(["email"]))) for i, o in enumerate(offsets)
    ]
    repeat = None
    if steps:
        last = max(o for o in offsets)
        every = draw(st.integers(1, 14))
        until = draw(st.none() | st.integers(last + every, last + 100))
        repeat = Repeat(every_days=every, max_times=draw(st.integers(0, 6)), until_days=until)
    escalation = draw(
        st.none()
        | st.builds(
            Escalation, after_days=st.integers(1, 60), every_days=st.integers(1, 10), max_times=st.integers(1, 5)
        )
    )
    ticket = draw(st.none() | st.builds(Ticket, after_days=st.integers(1, 90), url=st.just("https://h.example/t")))
    return ReminderPlan(
        timezone=draw(st.sampled_from(ZONES)),
        window=window,
        steps=steps,
        repeat=repeat,
        escalation=escalation,
        ticket=ticket,
    )


DUES = st.dates(date(2011, 10, 1), date(2012, 2, 1)) | st.dates(date(1995, 1, 1), date(2040, 12, 31))
ANCHORS = st.none() | st.integers(-10, 40)


def _anchor(due: date, shift: int | None) -> date | None:
    return None if shift is None else due + timedelta(days=shift)


@settings(max_examples=300, deadline=None)
@given(plans(), DUES, ANCHORS)
def test_occurrences_are_sorted_unique_and_inside_the_window(p: ReminderPlan, due: date, shift: int | None) -> None:
    anchor = _anchor(due, shift)
    items = occurrences(p, due, anchor=anchor)
    assert items == sorted(items, key=lambda o: (o.at_ms, o.key))
    assert len({o.key for o in items}) == len(items)
    repeats = p.repeat.max_times if p.repeat else 0
    assert len(items) <= len(p.steps) + repeats + (p.escalation.max_times if p.escalation else 0) + bool(p.ticket)
    zone = ZoneInfo(p.timezone)
    for o in items:
        assert window_open(p, o.at_ms)
        assert next_window_start(p, o.at_ms) == o.at_ms
        nominal = due + timedelta(days=o.days_from_due)
        midnight = ms(nominal.year, nominal.month, nominal.day, tz=p.timezone)
        assert o.at_ms == next_window_start(p, midnight)  # the first open instant from its day on
        sent = datetime.fromtimestamp(o.at_ms / 1000, zone).date()
        assert sent >= nominal
        if not p.window.always:
            assert sent.weekday() in {WEEKDAYS.index(d) for d in p.window.weekdays}
            assert sent not in p.window.holidays


@settings(max_examples=200, deadline=None)
@given(plans(), DUES, ANCHORS)
def test_next_after_walks_the_whole_list_in_order(p: ReminderPlan, due: date, shift: int | None) -> None:
    anchor = _anchor(due, shift)
    walked: list[Occurrence] = []
    current = next_after(p, due, None, anchor=anchor)
    while current is not None:
        walked.append(current)
        current = next_after(p, due, current.cursor, anchor=anchor)
    assert walked == occurrences(p, due, anchor=anchor)


@settings(max_examples=200, deadline=None)
@given(plans(), DUES, st.integers(-40, 200), st.integers(0, 86_400_000 - 1))
def test_a_late_invoice_gets_exactly_one_past_occurrence(p: ReminderPlan, due: date, days: int, extra: int) -> None:
    now = ms(due.year, due.month, due.day) + days * 86_400_000 + extra
    items = occurrences(p, due)
    cursor = first_for_new_invoice(p, due, now)
    remaining = [o for o in items if cursor is None or o.cursor > cursor]
    past_remaining = [o for o in remaining if o.at_ms <= now]
    assert len(past_remaining) == (1 if any(o.at_ms <= now for o in items) else 0)
    if past_remaining:
        assert past_remaining[0] == max((o for o in items if o.at_ms <= now), key=lambda o: o.cursor)


@settings(max_examples=300, deadline=None)
@given(
    plans(),
    st.integers(ms(1995, 1, 1), ms(2040, 12, 31)) | st.integers(ms(2011, 10, 1), ms(2012, 4, 1)),
    st.floats(0, 1),
)
def test_next_window_start_is_the_first_open_instant(p: ReminderPlan, now: int, fraction: float) -> None:
    start = next_window_start(p, now)
    assert start >= now and window_open(p, start)
    assert (start == now) is window_open(p, now)
    if start > now:
        assert not window_open(p, start - 1)
        assert not window_open(p, now + int((start - now - 1) * fraction))
