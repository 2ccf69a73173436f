"""The ``sessiond`` command: serve (every role), api, projector, worker."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from infra.cli import session as session_command
from infra.cli.refusal import refused
from infra.runtime.asgi import ROLES_VARIABLE, SERVER_PID_VARIABLE
from infra.runtime.logs import configure_logging, server_log_config
from infra.runtime.processes import STOP_LIMIT, die_with_parent, exit_if_not_stopped
from infra.settings import Settings, SettingsError


def _database_url(settings: Settings) -> tuple[str, Any]:
    if settings.database_url:
        return settings.database_url, None
    from infra.postgres.embedded import start_embedded_postgres  # noqa: PLC0415

    return start_embedded_postgres(settings.data_dir)


#: The commands that run a service (the others do one thing and exit).
SERVICES = frozenset({"serve", "api", "worker", "projector"})


def _serve_http(
    roles: str,
    host: str,
    port: int,
    workers: int,
    *,
    on_stop: Callable[[], None] | None = None,
    log_format: str = "text",
) -> None:
    """Serve HTTP from granian worker processes; `on_stop` is called as soon as the server
    is asked to stop (before it waits for its workers)."""
    from granian.constants import Interfaces  # noqa: PLC0415
    from granian.server import Server  # noqa: PLC0415

    class _Server(Server):  # type: ignore[misc, valid-type]
        def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
            if not self.interrupt_signal:
                exit_if_not_stopped(f"sessiond {roles}")
                if on_stop is not None:
                    on_stop()
            super().signal_handler_interrupt(*args, **kwargs)

    os.environ[ROLES_VARIABLE] = roles
    os.environ[SERVER_PID_VARIABLE] = str(os.getpid())
    server = _Server(
        "infra.runtime.asgi:create",
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        factory=True,
        log_access=False,
        respawn_failed_workers=True,
        log_dictconfig=server_log_config(log_format),
        # A worker that has not closed its roles by then is killed (they take STOP_TIMEOUT).
        workers_kill_timeout=int(STOP_LIMIT) - 1,
    )
    server.serve()


class ChildWorker:
    """`sessiond worker` as a child process of `sessiond serve`, restarted if it dies.

    The gateway runs apart from the API: a crash inside the Go library (neonize) takes only
    this child down; its sessions come back when it is restarted (they are taken over from
    the dead worker's leases and resumed from their recorded devices).
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="child-worker", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "worker"],
            env=self.env,
            # Its own process group: a Ctrl+C in the terminal reaches `serve`, which stops the
            # child itself (rather than the child exiting first and being restarted).
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only sets the death signal
        )

    def _run(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            assert self.process is not None
            started = time.monotonic()
            code = self.process.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started > 60:
                delay = 0.5
            print(
                f"sessiond: the gateway worker exited with {code}; restarting it in {delay:g} s",
                file=sys.stderr,
                flush=True,
            )
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, 30.0)
            self.restarts += 1
            self._spawn()

    def request_stop(self) -> None:
        """Ask the child to stop (SIGTERM), without waiting: `stop` waits."""
        self._stopping.set()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def stop(self) -> None:
        """Stop the child; it exits within `STOP_LIMIT` of being asked (else it is killed)."""
        if not self._stopping.is_set():
            self.request_stop()
        if self.process is not None:
            try:
                self.process.wait(STOP_LIMIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _run_background_roles(settings: Settings, url: str, roles: frozenset[str]) -> None:
    from infra.bootstrap import Container  # noqa: PLC0415

    if settings.background_niceness:
        os.nice(settings.background_niceness)
    container = Container(settings, url, roles)
    container.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    exit_if_not_stopped(f"sessiond {','.join(sorted(roles))}")
    container.close()


def _print_cipher_key() -> int:
    from eventsourcing.cryptography import AESCipher  # noqa: PLC0415

    print(AESCipher.create_key(32))
    return 0


def _add_projections(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    projections = commands.add_parser("projections", help="the views built from the log")
    projections.add_argument(
        "action",
        choices=["status", "rebuild"],
        help="status: each view's generation, position and lag; rebuild: build a fresh copy "
        "of a view from the log while the current one serves, then switch to it",
    )
    projections.add_argument("name", nargs="?", help="the view to rebuild (e.g. session_status)")
    projections.add_argument(
        "--keep-old",
        action="store_true",
        help="keep the previous generation's tables after the switch (default: drop them)",
    )
    projections.add_argument(
        "--page-size", type=int, default=5000, help="events applied per transaction"
    )
    projections.add_argument(
        "--switch-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the running projector to hand the view over",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sessiond", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "run every role: API and projections here, the gateway in a child process"),
        ("api", "run only the HTTP API (any number of them)"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=int, default=8000)
        if name == "api":
            command.add_argument("--workers", type=int, default=1)
    commands.add_parser("projector", help="run only the view projections (leader elected)")
    history = commands.add_parser("history", help="print a session's timeline from its events")
    history.add_argument("session_id", help="the session's id (sess_…)")
    _add_projections(commands)
    export = commands.add_parser("export", help="write the event log as NDJSON")
    export.add_argument("--after", type=int, default=0, help="only events after this position")
    export.add_argument("--output", "-o", default="-", help="a file (default: standard output)")
    session_command.add_commands(commands)
    audit = commands.add_parser("audit", help="the tamper-evident history")
    audit.add_argument(
        "action",
        choices=["verify"],
        help="verify: walk the whole log against its hashes, signed checkpoints and head",
    )
    commands.add_parser("worker", help="run only the gateway (any number: sessions are leased)")
    commands.add_parser(
        "cipher-key", help="print a new key for SESSIOND_CIPHER_KEY (AES-256, base64)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "cipher-key":
        return _print_cipher_key()
    if args.command == "session":
        code = _prepare_session_command(args)
        if code is not None:
            return code

    try:
        settings = Settings.from_env()
    except SettingsError as error:
        return refused(error, 2)
    level = settings.log_level
    if args.command not in SERVICES and level == "info":
        level = "warning"  # a one-shot command says what it did itself, in one line
    configure_logging(level, settings.log_format, args.command)
    try:
        url, server = _database_url(settings)
    except Exception as error:
        return refused(f"cannot start the database: {error}", 2)
    os.environ["SESSIOND_DATABASE_URL"] = url
    try:
        code = _run_command(args, settings, url)
    finally:
        del server
    if args.command == "worker" and settings.gateway == "neonize":
        # A neonize client whose pairing ended may leave a non-daemon thread blocked in Go
        # for ever (infra/whatsapp/neonize.py): everything is stopped and recorded by now.
        logging.shutdown()
        os._exit(0)
    return code


def _prepare_session_command(args: argparse.Namespace) -> int | None:
    """`sessiond session keygen` (its exit code), or what `session export | import` can check
    before the database is reached (kept in `args.prepared`; an exit code if refused)."""
    if args.action == "keygen":
        return session_command.keygen(args)
    try:
        args.prepared = session_command.prepare(args)
    except session_command.Refused as error:
        return refused(error, 1)
    return None


def _run_command(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """Run `args.command` on the database at `url`, its schema brought up to date first."""
    from infra.postgres.schema import SchemaError, migrate  # noqa: PLC0415
    from infra.runtime.audit import check_configured_key  # noqa: PLC0415

    try:  # once here, before any process of this command builds its roles
        migrate(settings.direct_database_url or url)
        refusal = check_configured_key(
            settings.direct_database_url or url, settings.audit_signing_key
        )
    except SchemaError as error:
        return refused(error, 2)
    if refusal is not None:
        return refused(refusal, 2)
    if args.command == "projections" and args.action == "rebuild":
        from infra.runtime.rebuild import rebuild_command  # noqa: PLC0415

        return rebuild_command(args, settings, url)
    if args.command == "session":
        return session_command.run(args, args.prepared, settings, url)
    if args.command in ("history", "export", "audit", "projections"):
        from infra.cli.audit import run_command  # noqa: PLC0415

        return run_command(args, settings, url)
    if args.command == "serve":
        child = ChildWorker(dict(os.environ))
        child.start()
        try:  # the child stops while the HTTP process does, not after it
            _serve_http(
                "api,projector",
                args.host,
                args.port,
                1,
                on_stop=child.request_stop,
                log_format=settings.log_format,
            )
        finally:
            child.stop()
    elif args.command == "api":
        _serve_http("api", args.host, args.port, args.workers, log_format=settings.log_format)
    else:
        _run_background_roles(settings, url, frozenset({args.command}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
