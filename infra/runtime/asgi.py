"""The ASGI entry point the HTTP server loads in its worker process."""

from __future__ import annotations

import os
import sys

from litestar.types import ASGIApp

from api.requests import read_unread_bodies
from infra.bootstrap import ROLES, Container
from infra.runtime.logs import configure_logging
from infra.runtime.processes import die_with_parent
from infra.settings import Settings

ROLES_VARIABLE = "SESSIOND_ROLES"
#: The HTTP server's main process: its workers stop when it dies (even by SIGKILL).
SERVER_PID_VARIABLE = "SESSIOND_SERVER_PID"


def create() -> ASGIApp:
    """Build the app for the roles the CLI chose (``SESSIOND_ROLES``, comma-separated)."""
    server_pid = os.environ.get(SERVER_PID_VARIABLE)
    if server_pid:
        die_with_parent(int(server_pid))
    # Requests take the GIL from the threads that refresh the views within 1 ms, not the
    # default 5 ms: a read never waits long behind a refresh (p99 of GET /status in a storm).
    sys.setswitchinterval(0.001)
    settings = Settings.from_env()
    roles = frozenset(os.environ.get(ROLES_VARIABLE, "api").split(","))
    configure_logging(settings.log_level, settings.log_format, ",".join(sorted(roles)))
    unknown = roles - ROLES
    if unknown:
        raise ValueError(f"unknown roles: {', '.join(sorted(unknown))}")
    assert settings.database_url is not None, "the CLI resolves the database before serving"
    container = Container(settings, settings.database_url, roles)
    return read_unread_bodies(container.create_api(freeze_gc=True))
