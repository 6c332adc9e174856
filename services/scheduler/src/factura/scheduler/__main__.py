from factura.common.runtime import main
from factura.scheduler.bootstrap import bootstrap
from factura.scheduler.settings import Settings

if __name__ == "__main__":
    main("scheduler", Settings, bootstrap)
