from factura.common.runtime import main
from factura.ingest.bootstrap import bootstrap
from factura.ingest.settings import Settings

if __name__ == "__main__":
    main("ingest", Settings, bootstrap)
