"""Client for a Twilio-shaped SMS API (Twilio itself in production, the capture server locally).

Answers are sorted the way the SMTP side sorts them (the voice client shares this sorting):

* 2xx: accepted;
* a 4xx about the message (e.g. Twilio's 400/21211 for a number that is not a phone) refuses it
  for good: :class:`ProviderRefusal`, published as ``delivery.failed`` with the reason the error
  code means (:data:`REFUSAL_REASONS`: a landline is ``not_mobile``, an opted-out recipient a
  ``complaint``, so the address is suppressed);
* network errors, timeouts, 5xx and 429 are "not now", and so are 401/403/404, which refuse our
  credentials or account rather than the message (a configuration fix, after which every
  waiting SMS can go): :class:`DependencyDown` ``("sms", ...)``, retried by the consumer loop,
  carrying the provider's ``Retry-After`` when it sent one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Final

import httpx

from factura.common.errors import DependencyDown, retry_after
from factura.common.events import FailureReason
from factura.sms_sender.settings import ProviderSettings

DEPENDENCY: Final = "sms"
#: Answers that refuse the account or the credentials, not the message.
_NOT_THE_MESSAGE: Final = frozenset({401, 403, 404})
#: Twilio error codes that say this recipient cannot take this message; any other refusal is a
#: ``provider_error``. Region permissions (21408, 21215) are account settings, but they refuse one
#: country's numbers only: waiting would stall every other message behind them, so they refuse.
REFUSAL_REASONS: Final[dict[int, FailureReason]] = {
    21211: "rejected_by_server",  # invalid 'To' phone number
    21214: "rejected_by_server",  # 'To' phone number cannot be reached (calls)
    21215: "rejected_by_server",  # geo permission does not allow calling this number
    21217: "rejected_by_server",  # phone number does not appear to be valid
    21401: "rejected_by_server",  # invalid phone number
    21408: "rejected_by_server",  # SMS not enabled for the region of the 'To' number
    21612: "rejected_by_server",  # 'To' number not reachable via SMS from our number
    21610: "complaint",  # the recipient replied STOP: never text them again
    21614: "not_mobile",  # 'To' number is not a mobile number (a landline)
}

#: Messages per page of a list (Twilio's most), and how many pages a lookup reads at most.
_PAGE_SIZE: Final = 1000
_MAX_PAGES: Final = 5

log = logging.getLogger(__name__)


def _created(message: dict[str, object]) -> datetime:
    """A listed message's ``date_created`` (RFC 2822, as Twilio gives it); DependencyDown if unreadable."""
    value = message.get("date_created")
    try:
        return parsedate_to_datetime(str(value))
    except (TypeError, ValueError) as e:
        raise DependencyDown(DEPENDENCY, f"a listed message has no readable date_created: {value!r}") from e


@dataclass(frozen=True)
class ProviderRefusal(Exception):
    """The provider refused this message for good (4xx): retrying will not help."""

    status: int
    code: int | None
    text: str
    reason: FailureReason = "provider_error"


