"""The HTTP API: Litestar app factory, controllers, schemas, auth and error mapping."""
