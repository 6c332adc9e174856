"""SMS sender: the SMS, voice and push channels of the shared delivery path (texts, short links, provider webhooks)."""
