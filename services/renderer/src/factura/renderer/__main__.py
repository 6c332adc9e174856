"""``python -m factura.renderer``: run the service; ``indexes`` creates its MongoDB indexes and exits.

python -m factura.renderer            run the service
python -m factura.renderer indexes    create the renderer's indexes (the Kubernetes index Job), exit
"""

import asyncio
import sys

from factura.common.mongo import create_indexes
from factura.common.runtime import main
from factura.renderer.bootstrap import bootstrap, ensure_indexes
from factura.renderer.settings import Settings

if __name__ == "__main__":
    if sys.argv[1:] == ["indexes"]:
        settings = Settings()
        asyncio.run(create_indexes("renderer", settings.mongo, lambda db: ensure_indexes(settings, db)))
        sys.exit(0)
    main("renderer", Settings, bootstrap)
