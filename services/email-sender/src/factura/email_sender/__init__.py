"""Email sender: mails each rendered invoice with its PDF attached; a hard bounce becomes delivery.failed."""
