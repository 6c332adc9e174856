"""Ask the relay whether it already accepted a message, before a retried delivery sends it again.

A sender that died between the relay's 250 to DATA and the ledger's "done" (or lost the 250 in
transit) leaves a claim that another attempt takes over; without asking, that attempt sends the
email a second time. The Message-ID is deterministic per delivery, so a relay that can be searched
by it answers the question. This client speaks the part of Mailpit's HTTP API that does
(``GET /api/v1/search?query=message-id:<id>``), which the devstack's SMTP capture serves too.

Only an exact Message-ID captured at or after ``since`` counts (Mailpit matches a substring, and
lists what it holds from before). Any answer that is not a readable list (a network error, a
timeout, a non-2xx status, a 2xx that is not the expected JSON) raises
``DependencyDown("smtp", ...)``, the relay's own dependency name: the message waits, since an
answer we cannot read is no "no".
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import httpx
from pydantic import AwareDatetime, BaseModel, ValidationError

from factura.common.errors import DependencyDown, retry_after
from factura.email_sender.smtp import DEPENDENCY

#: Matches asked for at once; more than this many copies of one Message-ID is not a "no" we can give.
PAGE_SIZE: Final = 50


class RelayMessage(BaseModel):
    """One message as Mailpit's search lists it (the fields used; others are ignored)."""

    ID: str
    MessageID: str
    Created: AwareDatetime


class _SearchPage(BaseModel):
    messages_count: int
    messages: list[RelayMessage]


class RelayLookup:
    """The relay's Mailpit-compatible message search, on a shared HTTP client."""

    def __init__(self, base_url: str, client: httpx.AsyncClient, timeout_s: float) -> None:
        self._url = f"{base_url.rstrip('/')}/api/v1/search"
        self._client = client
        self._timeout_s = timeout_s

    async def accepted(self, message_id: str, since: datetime) -> RelayMessage | None:
        """The relay's newest capture of ``message_id`` (with or without angle brackets) created at
        or after ``since``; None when it holds none. Raises :class:`DependencyDown` when it cannot tell."""
        bare = message_id.strip().strip("<>")
        params = {"query": f"message-id:{bare}", "limit": str(PAGE_SIZE)}
        try:
            response = await self._client.get(self._url, params=params, timeout=self._timeout_s)
        except httpx.TransportError as e:  # connect/read/write errors, timeouts, broken HTTP
            raise DependencyDown(DEPENDENCY, f"relay lookup: {type(e).__name__}: {e}") from e
        if not 200 <= response.status_code < 300:
            wait = retry_after(response.headers.get("retry-after"))
            raise DependencyDown(DEPENDENCY, f"relay lookup answered HTTP {response.status_code}", retry_after_s=wait)
        try:
            page = _SearchPage.model_validate_json(response.content)
        except ValidationError as e:
            raise DependencyDown(
                DEPENDENCY, f"relay lookup answered something that is not a message list: {e.error_count()} errors"
            ) from e
        found = [m for m in page.messages if m.MessageID.strip("<>") == bare and m.Created >= since]
        if found:
            return max(found, key=lambda m: m.Created)
        if page.messages_count > len(page.messages):
            raise DependencyDown(DEPENDENCY, f"relay lookup: more than {PAGE_SIZE} messages match {bare}")
        return None
