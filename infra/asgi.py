"""The ASGI entry point the HTTP server loads in its worker process."""

from __future__ import annotations

import os

from litestar import Litestar

from infra.container import ROLES, Container
from infra.logs import configure_logging
from infra.settings import Settings

ROLES_VARIABLE = "SESSIOND_ROLES"


def create() -> Litestar:
    """Build the app for the roles the CLI chose (``SESSIOND_ROLES``, comma-separated)."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    roles = frozenset(os.environ.get(ROLES_VARIABLE, "api").split(","))
    unknown = roles - ROLES
    if unknown:
        raise ValueError(f"unknown roles: {', '.join(sorted(unknown))}")
    assert settings.database_url is not None, "the CLI resolves the database before serving"
    container = Container(settings, settings.database_url, roles)
    return container.create_api(freeze_gc=True)
