"""The search form: query-string fields validated into a :class:`RecordFilter`, or errors by field.

The same rules as the JSON API's parameters (one line of text for ids and reasons, lower-case
words for channels and types, a status from :class:`Status`); an empty field means "any", as a
browser submits every field of a form. Dates are whole UTC days, ``to`` included.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Final
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from factura.audit.queries import RecordFilter, Status
from factura.common.envelope import TENANT_PATTERN

_TEXT: Final = r"^[^\x00-\x1F\x7F]+$"
_WORD: Final = r"^[a-z][a-z0-9_.:+-]*$"
Text = Annotated[str, Field(min_length=1, max_length=200, pattern=_TEXT)]
Word = Annotated[str, Field(min_length=1, max_length=100, pattern=_WORD)]
#: What a page takes beside the filters.
CURSOR: Final = "cursor"
STATUSES: Final = tuple(s.value for s in Status)


class Search(BaseModel):
    """The filters as typed; ``from``/``to`` are days (``to`` inclusive)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    tenant_id: Annotated[str, Field(pattern=TENANT_PATTERN)]
    customer_id: Text | None = None
    invoice_id: Text | None = None
    status: Status | None = None
    channel: Word | None = None
    reason: Text | None = None
    type: Word | None = None
    from_day: Annotated[date | None, Field(alias="from")] = None
    to_day: Annotated[date | None, Field(alias="to")] = None

    def record_filter(self) -> RecordFilter:
        return RecordFilter(
            tenant_id=self.tenant_id,
            customer_id=self.customer_id,
            invoice_id=self.invoice_id,
            status=self.status,
            channel=self.channel,
            reason=self.reason,
            type=self.type,
            occurred_from=_midnight(self.from_day),
            occurred_to=_midnight(self.to_day + timedelta(days=1)) if self.to_day else None,
        )

    def query(self, **extra: str) -> str:
        """The form as a query string (only the fields given), plus ``extra``."""
        fields = self.model_dump(by_alias=True, exclude_none=True, mode="json")
        return urlencode({**fields, **extra})


def _midnight(day: date | None) -> datetime | None:
    return datetime.combine(day, time(), UTC) if day is not None else None


@dataclass(frozen=True)
class Parsed:
    """A submitted form: the search when it is valid, what was typed, and the errors by field."""

    search: Search | None
    typed: dict[str, str]
    errors: dict[str, str]
    cursor: str | None


def parse(pairs: list[tuple[str, str]], tenant_id: str) -> Parsed:
    """Validate a search's query string for ``tenant_id`` (already checked against the key)."""
    typed: dict[str, str] = {}
    errors: dict[str, str] = {}
    for name, value in pairs:
        if name in typed:
            errors[name] = "given twice"
        typed[name] = value.strip()
    cursor = typed.pop(CURSOR, "") or None
    given = {name: value for name, value in typed.items() if value} | {"tenant_id": tenant_id}
    try:
        search = Search.model_validate(given)
    except ValidationError as error:
        for problem in error.errors():
            name = str(problem["loc"][0]) if problem["loc"] else "form"
            errors.setdefault(name, problem["msg"])
        search = None
    if search is not None and search.from_day and search.to_day and search.to_day < search.from_day:
        errors["to"] = "must not be before from"
    return Parsed(search if not errors else None, typed, errors, cursor)
