"""Client for a Twilio-shaped SMS API (Twilio itself in production, the capture server locally).

Answers are sorted the way the SMTP side sorts them:

* 2xx: accepted;
* a 4xx about the message (e.g. Twilio's 400/21211 for a number that is not a phone) refuses it
  for good: :class:`ProviderRefusal`, published as ``delivery.failed``;
* network errors, timeouts, 5xx and 429 are "not now", and so are 401/403/404, which refuse our
  credentials or account rather than the message (a configuration fix, after which every
  waiting SMS can go): :class:`DependencyDown` ``("sms", ...)``, retried by the consumer loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

import httpx

from factura.common.errors import DependencyDown
from factura.sms_sender.settings import ProviderSettings

DEPENDENCY: Final = "sms"
#: Answers that refuse the account or the credentials, not the message.
_NOT_THE_MESSAGE: Final = frozenset({401, 403, 404})

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProviderRefusal(Exception):
    """The provider refused this message for good (4xx): retrying will not help."""

    status: int
    code: int | None
    text: str


class SmsProvider:
    def __init__(self, settings: ProviderSettings, client: httpx.AsyncClient) -> None:
        self._s = settings
        self._client = client

    @property
    def _account_url(self) -> str:
        return f"{self._s.base_url}/2010-04-01/Accounts/{self._s.account_sid}"

    @property
    def _auth(self) -> tuple[str, str]:
        return self._s.account_sid, self._s.auth_token.get_secret_value()

    async def send(self, to: str, body: str) -> str:
        """The provider's message id (``""`` if it named none) once it accepted the message (a 2xx)."""
        try:
            response = await self._client.post(
                f"{self._account_url}/Messages.json",
                data={"To": to, "From": self._s.from_number, "Body": body},
                auth=self._auth,
                timeout=self._s.timeout_s,
            )
        except httpx.TransportError as e:  # connect/read/write errors, timeouts, broken HTTP
            raise DependencyDown(DEPENDENCY, f"{type(e).__name__}: {e}") from e
        status = response.status_code
        if 200 <= status < 300:
            sid = _json(response).get("sid")
            if isinstance(sid, str):
                return sid
            log.warning("SMS provider accepted the message (HTTP %d) without a message sid", status)
            return ""
        if status == 429 or status >= 500 or status in _NOT_THE_MESSAGE or status < 400:
            raise DependencyDown(DEPENDENCY, f"provider answered HTTP {status}")
        payload = _json(response)
        code = payload.get("code")
        text = str(payload.get("message", response.text))
        raise ProviderRefusal(status, code if isinstance(code, int) else None, text)

    async def probe(self) -> None:
        """Readiness: GET the account resource with our credentials, within the provider timeout.

        Fails on network errors, timeouts, 5xx, 429, 401 and 403. Twilio answers 200 for valid
        credentials; the local capture server has no account resource and answers 404, which
        still proves it is up.
        """
        try:
            response = await self._client.get(f"{self._account_url}.json", auth=self._auth, timeout=self._s.timeout_s)
        except httpx.TransportError as e:
            raise DependencyDown(DEPENDENCY, f"{type(e).__name__}: {e}") from e
        if response.status_code in (401, 403, 429) or response.status_code >= 500:
            raise DependencyDown(DEPENDENCY, f"provider answered HTTP {response.status_code}")


def _json(response: httpx.Response) -> dict[str, object]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
