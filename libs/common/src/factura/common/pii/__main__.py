"""``python -m factura.common.pii new-kek [--id ID]``: a line for a tenant's ``<tenant>.kek`` file."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from factura.common.pii.keystore import new_kek_line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m factura.common.pii")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new-kek", help="print a new KEK line (append it to <tenant>.kek; the last line wraps)")
    new.add_argument("--id", default=datetime.now(UTC).strftime("kek-%Y%m%d"), help="KEK id (default kek-YYYYMMDD)")
    args = parser.parse_args(argv)
    print(new_kek_line(args.id))


if __name__ == "__main__":
    main()
