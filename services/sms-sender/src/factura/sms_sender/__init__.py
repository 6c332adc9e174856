"""SMS sender: when email could not deliver an invoice, text the customer a link to it."""
