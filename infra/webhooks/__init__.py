"""Webhooks: the guarded HTTP client and the dispatcher that delivers, retries and disables."""
