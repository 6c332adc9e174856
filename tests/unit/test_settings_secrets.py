"""Secrets: no credential defaults, env or mounted files, devstack values refused outside the devstack."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsError

from factura.audit.settings import Settings as AuditSettings
from factura.common.dlq import Settings as DlqSettings
from factura.common.settings import (
    DEVSTACK_ENV,
    DEVSTACK_MARKER,
    SECRETS_DIR_ENV,
    LinkSettings,
    S3Settings,
    ServiceSettings,
    secret_values,
)
from factura.common.storage import s3_session
from factura.devstack.config import SERVICES, StackConfig, service_env
from factura.email_sender.settings import Settings as EmailSettings
from factura.ingest.settings import Settings as IngestSettings
from factura.renderer.settings import Settings as RendererSettings
from factura.scheduler.settings import Settings as SchedulerSettings
from factura.sms_sender.settings import Settings as SmsSettings

SETTINGS: dict[str, type[ServiceSettings]] = {
    "ingest": IngestSettings,
    "renderer": RendererSettings,
    "email-sender": EmailSettings,
    "sms-sender": SmsSettings,
    "scheduler": SchedulerSettings,
    "audit": AuditSettings,
}
REAL = "a-real-secret-0123456789"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No FACTURA_* or AWS_* variable of the caller leaks in; AWS config files and IMDS are out of reach."""
    for name in list(os.environ):
        if name.startswith(("FACTURA_", "AWS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


async def credentials(settings: S3Settings) -> Any:
    """What the session resolves; aioboto3's stubs say sync, but the call returns a coroutine."""
    pending: Any = s3_session(settings).get_credentials()
    return await pending


# -- (a) no credential has a default ------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_no_secret_has_a_default(service: str) -> None:
    assert {path: value for path, value in secret_values(SETTINGS[service]()) if value} == {}


def test_the_walk_finds_nested_and_listed_secrets() -> None:
    settings = EmailSettings(
        admin={"tokens": [SecretStr(REAL)]}, smtp={"username": "u", "password": SecretStr("p"), "security": "tls"}
    )
    paths = dict(secret_values(settings))
    assert {"smtp.password", "links.secret", "links.pseudonym_secret", "admin.tokens[0]"} <= paths.keys()
    assert (paths["admin.tokens[0]"], paths["smtp.password"]) == (REAL, "p")


def test_dlq_tool_has_no_secret_default() -> None:
    assert all(not value for _, value in secret_values(DlqSettings()))


@pytest.mark.parametrize("settings_cls", [IngestSettings, RendererSettings, EmailSettings])
def test_s3_has_no_keys_by_default(settings_cls: type[IngestSettings | RendererSettings | EmailSettings]) -> None:
    s3 = settings_cls().s3
    assert (s3.access_key_id, s3.secret_access_key) == (None, None)


async def test_without_keys_the_session_uses_the_aws_credential_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACHAIN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain-secret")
    found = await credentials(S3Settings())
    assert found is not None
    assert (found.access_key, found.secret_key, found.method) == ("AKIACHAIN", "chain-secret", "env")


async def test_without_keys_or_chain_there_are_no_credentials() -> None:
    assert await credentials(S3Settings()) is None


async def test_configured_keys_win_over_the_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACHAIN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain-secret")
    settings = S3Settings(access_key_id="AKIASTATIC", secret_access_key=SecretStr("static-secret"))
    found = await credentials(settings)
    assert found is not None
    assert (found.access_key, found.secret_key) == ("AKIASTATIC", "static-secret")


@pytest.mark.parametrize(
    "keys", [{"access_key_id": "AKIA"}, {"secret_access_key": SecretStr("only-the-secret")}], ids=["id", "secret"]
)
def test_s3_keys_come_in_pairs(keys: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match=r"s3\.access_key_id and s3\.secret_access_key"):
        S3Settings.model_validate(keys)


# -- (b) every secret from env or a mounted file ------------------------------------------------


def test_secret_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACTURA_SMS_SENDER_PROVIDER__AUTH_TOKEN", REAL)
    assert SmsSettings().provider.auth_token.get_secret_value() == REAL


def test_nested_secret_from_a_mounted_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "FACTURA_SMS_SENDER_PROVIDER__AUTH_TOKEN").write_text(REAL + "\n")  # editors add newlines
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path))
    assert SmsSettings().provider.auth_token.get_secret_value() == REAL