def json_object(response: httpx.Response) -> dict[str, object]:
    """The response body as a JSON object, ``{}`` if it is not one."""
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class TwilioClient:
    """What Twilio's SMS and Calls APIs share: the account, Basic auth, answer sorting, readiness."""

    dependency: ClassVar[str]

    def __init__(self, settings: ProviderSettings, client: httpx.AsyncClient) -> None:
        self._s = settings
        self._client = client

    @property
    def _account_url(self) -> str:
        return f"{self._s.base_url}/2010-04-01/Accounts/{self._s.account_sid}"

    @property
    def _auth(self) -> tuple[str, str]:
        return self._s.account_sid, self._s.auth_token.get_secret_value()

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One authenticated call within the provider timeout; no answer at all is :class:`DependencyDown`."""
        try:
            return await self._client.request(method, url, auth=self._auth, timeout=self._s.timeout_s, **kwargs)
        except httpx.TransportError as e:  # connect/read/write errors, timeouts, broken HTTP
            raise DependencyDown(self.dependency, f"{type(e).__name__}: {e}") from e

    async def _create(self, resource: str, form: dict[str, str]) -> str:
        """POST ``form`` to ``<account>/<resource>.json``; the new resource's sid (``""`` if none)."""
        response = await self._request("POST", f"{self._account_url}/{resource}.json", data=form)
        status = response.status_code
        if 200 <= status < 300:
            sid = json_object(response).get("sid")
            if isinstance(sid, str):
                return sid
            log.warning("%s provider accepted (HTTP %d) without a sid", self.dependency, status)
            return ""
        if status == 429 or status >= 500 or status in _NOT_THE_MESSAGE or status < 400:
            wait = retry_after(response.headers.get("retry-after"))
            raise DependencyDown(self.dependency, f"provider answered HTTP {status}", retry_after_s=wait)
        payload = json_object(response)
        code, text = payload.get("code"), str(payload.get("message", response.text))
        if not isinstance(code, int):
            raise ProviderRefusal(status, None, text)
        raise ProviderRefusal(status, code, text, REFUSAL_REASONS.get(code, "provider_error"))

    async def _get_json(self, url: str, params: dict[str, str] | None) -> dict[str, object]:
        """GET a resource; anything but a 2xx JSON object is :class:`DependencyDown` (not now)."""
        response = await self._request("GET", url, params=params)
        if not 200 <= response.status_code < 300:
            wait = retry_after(response.headers.get("retry-after"))
            raise DependencyDown(self.dependency, f"provider answered HTTP {response.status_code}", retry_after_s=wait)
        payload = json_object(response)
        if not payload:
            raise DependencyDown(self.dependency, "provider answered something that is not a JSON object")
        return payload

    async def probe(self) -> None:
        """Readiness: GET the account resource with our credentials, within the provider timeout.

        Fails on network errors, timeouts, 5xx, 429, 401 and 403. Twilio answers 200 for valid
        credentials; the local capture server has no account resource and answers 404, which
        still proves it is up.
        """
        response = await self._request("GET", f"{self._account_url}.json")
        if response.status_code in (401, 403, 429) or response.status_code >= 500:
            raise DependencyDown(self.dependency, f"provider answered HTTP {response.status_code}")


class SmsProvider(TwilioClient):
    dependency = DEPENDENCY

    async def find(self, to: str, body: str, since: datetime) -> str | None:
        """The sid of a message with exactly ``body`` that the provider took for ``to`` since ``since``.

        Twilio's message list (``GET Messages.json?To=&From=``), newest first, read page by page
        until the messages are older than ``since``. A message whose status is ``failed`` never
        left the provider and does not count. Anything but a readable list raises
        :class:`DependencyDown`: an answer we cannot read is no "no". Past ``_MAX_PAGES`` pages
        it gives up and answers None (logged): sending again beats stalling the partition.
        """
        url: str | None = f"{self._account_url}/Messages.json"
        params: dict[str, str] | None = {"To": to, "From": self._s.from_number, "PageSize": str(_PAGE_SIZE)}
        for _ in range(_MAX_PAGES):
            if url is None:
                return None
            page = await self._get_json(url, params)
            messages = page.get("messages")
            if not isinstance(messages, list):
                raise DependencyDown(self.dependency, "the message list has no 'messages'")
            for message in messages:
                if not isinstance(message, dict):
                    raise DependencyDown(self.dependency, f"a listed message is not an object: {message!r}")
                if _created(message) < since:
                    return None
                if message.get("body") == body and message.get("status") != "failed":
                    return str(message.get("sid", ""))
            following = page.get("next_page_uri")
            url, params = (f"{self._s.base_url}{following}" if isinstance(following, str) else None), None
        # Not a question the provider can answer in time: send again rather than stall the partition.
        log.warning("more than %d messages to one number since %s; not looked through", _MAX_PAGES * _PAGE_SIZE, since)
        return None

    async def send(self, to: str, body: str, *, status_callback: str | None = None) -> str:
        """The provider's message id (``""`` if it named none) once it accepted the message (a 2xx).

        ``status_callback``: a URL the provider POSTs the final status to (delivered/undelivered),
        signed with ``X-Twilio-Signature``.
        """
        form = {"To": to, "From": self._s.from_number, "Body": body}
        if status_callback:
            form["StatusCallback"] = status_callback
        return await self._create("Messages", form)
