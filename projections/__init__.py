"""Read models: one projection per view, and the interfaces the API reads them through."""
