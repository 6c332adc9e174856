"""``python -m factura.renderer``: run the service; ``indexes`` creates its MongoDB indexes and exits.

python -m factura.renderer            run the service
python -m factura.renderer indexes    create the renderer's indexes (the Kubernetes index Job), exit
"""

import asyncio
import sys

from factura.common.mongo import create_client, database
from factura.common.runtime import main
from factura.renderer.bootstrap import bootstrap, ensure_indexes
from factura.renderer.settings import Settings


async def create_indexes(settings: Settings) -> None:
    client = create_client(settings.mongo)
    try:
        await ensure_indexes(settings, database(client, settings.mongo))
    finally:
        await client.close()
    print(f"renderer: indexes created in database {settings.mongo.database!r}")


if __name__ == "__main__":
    if sys.argv[1:] == ["indexes"]:
        asyncio.run(create_indexes(Settings()))
        sys.exit(0)
    main("renderer", Settings, bootstrap)
