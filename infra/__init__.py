"""Infrastructure: settings, the composition root, PostgreSQL views, gateways, CLI."""
