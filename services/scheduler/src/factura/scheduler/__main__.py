"""``python -m factura.scheduler``: run the service; ``keys`` manages the API keys of its campaigns API.

python -m factura.scheduler                          run the service
python -m factura.scheduler keys create|revoke|list  API keys (role ingest or admin) for POST /v1/campaigns
python -m factura.scheduler indexes                  create the scheduler's indexes (the Kubernetes index Job), exit
"""

import asyncio
import sys

from factura.common.apikeys.cli import run as keys_cli
from factura.common.mongo import create_indexes
from factura.common.runtime import main
from factura.scheduler.bootstrap import bootstrap, ensure_indexes
from factura.scheduler.settings import Settings

if __name__ == "__main__":
    if sys.argv[1:2] == ["keys"]:
        sys.exit(keys_cli(sys.argv[2:], Settings().mongo, prog="python -m factura.scheduler keys"))
    if sys.argv[1:] == ["indexes"]:
        settings = Settings()
        asyncio.run(create_indexes("scheduler", settings.mongo, lambda db: ensure_indexes(settings, db)))
        sys.exit(0)
    main("scheduler", Settings, bootstrap)
