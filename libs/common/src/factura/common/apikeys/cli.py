"""``keys create|revoke|list``: the operator's commands for API keys, run from a service's ``__main__``
(``python -m factura.audit keys ...``) against that service's MongoDB database.

``create`` prints the new key alone on stdout (so ``KEY=$(... keys create ...)`` works) and
everything else on stderr: the key cannot be shown again, only its hint. Exit status: 0 done,
1 nothing to do or MongoDB unreachable, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from pymongo.errors import ConnectionFailure

from factura.common.apikeys.keys import ALL_TENANTS, KeyRecord, Role
from factura.common.apikeys.store import COLLECTION, ApiKeyStore
from factura.common.errors import field_errors
from factura.common.mongo import create_client, database
from factura.common.settings import MongoSettings


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Create, revoke and list API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    scope = create.add_mutually_exclusive_group(required=True)
    scope.add_argument("--tenant", action="append", help="a tenant the key may act on (repeatable)")
    scope.add_argument("--all-tenants", action="store_true", help=f"every tenant ({Role.ADMIN.value} keys only)")
    create.add_argument("--label", required=True, help="what the key is for, e.g. 'compliance team laptop'")
    create.add_argument("--by", required=True, help="who creates it (recorded)")
    revoke = commands.add_parser("revoke", help="revoke a key at once (within seconds in running services)")
    revoke.add_argument("key_id")
    revoke.add_argument("--by", required=True, help="who revokes it (recorded)")
    listing = commands.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--tenant", help="only keys that reach this tenant")
    listing.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    return parser


def run(argv: Sequence[str], mongo_settings: MongoSettings, *, prog: str = "keys") -> int:
    """Run one command (``argv`` without the ``keys`` word); returns the exit status."""
    try:
        args = _parser(prog).parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error argparse has already printed
        return stop.code if isinstance(stop.code, int) else 2
    try:
        return asyncio.run(_run(args, mongo_settings))
    except ConnectionFailure as error:
        print(f"error: cannot reach MongoDB: {error}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, settings: MongoSettings) -> int:
    client = create_client(settings)
    try:
        store = ApiKeyStore(database(client, settings)[COLLECTION])
        await store.ensure_indexes()
        if args.command == "create":
            return await _create(store, args)
        if args.command == "revoke":
            return await _revoke(store, args.key_id, args.by)
        _print_list(await store.list(args.tenant), as_json=args.json)
        return 0
    finally:
        await client.close()


async def _create(store: ApiKeyStore, args: argparse.Namespace) -> int:
    tenants = [ALL_TENANTS] if args.all_tenants else args.tenant
    try:
        plaintext, record = await store.create(args.role, tenants, args.label, args.by)
    except ValidationError as error:
        for reason in field_errors(error):
            print(f"error: {reason.field}: {reason.message}", file=sys.stderr)
        return 2
    print(plaintext)
    print(
        f"created {record.key_id} ({record.role.value}, tenants {','.join(record.tenants)}). "
        "Store the key now: it cannot be shown again.",
        file=sys.stderr,
    )
    return 0


async def _revoke(store: ApiKeyStore, key_id: str, by: str) -> int:
    try:
        revoked = await store.revoke(key_id, by)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not revoked:
        print(f"no active key {key_id!r} (unknown or already revoked)", file=sys.stderr)
        return 1
    print(f"revoked {key_id}", file=sys.stderr)
    return 0


def _print_list(records: list[KeyRecord], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    header = ("KEY_ID", "ROLE", "TENANTS", "HINT", "CREATED", "BY", "STATUS", "LABEL")
    rows = [header] + [
        (
            r.key_id,
            r.role.value,
            ",".join(r.tenants),
            r.hint,
            r.created_at.strftime("%Y-%m-%d %H:%M"),
            r.created_by,
            f"revoked {r.revoked_at:%Y-%m-%d %H:%M} by {r.revoked_by}" if r.revoked_at else "active",
            r.label,
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        print("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]))