def test_files_and_env_merge_inside_one_group(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "FACTURA_RENDERER_S3__ACCESS_KEY_ID").write_text("AKIAFILE")
    (tmp_path / "FACTURA_RENDERER_S3__SECRET_ACCESS_KEY").write_text("file-secret")
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("FACTURA_RENDERER_S3__BUCKET", "from-env")
    s3 = RendererSettings().s3
    assert (s3.bucket, s3.access_key_id) == ("from-env", "AKIAFILE")
    assert s3.secret_access_key is not None
    assert s3.secret_access_key.get_secret_value() == "file-secret"


def test_env_wins_over_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "FACTURA_RENDERER_LINKS__SECRET").write_text("from-the-file-0123456789")
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("FACTURA_RENDERER_LINKS__SECRET", REAL)
    assert RendererSettings().links.secret.get_secret_value() == REAL


def test_list_secret_from_a_file_is_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "FACTURA_EMAIL_SENDER_ADMIN__TOKENS").write_text(json.dumps([REAL, REAL + "-old"]))
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path))
    assert [t.get_secret_value() for t in EmailSettings().admin.tokens] == [REAL, REAL + "-old"]


def test_a_kubernetes_secret_volume_layout_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The kubelet mounts keys as links into a hidden, atomically swapped ``..data`` directory."""
    stamp = tmp_path / "..2026_01_01_00_00_00.1"
    stamp.mkdir()
    (stamp / "FACTURA_SCHEDULER_HELPDESK__SECRET").write_text(REAL)
    (tmp_path / "..data").symlink_to(stamp.name)
    (tmp_path / "FACTURA_SCHEDULER_HELPDESK__SECRET").symlink_to("..data/FACTURA_SCHEDULER_HELPDESK__SECRET")
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path))
    helpdesk = SchedulerSettings().helpdesk
    assert helpdesk is not None
    assert helpdesk.secret.get_secret_value() == REAL


def test_a_file_of_another_service_is_not_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "FACTURA_RENDERER_LINKS__SECRET").write_text(REAL)
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path))
    assert SmsSettings().links.secret.get_secret_value() == ""


def test_a_missing_secrets_dir_stops_the_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path / "not-mounted"))
    with pytest.raises(SettingsError, match="not-mounted"):
        RendererSettings()


# -- (c) devstack secrets are refused outside the devstack --------------------------------------


def test_a_devstack_secret_is_refused_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACTURA_RENDERER_LINKS__PSEUDONYM_SECRET", DEVSTACK_MARKER + "pseudonym-secret")
    with pytest.raises(ValidationError, match=r"links\.pseudonym_secret holds a devstack secret"):
        RendererSettings()


def test_a_devstack_secret_in_a_file_or_a_list_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "FACTURA_EMAIL_SENDER_WEBHOOKS__TOKENS").write_text(json.dumps([REAL, DEVSTACK_MARKER + "token-00"]))
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path))
    with pytest.raises(ValidationError, match=r"webhooks\.tokens\[1\]"):
        EmailSettings()


def test_a_devstack_secret_passed_in_code_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"links\.secret"):
        RendererSettings(links=LinkSettings(secret=SecretStr(DEVSTACK_MARKER + "link-secret")))


@pytest.mark.parametrize("value", ["true", "yes", "0", ""])
def test_only_devstack_equal_one_allows_them(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(DEVSTACK_ENV, value)
    monkeypatch.setenv("FACTURA_SMS_SENDER_PROVIDER__AUTH_TOKEN", DEVSTACK_MARKER + "token")
    with pytest.raises(ValidationError, match=r"provider\.auth_token"):
        SmsSettings()


@pytest.mark.parametrize("service", SERVICES)
def test_the_devstack_env_starts_only_with_its_marker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, service: str
) -> None:
    """Every fixed devstack secret carries the marker: accepted with FACTURA_DEVSTACK=1, refused without."""
    env = service_env(service, StackConfig(data_dir=tmp_path))
    assert env.pop(DEVSTACK_ENV) == "1"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    refused = any(DEVSTACK_MARKER in value for value in env.values())
    if refused:
        with pytest.raises(ValidationError, match="holds a devstack secret"):
            SETTINGS[service]()
    monkeypatch.setenv(DEVSTACK_ENV, "1")
    secrets = [value for _, value in secret_values(SETTINGS[service]()) if value]
    assert all(value.startswith(DEVSTACK_MARKER) for value in secrets), secrets
    assert refused == bool(secrets)


def test_every_fixed_devstack_secret_carries_the_marker() -> None:
    cfg = StackConfig()
    fixed = [
        cfg.sms_auth_token,
        cfg.s3_access_key_id,
        cfg.s3_secret_access_key,
        cfg.link_secret,
        cfg.pseudonym_secret,
        cfg.webhook_secret,
        cfg.admin_token,
    ]
    assert all(value.startswith(DEVSTACK_MARKER) for value in fixed)
