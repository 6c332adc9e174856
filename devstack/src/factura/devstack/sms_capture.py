"""Twilio-shaped SMS provider capture server: the local stand-in for Twilio's Messages API.

The sms-sender only ever sees a base URL and credentials, so pointing it here exercises its real
HTTP client: Basic auth, form-encoded requests, Twilio's error bodies for bad numbers, and signed
status callbacks. Every message (sent or refused) is recorded in memory and in ``sms.jsonl`` so
tests and the demo can see what would have reached a phone.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import uvicorn
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse

log = logging.getLogger("factura.devstack.sms")

DEFAULT_FAILING_PREFIXES = ("+1312555",)
#: Twilio's answers when a required field is missing.
_MISSING = {
    "To": (21604, "A 'To' phone number is required."),
    "From": (21603, "A 'From' phone number is required."),
    "Body": (21602, "Message body is required."),
}


@dataclass(frozen=True)
class ProviderConfig:
    data_dir: Path
    account_sid: str
    auth_token: str
    failing_prefixes: tuple[str, ...] = DEFAULT_FAILING_PREFIXES


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's ``X-Twilio-Signature``: HMAC-SHA1 over the URL plus the sorted form fields."""
    payload = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def _error(code: int, message: str, status: int) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "status": status}, status_code=status)


def _authorized(request: Request, cfg: ProviderConfig, account_sid: str) -> bool:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    expected = f"{cfg.account_sid}:{cfg.auth_token}".encode()
    return account_sid == cfg.account_sid and hmac.compare_digest(f"{user}:{password}".encode(), expected)


async def _status_callback(url: str, params: dict[str, str], auth_token: str) -> None:
    """Tell the sender its message was delivered; best effort, like the real provider."""
    headers = {"X-Twilio-Signature": twilio_signature(auth_token, url, params)}
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.post(url, data=params, headers=headers)
        log.info("status callback %s -> %d", url, response.status_code)
    except httpx.HTTPError as e:
        log.warning("status callback %s failed: %s", url, e)


def create_app(cfg: ProviderConfig) -> FastAPI:
    app = FastAPI(title="Factura devstack SMS capture")
    messages: list[dict[str, Any]] = []
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    journal = cfg.data_dir / "sms.jsonl"

    def record(message: dict[str, Any]) -> None:
        messages.append(message)
        with journal.open("a", encoding="utf-8") as f:
            f.write(json.dumps(message) + "\n")

    @app.post("/2010-04-01/Accounts/{account_sid}/Messages.json")
    async def send(account_sid: str, request: Request, background: BackgroundTasks) -> JSONResponse:
        if not _authorized(request, cfg, account_sid):
            return _error(20003, "Authenticate", 401)
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        for field, (code, text) in _MISSING.items():
            if not form.get(field):
                return _error(code, text, 400)
        to = form["To"]
        error = f"The 'To' number {to} is not a valid phone number." if to.startswith(cfg.failing_prefixes) else None
        message: dict[str, Any] = {
            "sid": "SM" + secrets.token_hex(16),
            "status": "failed" if error else "queued",
            "to": to,
            "from": form["From"],
            "body": form["Body"],
            "account_sid": account_sid,
            "date_created": datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000"),
            "error_code": 21211 if error else None,
            "error_message": error,
        }
        record(message)
        if error:
            return _error(21211, error, 400)
        if callback := form.get("StatusCallback"):
            params = {"MessageSid": message["sid"], "MessageStatus": "delivered", "AccountSid": account_sid}
            background.add_task(_status_callback, callback, params | {"To": to, "From": form["From"]}, cfg.auth_token)
        return JSONResponse(message, status_code=201)

    @app.get("/_capture/messages")
    async def captured() -> list[dict[str, Any]]:
        return messages

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m factura.devstack.sms_capture", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--account-sid", required=True)
    parser.add_argument("--auth-token", required=True)
    parser.add_argument("--failing-prefix", action="append", help="repeatable; default +1312555")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    prefixes = tuple(args.failing_prefix or DEFAULT_FAILING_PREFIXES)
    app = create_app(ProviderConfig(args.data_dir, args.account_sid, args.auth_token, prefixes))
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
