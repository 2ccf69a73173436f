"""The ``sessiond`` command: serve (every role), api, projector, worker."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

from infra.asgi import ROLES_VARIABLE
from infra.logs import configure_logging
from infra.settings import Settings, SettingsError


def _database_url(settings: Settings) -> tuple[str, Any]:
    if settings.database_url:
        return settings.database_url, None
    from infra.embedded import start_embedded_postgres  # noqa: PLC0415

    return start_embedded_postgres(settings.data_dir)


def _serve_http(roles: str, host: str, port: int, workers: int) -> None:
    from granian.constants import Interfaces  # noqa: PLC0415
    from granian.server import Server  # noqa: PLC0415

    os.environ[ROLES_VARIABLE] = roles
    server = Server(
        "infra.asgi:create",
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        factory=True,
        log_access=False,
        respawn_failed_workers=True,
    )
    server.serve()


def _run_background_roles(settings: Settings, url: str, roles: frozenset[str]) -> None:
    from infra.container import Container  # noqa: PLC0415

    container = Container(settings, url, roles)
    container.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    container.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sessiond", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "run every role in one process: API, projections and gateway"),
        ("api", "run only the HTTP API (any number of them)"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=int, default=8000)
        if name == "api":
            command.add_argument("--workers", type=int, default=1)
    commands.add_parser("projector", help="run only the view projections (leader elected)")
    commands.add_parser("worker", help="run only the gateway and its driver")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"sessiond: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        url, server = _database_url(settings)
    except Exception as error:
        print(f"sessiond: cannot start the database: {error}", file=sys.stderr)
        return 2
    os.environ["SESSIOND_DATABASE_URL"] = url
    try:
        if args.command == "serve":
            _serve_http("api,projector,worker", args.host, args.port, 1)
        elif args.command == "api":
            _serve_http("api", args.host, args.port, args.workers)
        else:
            _run_background_roles(settings, url, frozenset({args.command}))
    finally:
        del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
