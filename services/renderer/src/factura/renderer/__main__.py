from factura.common.runtime import main
from factura.renderer.bootstrap import bootstrap
from factura.renderer.settings import Settings

if __name__ == "__main__":
    main("renderer", Settings, bootstrap)
