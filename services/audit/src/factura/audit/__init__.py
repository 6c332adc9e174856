"""Audit: every event, stored once, append-only, and the compliance API that reads them back."""
