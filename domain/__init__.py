"""The domain: the `Session` aggregate, its events, values and errors."""
