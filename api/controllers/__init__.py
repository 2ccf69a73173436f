"""Thin controllers: parse, call the application, wait for the views, answer."""
