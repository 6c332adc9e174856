"""Where the drop's files live.

``<root>/<tenant>/`` is what a tenant sees (its SFTP chroot): ``inbox/`` to drop files in,
``processed/`` and ``failed/`` where they end with their reports, and optionally the operator's
``mapping.toml``. ``<root>/.work/`` holds reports still being written; it is no tenant's folder
(a tenant id never starts with a dot), and it sits on the same file system as the tenants', so
every move out of it is an atomic rename.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path

from factura.common.envelope import TENANT_PATTERN

INBOX, PROCESSED, FAILED = "inbox", "processed", "failed"
WORK = ".work"
PART_SUFFIX = ".part"


def ignored(name: str) -> bool:
    """A file still being uploaded by convention (``x.csv.part``, ``.x.csv``): left alone until renamed."""
    return name.startswith(".") or name.endswith(PART_SUFFIX)


def is_tenant(name: str) -> bool:
    return re.fullmatch(TENANT_PATTERN, name) is not None


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def at(cls, root: Path) -> Layout:
        """The layout under ``root`` (resolved, as the SFTP chroot compares real paths)."""
        root.mkdir(parents=True, exist_ok=True)
        return cls(root.resolve())

    def tenant_dir(self, tenant_id: str) -> Path:
        if not is_tenant(tenant_id):  # a user name never becomes a path unchecked
            raise ValueError(f"{tenant_id!r} is not a tenant id")
        return self.root / tenant_id

    def inbox(self, tenant_id: str) -> Path:
        return self.tenant_dir(tenant_id) / INBOX

    @property
    def work(self) -> Path:
        return self.root / WORK

    def ensure(self, tenant_id: str) -> Path:
        """Create the tenant's folders (and the work folder) if missing; returns the tenant's folder."""
        home = self.tenant_dir(tenant_id)
        for folder in (INBOX, PROCESSED, FAILED):
            (home / folder).mkdir(parents=True, exist_ok=True)
        self.work.mkdir(exist_ok=True)
        return home

    def tenants(self) -> list[str]:
        """Tenants with an inbox under the root."""
        return sorted(p.name for p in self.root.iterdir() if is_tenant(p.name) and (p / INBOX).is_dir())

    def waiting(self, tenant_id: str) -> list[Path]:
        """Files complete by name in the tenant's inbox, oldest first (symlinks are never followed)."""
        files = []
        for entry in self.inbox(tenant_id).iterdir():
            if ignored(entry.name):
                continue
            try:
                info = entry.lstat()
            except FileNotFoundError:  # taken or removed meanwhile
                continue
            if stat.S_ISREG(info.st_mode):
                files.append((info.st_mtime_ns, entry))
        return [entry for _, entry in sorted(files)]

    def tenant_of(self, path: Path) -> str | None:
        """The tenant whose inbox directly holds ``path``, if any."""
        try:
            tenant, folder, _ = path.relative_to(self.root).parts
        except ValueError:
            return None
        return tenant if folder == INBOX and is_tenant(tenant) else None
