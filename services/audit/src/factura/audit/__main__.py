from factura.audit.bootstrap import bootstrap
from factura.audit.settings import Settings
from factura.common.runtime import main

if __name__ == "__main__":
    main("audit", Settings, bootstrap)
