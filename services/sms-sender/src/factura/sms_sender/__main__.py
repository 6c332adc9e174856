from factura.common.runtime import main
from factura.sms_sender.bootstrap import bootstrap
from factura.sms_sender.settings import Settings

if __name__ == "__main__":
    main("sms-sender", Settings, bootstrap)
