"""A tenant's reminder plan (``[reminders]`` in tenant.toml) and the calendar it implies.

The plan says *which* messages follow an invoice (steps relative to the due date, repetitions,
escalation calls, one helpdesk ticket) and *when* they may go out (a send window in the tenant's
time zone, weekdays, holidays). Everything here is a pure function of the plan, the due date and
an instant passed in by the caller: no clock reads, no I/O. So the scheduler, its replicas and a
test harness with simulated time all compute the same instants and the same keys, and a
reminder's identity (invoice + key) never depends on when the computation ran.

Instants are UTC epoch milliseconds (``int``): what the scheduler indexes and compares. A window
on local date D runs from the first moment the tenant's clocks show ``start`` that day to the
first moment they show ``end``; so 09:00 stays 09:00 local across a DST change, and a wall time
that does not exist is moved forward by the size of the jump (PEP 495 ``fold=0``: 02:30 on a
02:00 to 03:00 night is 03:30).
See docs/scheduler.md ("Writing a reminder plan") for the tenant's view of every field.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Literal, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from factura.common.events import Channel, ReminderStep

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = get_args(Weekday)
OccurrenceKind = Literal["reminder", "call", "ticket"]
#: Keys of escalation calls and the ticket; a step with one of these names would share their keys.
RESERVED_STEP_NAMES = frozenset({"call", "ticket"})
#: ``(at_ms, key)`` of the last occurrence handled for an invoice.
Cursor = tuple[int, str]

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _unique(values: list[Channel] | list[Weekday], what: str) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"a {what} is listed twice")


class Window(_Config):
    """When messages may go out, in the plan's time zone."""

    start: time = Field(default=time(9), description="Local time the window opens (TOML 09:00:00 or '09:00')")
    end: time = Field(default=time(18), description="Local time the window closes (exclusive), after start")
    weekdays: list[Weekday] = Field(
        default_factory=lambda: list(WEEKDAYS[:5]), min_length=1, description="Days messages may go out"
    )
    holidays: list[date] = Field(default_factory=list, max_length=2000, description="Local dates with no sends")
    always: bool = Field(default=False, description="Any time, any day (ignores hours, weekdays, holidays)")

    @field_validator("start", "end")
    @classmethod
    def _local(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("must be a local time without offset; the plan's timezone applies")
        return value

    @field_validator("weekdays")
    @classmethod
    def _weekdays(cls, value: list[Weekday]) -> list[Weekday]:
        _unique(value, "weekday")
        return value

    @field_validator("end")
    @classmethod
    def _after_start(cls, value: time, info: ValidationInfo) -> time:
        start = info.data.get("start")
        if start is not None and value <= start:
            raise ValueError(f"end {value:%H:%M} must be after start {start:%H:%M}")
        return value


class Step(_Config):
    """One reminder, ``offset_days`` from the due date (negative: before it)."""

    name: ReminderStep = Field(description="Unique; the message purpose is reminder:<name>")
    offset_days: int = Field(ge=-365, le=365, description="Days from the due date; one step per day")
    channels: list[Channel] | None = Field(
        default=None, min_length=1, description="Channel order for this step; default: the tenant's [delivery]"
    )
    template: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", description="Message template name for this step"
    )

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: list[Channel] | None) -> list[Channel] | None:
        if value is not None:
            _unique(value, "channel")
        return value


def default_steps() -> list[Step]:
    return [
        Step(name="before-5", offset_days=-5),
        Step(name="due", offset_days=0),
        Step(name="after-3", offset_days=3),
        Step(name="after-10", offset_days=10),
    ]


class Repeat(_Config):
    """After the last step, its message again every ``every_days``, at most ``max_times`` more."""

    every_days: int = Field(default=7, ge=1, le=365)
    max_times: int = Field(default=4, ge=0, le=100, description="0: no repetition")
    until_days: int | None = Field(
        default=None, ge=-365, le=3650, description="Last day (from the due date) a repetition may fall on"
    )


def _voice() -> list[Channel]:
    return ["voice"]


