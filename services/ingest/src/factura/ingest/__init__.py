"""Ingest: the front door for ERP messages.

Validates raw ERP invoices and payments against the ERP contract, normalises them (emails,
E.164 phones, locale, computed totals) and publishes ``invoice.created`` / ``payment.received``.
Anything it refuses gets an ``invoice.rejected`` event with every field-level reason, and the raw
message goes to the topic's DLQ.
"""
