"""Client for a Twilio-shaped SMS API (Twilio itself in production, the capture server locally)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from factura.sms_sender.settings import ProviderSettings


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

    async def send(self, to: str, body: str) -> str:
        """Return the provider's message id. 5xx, 429 and network errors raise (retried by the loop)."""
        response = await self._client.post(
            f"{self._s.base_url}/2010-04-01/Accounts/{self._s.account_sid}/Messages.json",
            data={"To": to, "From": self._s.from_number, "Body": body},
            auth=(self._s.account_sid, self._s.auth_token.get_secret_value()),
            timeout=self._s.timeout_s,
        )
        if response.status_code == 429 or response.status_code >= 500:
            response.raise_for_status()
        if response.status_code >= 400:
            payload = _json(response)
            code = payload.get("code")
            raise ProviderRefusal(
                response.status_code,
                code if isinstance(code, int) else None,
                str(payload.get("message", response.text)),
            )
        sid = _json(response).get("sid")
        if not isinstance(sid, str):
            raise ValueError("provider answered without a message sid")
        return sid


def _json(response: httpx.Response) -> dict[str, object]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
