"""Email sender: the email channel of the shared delivery path (branded email, TLS, bounce webhook, suppressions)."""
