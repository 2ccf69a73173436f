"""PostgreSQL: the schema's migrations (``migrations/``, applied by `infra.postgres.schema`),
connections, the event recorder, the views and their generations, the log hub and listener,
leases and deadlines of the gateway, gateway calls, the webhook store, the embedded server."""