class Escalation(_Config):
    """Calls to customers long overdue: first on day ``after_days``, then every ``every_days``."""

    after_days: int = Field(gt=0, le=3650, description="Day after the due date of the first call")
    every_days: int = Field(ge=1, le=365)
    max_times: int = Field(default=3, ge=1, le=100)
    channels: list[Channel] = Field(default_factory=_voice, min_length=1)

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: list[Channel]) -> list[Channel]:
        _unique(value, "channel")
        return value


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Ticket(_Config):
    """One helpdesk ticket per invoice, on day ``after_days``, via a JSON POST to ``url``."""

    after_days: int = Field(gt=0, le=3650, description="Day after the due date the ticket is opened")
    url: str = Field(max_length=2000, description="Helpdesk webhook; https (http only for loopback hosts)")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            host = parts.hostname
            _ = parts.port  # raises ValueError for a malformed port
        except ValueError as e:
            raise ValueError(f"not a valid URL: {e}") from e
        if parts.scheme not in ("https", "http") or not host:
            raise ValueError("must be an https:// URL with a host")
        if parts.scheme == "http" and not _loopback(host):
            raise ValueError("http:// is allowed only for loopback hosts (localhost, 127.0.0.1, ::1); use https://")
        return value


def _last(steps: list[Step]) -> Step | None:
    return max(steps, key=lambda s: s.offset_days, default=None)


class ReminderPlan(_Config):
    """A tenant's reminder plan. The default: 5 days before, on the day, 3 and 10 days after, then
    weekly up to 4 more times, 09:00 to 18:00 Monday to Friday UTC; no calls, no ticket."""

    timezone: str = Field(default="UTC", description="IANA time zone of the send window, e.g. Europe/Madrid")
    window: Window = Field(default_factory=Window)
    steps: list[Step] = Field(default_factory=default_steps, max_length=50)
    repeat: Repeat | None = Field(default_factory=Repeat, validate_default=True, description="Repeats the last step")
    escalation: Escalation | None = None
    ticket: Ticket | None = None
    receipt: bool = Field(default=False, description="Send a thank-you message after full payment")
    reanchor_on_partial: bool = Field(
        default=False, description="After a partial payment, steps after the due date count from the payment date"
    )

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as 'Europe/Madrid'") from e
        return value

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[Step]) -> list[Step]:
        by_name: set[str] = set()
        by_day: dict[int, str] = {}
        for step in steps:
            if step.name in RESERVED_STEP_NAMES:
                raise ValueError(f"step name {step.name!r} is reserved (escalation calls and tickets use it)")
            if step.name in by_name:
                raise ValueError(f"step name {step.name!r} is used twice")
            if step.offset_days in by_day:
                other = by_day[step.offset_days]
                raise ValueError(f"overlapping steps {other!r} and {step.name!r} on day {step.offset_days}")
            by_name.add(step.name)
            by_day[step.offset_days] = step.name
        return steps

    @field_validator("repeat")
    @classmethod
    def _repeat(cls, repeat: Repeat | None, info: ValidationInfo) -> Repeat | None:
        steps: list[Step] | None = info.data.get("steps")  # absent when the steps were invalid
        if repeat is None or repeat.max_times == 0 or steps is None:
            return repeat
        last = _last(steps)
        if last is None:
            raise ValueError("steps is empty, so there is nothing to repeat; set repeat.max_times = 0")
        until = repeat.until_days
        if until is not None and until < last.offset_days + repeat.every_days:
            raise ValueError(
                f"until_days {until} leaves no repetition of step {last.name!r}"
                f" (day {last.offset_days}, every {repeat.every_days} days)"
            )
        return repeat

    def step(self, name: str) -> Step | None:
        """The step an occurrence names (repetitions too): its template and channels."""
        return next((s for s in self.steps if s.name == name), None)

    @property
    def last_step(self) -> Step | None:
        """The step with the largest offset: the one repetitions repeat."""
        return _last(self.steps)


@dataclass(frozen=True, order=True)
class Occurrence:
    """One message or action due for an invoice. Sorted by ``(at_ms, key)``; ``key`` is unique per
    invoice and stable across runs (``<step>#<n>``, ``call#<n>``, ``ticket#1``), so invoice + key is
    the idempotency id of the reminder it becomes. ``channels`` (the step's channel order, None for
    the tenant's) takes no part in comparisons, so occurrences of different plans can share a heap.
    """

    at_ms: int
    key: str
    kind: OccurrenceKind
    step: str
    occurrence: int
    days_from_due: int
    channels: tuple[Channel, ...] | None = field(default=None, compare=False)

    @property
    def cursor(self) -> Cursor:
        return (self.at_ms, self.key)


