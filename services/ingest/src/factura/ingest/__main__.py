"""``python -m factura.ingest``: run the service; with a command, act as an ERP's loader or an operator.

python -m factura.ingest                                      run the service
python -m factura.ingest load FILE --tenant T [--mapping M]   a CSV/XLSX export onto erp.invoices
python -m factura.ingest keys create|revoke|list              API keys (role ingest) for the HTTP API
python -m factura.ingest indexes                              create ingest's indexes (the Kubernetes index Job), exit
"""

import asyncio
import sys

from factura.common.apikeys.cli import run as keys_cli
from factura.common.mongo import create_indexes
from factura.common.runtime import main
from factura.ingest import cli
from factura.ingest.bootstrap import bootstrap, ensure_indexes
from factura.ingest.settings import Settings

if __name__ == "__main__":
    if sys.argv[1:2] == ["load"]:
        sys.exit(cli.run(sys.argv[1:]))
    if sys.argv[1:2] == ["keys"]:
        sys.exit(keys_cli(sys.argv[2:], Settings().mongo, prog="python -m factura.ingest keys"))
    if sys.argv[1:] == ["indexes"]:
        settings = Settings()
        asyncio.run(create_indexes("ingest", settings.mongo, ensure_indexes))
        sys.exit(0)
    main("ingest", Settings, bootstrap)
