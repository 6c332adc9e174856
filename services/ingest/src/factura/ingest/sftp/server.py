"""The SFTP server: a tenant logs in with its key, as its tenant id, and sees only its own folder.

Each session is chrooted to ``<root>/<tenant>/`` (asyncssh's ``chroot``: ``..`` cannot climb out,
links cannot be made). Within it a tenant may read everything (its reports, its mapping), write
only files directly in ``inbox/``, rename them within ``inbox/`` (``x.csv.part`` → ``x.csv``) and
remove files from its folders; no directories, links, shell, exec, scp or forwarding. Closing a
written file, or renaming one to its final name, hands it to the :class:`~.inbox.Inbox`.

asyncssh closes the handles a broken connection left open as if the client had, so a file cut
short by a dropped connection looks complete: clients that cannot risk it upload as ``x.csv.part``
(or ``.x.csv``) and rename when done, which the drop waits for.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from pathlib import Path

import asyncssh
from asyncssh.constants import FXF_APPEND, FXF_CREAT, FXF_TRUNC, FXF_WRITE

from factura.ingest.sftp.inbox import Inbox
from factura.ingest.sftp.keys import TenantKeys
from factura.ingest.sftp.layout import FAILED, INBOX, PROCESSED, Layout
from factura.ingest.sftp.settings import SftpSettings

_WRITE_FLAGS = FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC
#: Unauthenticated connections are dropped after this long.
LOGIN_TIMEOUT_S = 30


class _Login(asyncssh.SSHServer):
    """Public-key authentication against the tenant's own ``authorized_keys``."""

    def __init__(self, keys: TenantKeys, layout: Layout) -> None:
        self._keys, self._layout = keys, layout
        self._conn: asyncssh.SSHServerConnection | None = None
        self._username = ""

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn

    def begin_auth(self, username: str) -> bool:
        assert self._conn is not None
        self._username = username
        # An unknown user gets an empty key list, not a different answer: user names are not revealed.
        self._conn.set_authorized_keys(self._keys.authorized(username) or asyncssh.import_authorized_keys(""))
        return True

    def auth_completed(self) -> None:
        self._layout.ensure(self._username)

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False


class DropSftp(asyncssh.SFTPServer):
    def __init__(
        self, chan: asyncssh.SSHServerChannel[bytes], *, layout: Layout, inbox: Inbox, max_file_bytes: int
    ) -> None:
        self.tenant_id: str = chan.get_extra_info("username")
        self.home = layout.tenant_dir(self.tenant_id)
        super().__init__(chan, chroot=os.fsencode(self.home))
        self._inbox, self._max_bytes = inbox, max_file_bytes
        self._writes: dict[object, Path] = {}
        self._oversized: set[object] = set()

    def _local(self, path: bytes) -> Path:
        return Path(os.fsdecode(self.map_path(path)))

    def _in(self, local: Path, *folders: str) -> bool:
        return local.parent in {self.home / f for f in folders}

    def _changeable(self, local: Path) -> Path:
        """``local`` if the tenant may write, rename or remove it there: a file directly in ``inbox/``."""
        if not self._in(local, INBOX):
            raise asyncssh.SFTPPermissionDenied("files can only be written in /inbox/")
        if self._inbox.busy(local):
            raise asyncssh.SFTPFailure("the file is being ingested; try again when it has left /inbox/")
        return local

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        if not pflags & _WRITE_FLAGS:
            return super().open(path, pflags, attrs)
        local = self._changeable(self._local(path))
        attrs.permissions = None  # the service's umask decides, not the client
        file_obj = super().open(path, pflags, attrs)
        self._writes[file_obj] = local
        self._inbox.opened(local)
        return file_obj

    def write(self, file_obj: object, offset: int, data: bytes) -> int | Awaitable[int]:
        if offset + len(data) > self._max_bytes:
            self._oversized.add(file_obj)
            raise asyncssh.SFTPFailure(f"files of at most {self._max_bytes} bytes are accepted")
        return super().write(file_obj, offset, data)

    def close(self, file_obj: object) -> None:
        super().close(file_obj)
        if (local := self._writes.pop(file_obj, None)) is None:
            return
        if file_obj in self._oversized:  # what was written is a cut file: not worth keeping, nor ingesting
            self._oversized.discard(file_obj)
            local.unlink(missing_ok=True)
            self._inbox.closed(self.tenant_id, local, complete=False)
        else:
            self._inbox.closed(self.tenant_id, local)

    def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        if file_obj not in self._writes:
            raise asyncssh.SFTPPermissionDenied("only files being written can change attributes")
        super().fsetstat(file_obj, attrs)

    def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        self._changeable(self._local(path))
        super().setstat(path, attrs)

    def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        self._changeable(self._local(path))
        super().lsetstat(path, attrs)

    def remove(self, path: bytes) -> None:
        local = self._local(path)
        if not self._in(local, PROCESSED, FAILED):
            self._changeable(local)
        if self._inbox.writing(local):
            raise asyncssh.SFTPFailure("the file is being uploaded")
        super().remove(path)

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        new = self._renamable(oldpath, newpath)
        super().rename(oldpath, newpath)
        self._inbox.offer(self.tenant_id, new)

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        new = self._renamable(oldpath, newpath)
        super().posix_rename(oldpath, newpath)
        self._inbox.offer(self.tenant_id, new)

    def _renamable(self, oldpath: bytes, newpath: bytes) -> Path:
        old, new = self._changeable(self._local(oldpath)), self._changeable(self._local(newpath))
        if self._inbox.writing(old) or self._inbox.writing(new):
            raise asyncssh.SFTPFailure("the file is being uploaded")
        return new

    def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        raise asyncssh.SFTPPermissionDenied("no folders can be made")

    def rmdir(self, path: bytes) -> None:
        raise asyncssh.SFTPPermissionDenied("no folders can be removed")

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPPermissionDenied("no links can be made")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPPermissionDenied("no links can be made")


async def listen(
    settings: SftpSettings, *, host_key: asyncssh.SSHKey, layout: Layout, inbox: Inbox
) -> asyncssh.SSHAcceptor:
    """Start accepting SFTP connections on ``settings.host:port``."""
    keys = TenantKeys(settings.keys_dir)

    def sftp(chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
        return DropSftp(chan, layout=layout, inbox=inbox, max_file_bytes=settings.max_file_bytes)

    return await asyncssh.listen(
        settings.host,
        settings.port,
        server_host_keys=[host_key],
        server_factory=lambda: _Login(keys, layout),
        sftp_factory=sftp,
        sftp_version=3,
        allow_scp=False,
        gss_host=None,
        agent_forwarding=False,
        x11_forwarding=False,
        allow_pty=False,
        login_timeout=LOGIN_TIMEOUT_S,
    )
