"""``python -m factura.sms_sender``: run the service; ``indexes`` creates its MongoDB indexes and exits.

python -m factura.sms_sender            run the service
python -m factura.sms_sender indexes    create the sender's indexes (the Kubernetes index Job), exit
"""

import asyncio
import sys
from contextlib import AsyncExitStack

from factura.common.delivery.wiring import delivery_kit
from factura.common.runtime import main
from factura.sms_sender.bootstrap import bootstrap
from factura.sms_sender.settings import Settings


async def create_indexes(settings: Settings) -> None:
    """The sender's stores are built (and indexed) by the same kit its bootstrap uses."""
    async with AsyncExitStack() as stack:
        await delivery_kit(settings, stack)
    print(f"sms-sender: indexes created in database {settings.mongo.database!r}")


if __name__ == "__main__":
    if sys.argv[1:] == ["indexes"]:
        asyncio.run(create_indexes(Settings()))
        sys.exit(0)
    main("sms-sender", Settings, bootstrap)
