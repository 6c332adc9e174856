"""``python -m factura.audit``: run the service; with a command, operate on the audit trail.

python -m factura.audit                         run the service
python -m factura.audit verify --tenant T       check T's chain; exit 1 and name the first broken link
python -m factura.audit export --tenant T       the chain as NDJSON, to verify offline
python -m factura.audit keygen --out FILE       a new Ed25519 checkpoint-signing key
python -m factura.audit indexes                 create audit's indexes (the Kubernetes index Job), exit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path

from factura.audit.bootstrap import bootstrap, ensure_indexes
from factura.audit.chain import ChainWriter
from factura.audit.checkpoints import Signer, generate_key
from factura.audit.erase import IdleContacts
from factura.audit.retention import apply_retention
from factura.audit.settings import Settings
from factura.audit.store import AuditDb
from factura.audit.verify import export_chain, verify_chain
from factura.common.apikeys.cli import run as keys_cli
from factura.common.envelope import TENANT_PATTERN, utcnow
from factura.common.mongo import create_client, create_indexes, database
from factura.common.pii import COLLECTION as CUSTOMER_KEYS
from factura.common.pii import FieldCipher, NoKeyStore
from factura.common.runtime import main
from factura.common.tenants import TenantDirectory


def _tenant(value: str) -> str:
    if not re.fullmatch(TENANT_PATTERN, value):
        raise argparse.ArgumentTypeError(f"not a tenant id: {value!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m factura.audit", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command")
    verify = commands.add_parser("verify", help="check a tenant's hash chain and signed checkpoints")
    verify.add_argument("--tenant", required=True, type=_tenant)
    verify.add_argument("--json", action="store_true", help="print the full result as JSON")
    verify.add_argument("--public-key", type=Path, help="verify with this public key (PEM) instead of the signing key")
    export = commands.add_parser("export", help="write a tenant's chain as NDJSON (stdout or --out)")
    export.add_argument("--tenant", required=True, type=_tenant)
    export.add_argument("--out", type=Path)
    export.add_argument("--public-key", type=Path, help="name this public key (PEM) instead of the signing key's")
    retention = commands.add_parser("retention", help="remove records past their retention period now")
    retention.add_argument("--dry-run", action="store_true", help="count what would be removed, remove nothing")
    keygen = commands.add_parser("keygen", help="write a new Ed25519 signing key (PKCS#8 PEM, mode 0600)")
    keygen.add_argument("--out", type=Path, required=True)
    commands.add_parser("indexes", help="create audit's MongoDB indexes and exit (needs no signing key)")
    return parser


async def _verify(settings: Settings, tenant: str, as_json: bool, public_key: Path | None) -> int:
    keys = settings.keyring(public_key)
    client = create_client(settings.mongo)
    try:
        result = await verify_chain(AuditDb.of(database(client, settings.mongo)), tenant, keys)
    finally:
        await client.close()
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
    elif result.ok:
        print(
            f"OK  tenant {tenant}: {result.records} records, {result.tombstones} retained positions, "
            f"head {result.head_seq}, {result.checkpoints} signed checkpoints, {result.unsealed} not yet sealed"
        )
    else:
        brk = result.first_break
        assert brk is not None
        record = f" (record {brk.record_id})" if brk.record_id else ""
        print(f"BROKEN  tenant {tenant}: position {brk.seq}{record}: {brk.problem}")
    return 0 if result.ok else 1


async def _export(settings: Settings, tenant: str, out: Path | None, public_key: Path | None) -> int:
    keys = settings.keyring(public_key)
    client = create_client(settings.mongo)
    sink = out.open("wb") if out else sys.stdout.buffer
    try:
        async for line in export_chain(AuditDb.of(database(client, settings.mongo)), tenant, keys):
            sink.write(line)
    finally:
        if out:
            sink.close()
        await client.close()
    return 0


async def _retention(settings: Settings, dry_run: bool) -> int:
    signer = Signer.from_file(settings.signer_path())
    tenants = TenantDirectory(settings.tenants_dir)
    client = create_client(settings.mongo)
    try:
        mongo_db = database(client, settings.mongo)
        db = AuditDb.of(mongo_db)
        cipher = FieldCipher(mongo_db[CUSTOMER_KEYS], NoKeyStore())  # erasing idle contacts needs no KEK
        contacts = IdleContacts(cipher, ChainWriter(db.records, db.tombstones))
        report = await apply_retention(
            db, signer, lambda t: tenants.get(t).audit, utcnow(), dry_run=dry_run, contacts=contacts
        )
    finally:
        await client.close()
    print(json.dumps(report.as_dict(), indent=2))
    return 0 if not report.refused else 1


def cli(argv: list[str]) -> int:
    if argv[:1] == ["keys"]:
        return keys_cli(argv[1:], Settings().mongo, prog="python -m factura.audit keys")
    args = _parser().parse_args(argv)
    if args.command == "keygen":
        generate_key(args.out)
        print(f"wrote {args.out}; mount it into the audit service as FACTURA_AUDIT_SIGNING_KEY_FILE")
        return 0
    settings = Settings()
    if args.command == "verify":
        return asyncio.run(_verify(settings, args.tenant, args.json, args.public_key))
    if args.command == "retention":
        return asyncio.run(_retention(settings, args.dry_run))
    if args.command == "indexes":
        asyncio.run(create_indexes("audit", settings.mongo, ensure_indexes))
        return 0
    return asyncio.run(_export(settings, args.tenant, args.out, args.public_key))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(cli(sys.argv[1:]))
    main("audit", Settings, bootstrap)
