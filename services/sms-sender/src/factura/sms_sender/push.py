"""Client for Firebase Cloud Messaging's HTTP v1 API: a notification to the customer's app.

Answers are sorted as for SMS:

* 2xx: accepted; the message ``name`` is the provider id;
* the device token is dead (404 ``UNREGISTERED``; 400 ``INVALID_ARGUMENT`` naming the token;
  403 ``SENDER_ID_MISMATCH``, a token of another Firebase project): :class:`ProviderRefusal`
  ``rejected_by_server``, and every later push to that token will be refused the same way;
* any other 4xx refuses this message (``message_invalid`` for a 400, else ``provider_error``);
* network errors, timeouts, 5xx and 429 (quota) are "not now", and so are 401/403/404, which refuse
  our credentials or project (an expired access token, a wrong project id): :class:`DependencyDown`
  ``("push", ...)`` with FCM's ``Retry-After`` when it sent one.

The access token comes from :class:`~factura.sms_sender.settings.PushSettings`; minting it from a
service account is left to a sidecar, so this service needs no Google client library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import httpx

from factura.common.errors import DependencyDown, retry_after
from factura.sms_sender.provider import ProviderRefusal, json_object
from factura.sms_sender.settings import PushSettings

DEPENDENCY: Final = "push"
_FCM_ERROR: Final = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST: Final = "type.googleapis.com/google.rpc.BadRequest"
#: A topic nobody subscribes to: readiness sends to it with ``validate_only``, which delivers nothing.
_PROBE_TOPIC: Final = "factura-readiness"


class PushProvider:
    def __init__(self, settings: PushSettings, client: httpx.AsyncClient) -> None:
        self._s = settings
        self._client = client
        self._file_token: tuple[int, str] | None = None  # (mtime_ns, token) of access_token_file

    async def send(self, token: str, *, title: str, body: str, link: str | None = None) -> str:
        """FCM's message name (``projects/<id>/messages/<id>``) once it accepted the notification.

        ``link`` travels as ``data.link`` for the app to open (FCM data values are strings only).
        """
        message: dict[str, Any] = {"token": token, "notification": {"title": title, "body": body}}
        if link is not None:
            message["data"] = {"link": link}
        name = (await self._post({"message": message})).get("name")
        return name if isinstance(name, str) else ""

    async def probe(self) -> None:
        """Readiness: a ``validate_only`` send to a topic proves the credentials and the project."""
        await self._post({"validate_only": True, "message": {"topic": _PROBE_TOPIC}})

    async def _post(self, payload: dict[str, Any]) -> dict[str, object]:
        url = f"{self._s.base_url}/v1/projects/{self._s.project_id}/messages:send"
        headers = {"Authorization": f"Bearer {self._access_token()}"}
        try:
            response = await self._client.post(url, json=payload, headers=headers, timeout=self._s.timeout_s)
        except httpx.TransportError as e:  # connect/read/write errors, timeouts, broken HTTP
            raise DependencyDown(DEPENDENCY, f"{type(e).__name__}: {e}") from e
        status = response.status_code
        if 200 <= status < 300:
            return json_object(response)
        raw = json_object(response).get("error")
        error: dict[Any, Any] = raw if isinstance(raw, dict) else {}
        code, text = _error_code(error), str(error.get("message", response.text))
        if _dead_token(status, code, error):
            raise ProviderRefusal(status, None, f"{code}: {text}", "rejected_by_server")
        if status == 429 or status >= 500 or status in (401, 403, 404) or status < 400:
            detail = f"FCM answered HTTP {status} {code}: {text}"
            raise DependencyDown(DEPENDENCY, detail, retry_after_s=retry_after(response.headers.get("retry-after")))
        raise ProviderRefusal(status, None, f"{code}: {text}", "message_invalid" if status == 400 else "provider_error")

    def _access_token(self) -> str:
        """The configured token, or the sidecar's file, re-read only when it changed."""
        path: Path | None = self._s.access_token_file
        if path is None:
            return self._s.access_token.get_secret_value()
        try:
            mtime = path.stat().st_mtime_ns
            if self._file_token is None or self._file_token[0] != mtime:
                self._file_token = (mtime, path.read_text(encoding="utf-8").strip())
        except OSError as e:
            raise DependencyDown(DEPENDENCY, f"access token file: {e}") from e
        return self._file_token[1]


def _error_code(error: dict[Any, Any]) -> str:
    """FCM's own error code (``UNREGISTERED``, ``QUOTA_EXCEEDED``...), else the RPC status."""
    for item in _details(error, _FCM_ERROR):
        if isinstance(code := item.get("errorCode"), str):
            return code
    status = error.get("status")
    return status if isinstance(status, str) else "UNKNOWN"


def _dead_token(status: int, code: str, error: dict[Any, Any]) -> bool:
    """Whether the refusal is about the device token rather than the message or our credentials.

    A 400 ``INVALID_ARGUMENT`` also covers a malformed message, so it counts only when it names
    the token (a field violation on ``message.token``, or FCM's "not a valid registration token").
    """
    if status == 404:
        return code == "UNREGISTERED"
    if status == 403:
        return code == "SENDER_ID_MISMATCH"
    if status != 400:
        return False
    violations = [v for d in _details(error, _BAD_REQUEST) for v in d.get("fieldViolations", [])]
    on_token = any(isinstance(v, dict) and v.get("field") == "message.token" for v in violations)
    return on_token or "registration token" in str(error.get("message", "")).lower()


def _details(error: dict[Any, Any], kind: str) -> list[dict[Any, Any]]:
    details = error.get("details")
    items = details if isinstance(details, list) else []
    return [d for d in items if isinstance(d, dict) and d.get("@type") == kind]
