from factura.common.runtime import main
from factura.email_sender.bootstrap import bootstrap
from factura.email_sender.settings import Settings

if __name__ == "__main__":
    main("email-sender", Settings, bootstrap)