@dataclass(frozen=True)
class _Calendar:
    """The window of one plan in the form the arithmetic needs. Built per call, not cached on the
    frozen model, so a ``model_copy`` of a plan can never carry a stale one."""

    zone: ZoneInfo
    start: time
    end: time
    weekdays: frozenset[int]
    holidays: frozenset[date]
    always: bool

    @classmethod
    def of(cls, plan: ReminderPlan) -> _Calendar:
        w = plan.window
        days = frozenset(WEEKDAYS.index(d) for d in w.weekdays)
        return cls(ZoneInfo(plan.timezone), w.start, w.end, days, frozenset(w.holidays), w.always)

    def instant(self, day: date, at: time) -> int:
        """UTC ms of local ``day`` at ``at`` (the first such moment; moved past a DST gap).

        Integer arithmetic on the zone's offset for that wall time (PEP 495 ``fold=0``): exact, and
        about twice as fast as aware-datetime subtraction; it runs several times per occurrence.
        """
        offset = self.zone.utcoffset(datetime.combine(day, at))
        wall = (day.toordinal() - _EPOCH_ORDINAL) * 86_400 + at.hour * 3600 + at.minute * 60 + at.second
        return (wall - _seconds(offset)) * 1000 + at.microsecond // 1000

    def local_date(self, instant_ms: int) -> date:
        return datetime.fromtimestamp(instant_ms // 1000, self.zone).date()

    def span(self, day: date, after_ms: int) -> tuple[int, int] | None:
        """Local ``day``'s open interval ``[opens, closes)`` in UTC ms, if it closes after ``after_ms``.

        None when the day is closed (weekday, holiday; a clock change that swallowed the window or
        the day itself, as Apia skipped 2011-12-30) or its window is over by ``after_ms``. The
        cheap tests come first: this runs for every occurrence of every invoice.
        """
        if day.weekday() not in self.weekdays or day in self.holidays:
            return None
        closes = self.instant(day, self.end)
        if closes <= after_ms:
            return None
        opens = self.instant(day, self.start)
        return (opens, closes) if opens < closes and self.local_date(opens) == day else None

    def is_open(self, instant_ms: int) -> bool:
        """Inside the span of its local day or of a neighbour: a clock change near midnight can make
        a day's span run into the next day (Nuuk, 2025-03-29, a 23:30 end) or reach back into the
        previous one (Goose Bay fell back from Sunday 00:01 to Saturday 23:01 until 2010)."""
        if self.always:
            return True
        today = self.local_date(instant_ms)
        for day in (today, today - timedelta(days=1), today + timedelta(days=1)):
            span = self.span(day, instant_ms)
            if span is not None and span[0] <= instant_ms:
                return True
        return False

    def next_open(self, instant_ms: int, local_day: date | None = None) -> int:
        """The first instant at or after ``instant_ms`` inside the window (``local_day``: its local
        date, when the caller knows it).

        Terminates: weekdays is non-empty and holidays finite, so an open day always comes.
        """
        if self.always:
            return instant_ms
        day = (self.local_date(instant_ms) if local_day is None else local_day) - timedelta(days=1)
        while True:
            span = self.span(day, instant_ms)
            if span is not None:
                return max(instant_ms, span[0])
            day += timedelta(days=1)

    def send_at(self, day: date) -> int:
        """When a message nominally due on local ``day`` may go out: that day's window start, or
        the next open day's (with ``always``: the day's first moment)."""
        return self.next_open(self.instant(day, time(0)), day)


def _seconds(offset: timedelta | None) -> int:
    """A zone offset in whole seconds (zoneinfo offsets never have a fraction)."""
    return 0 if offset is None else offset.days * 86_400 + offset.seconds


def _channels(values: list[Channel] | None) -> tuple[Channel, ...] | None:
    return None if values is None else tuple(values)


def occurrences(plan: ReminderPlan, due_date: date, *, anchor: date | None = None) -> list[Occurrence]:
    """Every occurrence of ``plan`` for an invoice due on ``due_date``, sorted by ``(at_ms, key)``.

    Steps, then repetitions of the last step (``max_times``, ``until_days``), escalation calls and
    the ticket. ``anchor`` (a partial payment's local date, when the plan re-anchors) moves every
    step and repetition with a positive offset to ``anchor + offset``; steps on or before the due
    date, calls and the ticket still count from the due date. ``days_from_due`` is the nominal
    local date minus the due date (so it includes the re-anchoring, not the window shift).
    """
    cal = _Calendar.of(plan)
    out: list[Occurrence] = []

    def reminder(step: Step, occurrence: int, offset: int) -> None:
        nominal = (anchor if anchor is not None and offset > 0 else due_date) + timedelta(days=offset)
        out.append(
            Occurrence(
                at_ms=cal.send_at(nominal),
                key=f"{step.name}#{occurrence}",
                kind="reminder",
                step=step.name,
                occurrence=occurrence,
                days_from_due=(nominal - due_date).days,
                channels=_channels(step.channels),
            )
        )

    for step in plan.steps:
        reminder(step, 1, step.offset_days)
    last, repeat = plan.last_step, plan.repeat
    if last is not None and repeat is not None:
        for n in range(1, repeat.max_times + 1):
            offset = last.offset_days + n * repeat.every_days
            if repeat.until_days is not None and offset > repeat.until_days:
                break
            reminder(last, n + 1, offset)
    if plan.escalation is not None:
        esc = plan.escalation
        for n in range(1, esc.max_times + 1):
            offset = esc.after_days + (n - 1) * esc.every_days
            at = cal.send_at(due_date + timedelta(days=offset))
            channels = _channels(esc.channels)
            out.append(Occurrence(at, f"call#{n}", "call", "call", n, offset, channels=channels))
    if plan.ticket is not None:
        offset = plan.ticket.after_days
        at = cal.send_at(due_date + timedelta(days=offset))
        out.append(Occurrence(at, "ticket#1", "ticket", "ticket", 1, offset, None))
    out.sort(key=lambda o: (o.at_ms, o.key))
    return out


def next_after(
    plan: ReminderPlan, due_date: date, cursor: Cursor | None, *, anchor: date | None = None
) -> Occurrence | None:
    """The first occurrence strictly after ``cursor`` (the last one handled), or None when done.

    ``cursor=None`` gives the first occurrence.
    """
    items = occurrences(plan, due_date, anchor=anchor)
    if cursor is None:
        return items[0] if items else None
    i = bisect_right(items, cursor, key=lambda o: o.cursor)
    return items[i] if i < len(items) else None


def local_date(plan: ReminderPlan, instant_ms: int) -> date:
    """The date in the plan's time zone at ``instant_ms``: e.g. a partial payment's ``anchor``."""
    return _Calendar.of(plan).local_date(instant_ms)


def window_open(plan: ReminderPlan, instant_ms: int) -> bool:
    """Whether a message may go out at ``instant_ms`` (UTC ms) under the plan's window."""
    return _Calendar.of(plan).is_open(instant_ms)


def next_window_start(plan: ReminderPlan, instant_ms: int) -> int:
    """The first instant at or after ``instant_ms`` inside the window: ``instant_ms`` itself when the
    window is open, else the next opening. A step found due late (the service was down) goes out
    at ``next_window_start(plan, now)``: now if the window is open, else at the next start, once.
    """
    return _Calendar.of(plan).next_open(instant_ms)


def first_for_new_invoice(
    plan: ReminderPlan, due_date: date, now_ms: int, *, anchor: date | None = None
) -> Cursor | None:
    """Where to start an invoice that arrives after some of its occurrences were due.

    Every occurrence at or before ``now_ms`` except the last of them counts as done, so an invoice
    arriving 3 days overdue gets the most recent reminder once, not every past step. Returns the
    cursor of the last occurrence to skip, or None to start from the first occurrence (nothing
    past, or only one).
    """
    past = [o for o in occurrences(plan, due_date, anchor=anchor) if o.at_ms <= now_ms]
    return past[-2].cursor if len(past) >= 2 else None
