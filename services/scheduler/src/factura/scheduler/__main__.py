"""``python -m factura.scheduler``: run the service; ``keys`` manages the API keys of its campaigns API.

python -m factura.scheduler                          run the service
python -m factura.scheduler keys create|revoke|list  API keys (role ingest or admin) for POST /v1/campaigns
"""

import sys

from factura.common.apikeys.cli import run as keys_cli
from factura.common.runtime import main
from factura.scheduler.bootstrap import bootstrap
from factura.scheduler.settings import Settings

if __name__ == "__main__":
    if sys.argv[1:2] == ["keys"]:
        sys.exit(keys_cli(sys.argv[2:], Settings().mongo, prog="python -m factura.scheduler keys"))
    main("scheduler", Settings, bootstrap)
