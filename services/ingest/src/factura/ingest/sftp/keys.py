"""The keys of the SFTP drop: the server's host key, and each tenant's authorized client keys.

A tenant's keys are ``<keys_dir>/<tenant>.pub`` in OpenSSH ``authorized_keys`` format (one key a
line; options such as ``from="10.0.0.0/8"`` are honoured). They are read at each login, so adding
or revoking a key needs no restart. Only public keys log in: no passwords, no keyboard-interactive.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import asyncssh

from factura.ingest.sftp.layout import is_tenant
from factura.ingest.sftp.settings import SftpSettings

log = logging.getLogger(__name__)


class HostKeyMissing(RuntimeError):
    """No host key to serve with: clients could not pin the server, so the drop does not start."""


def host_key(settings: SftpSettings) -> asyncssh.SSHKey:
    """The server's host key from ``host_key_file``; created there first when ``generate_host_key`` (dev)."""
    path = settings.host_key_file
    if path is None:
        raise HostKeyMissing("sftp.host_key_file is not set")
    if not path.exists():
        if not settings.generate_host_key:
            raise HostKeyMissing(f"no SFTP host key at {path} (set sftp.generate_host_key for a dev key)")
        _write_new_key(path)
    return asyncssh.read_private_key(path)


def _write_new_key(path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # readable by the service alone
    with os.fdopen(fd, "wb") as out:
        out.write(key.export_private_key())
    log.warning("generated an SFTP host key for development", extra={"path": str(path)})


class TenantKeys:
    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir

    def authorized(self, username: str) -> asyncssh.SSHAuthorizedKeys | None:
        """The keys that may log in as ``username`` (a tenant id); ``None`` for anyone else."""
        if not is_tenant(username):
            return None
        path = self.keys_dir / f"{username}.pub"
        try:
            return asyncssh.read_authorized_keys(str(path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, asyncssh.KeyImportError):
            log.exception("unreadable authorized keys; nobody logs in as this tenant", extra={"tenant_id": username})
            return None
