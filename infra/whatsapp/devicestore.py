"""The device store's connections: a private PgBouncer in front of whatsmeow's tables.

neonize 0.5.2 opens a new whatsmeow store, with a Go connection pool of its own, on every
client start (and every retry) and never closes it: straight to PostgreSQL, each start keeps
a connection open for the life of the process. So each gateway worker starts its own
PgBouncer (Debian's ``pgbouncer``), listening only on a Unix socket in a private directory,
in transaction mode with a small fixed pool of server connections, and hands neonize a DSN
pointing at it. However many clients and pools Go opens, PostgreSQL sees at most `size`
connections of the device store per worker, named ``sessiond-device-store``.

What makes whatsmeow's queries fit transaction pooling: lib/pq sends each query in one
round trip (``binary_parameters=yes``: no unnamed statement parsed on one server connection
and bound on another); the ``search_path`` lib/pq would send at start-up is set on each server
connection by PgBouncer instead (``connect_query``), the start-up parameters PgBouncer does not
track are ignored; whatsmeow keeps no session state (no LISTEN, no advisory lock, no named
statement) between transactions.

PgBouncer runs under a small ``sh`` wrapper, in a process group of its own, whose standard
input is a pipe from this process: when the worker ends, however it ends (SIGKILL too), the
pipe closes and the wrapper stops PgBouncer. A PgBouncer that dies on its own is started again
on the same socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from infra.whatsapp.loading import (
    import_neonize,
)

log = logging.getLogger(__name__)

#: The ``application_name`` of the store's server connections (count them in pg_stat_activity).
APPLICATION_NAME = "sessiond-device-store"
#: The name neonize's DSN asks PgBouncer for; it maps to the service's database.
POOL_DATABASE = "whatsmeow_store"
LISTEN_PORT = 6432  # only names the socket file (.s.PGSQL.6432): no TCP port is opened
#: Where Debian installs it (not on a normal user's PATH).
DEBIAN_BINARY = "/usr/sbin/pgbouncer"
START_TIMEOUT = 15.0
#: Seconds a client connection may sit idle before PgBouncer closes it. neonize's abandoned
#: pools hold one each; a live client's pool reconnects by itself when it needs one.
CLIENT_IDLE_TIMEOUT = 120
SERVER_IDLE_TIMEOUT = 30  # an idle worker gives its server connections back

# Stops PgBouncer when this process's end of stdin closes (the worker ended), and exits with
# PgBouncer's status when PgBouncer ends first.
_WRAPPER = """exec 3<&0
"$0" "$1" </dev/null 3<&- &
pid=$!
{ read -r _ <&3; kill -TERM "$pid" 2>/dev/null; } &
exec 3<&-
wait "$pid"
"""


class DeviceStoreError(RuntimeError):
    """The device store's pooler could not be started."""


def find_pgbouncer(configured: str | None = None) -> str:
    """The PgBouncer binary: `configured` (it must be there), else ``pgbouncer`` on PATH, else
    Debian's path."""
    if configured:
        if os.access(configured, os.X_OK):
            return configured
        raise DeviceStoreError(f"SESSIOND_PGBOUNCER: {configured} is not an executable PgBouncer")
    for candidate in (shutil.which("pgbouncer"), DEBIAN_BINARY):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise DeviceStoreError(
        "the neonize gateway needs PgBouncer for its device store: install Debian's "
        "`pgbouncer` package (`make run` does) or set SESSIOND_PGBOUNCER to its path"
    )


def _quoted(value: str, what: str) -> str:
    """A value of a PgBouncer connection string: in single quotes, a quote doubled."""
    if any(c in value for c in "\n\0"):
        raise DeviceStoreError(f"the database's {what} cannot be given to PgBouncer")
    return "'" + value.replace("'", "''") + "'"


#: PgBouncer refuses to run as root. Run by root, it runs as this user instead, allowed to
#: search any directory (``CAP_DAC_READ_SEARCH``, kept through ``setpriv``): the way to the
#: server's socket may cross a directory only root can enter (a data directory under /root;
#: pytest's base directory, which every new pytest run makes 0700 again).
UNPRIVILEGED_USER = "nobody"
SETPRIV = "/usr/bin/setpriv"


def _unprivileged_prefix() -> list[str]:
    """The command that drops root before PgBouncer starts (nothing when not root)."""
    if os.geteuid() != 0:
        return []
    if not os.access(SETPRIV, os.X_OK):
        raise DeviceStoreError(f"running as root, PgBouncer needs {SETPRIV} (util-linux)")
    user = pwd.getpwnam(UNPRIVILEGED_USER)
    return [
        SETPRIV,
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        "--clear-groups",
        "--inh-caps=-all,+dac_read_search",
        "--ambient-caps=-all,+dac_read_search",
        "--bounding-set=-all,+dac_read_search",
    ]


class DeviceStorePool:
    """A private PgBouncer for one worker process: `start` it, give neonize `dsn`, `close`."""

    def __init__(
        self,
        database_url: str,
        *,
        size: int = 4,
        binary: str | None = None,
        schema: str = "whatsmeow",
    ) -> None:
        self.database_url = database_url
        self.size = size
        self.binary = find_pgbouncer(binary)
        self.schema = schema
        self.directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._stdin: IO[bytes] | None = None
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._lines: deque[str] = deque(maxlen=20)
        self._watcher: threading.Thread | None = None
        self._params = {k: str(v) for k, v in conninfo_to_dict(database_url).items() if v}
        self._host = self._params.get("host", "localhost").split(",")[0]
        self._prefix = _unprivileged_prefix()

    @property
    def socket_dir(self) -> str:
        if self.directory is None:
            raise DeviceStoreError("the device store's pooler is not started")
        return str(self.directory)

    def conninfo(self) -> str:
        """A libpq conninfo of the pool (for psycopg; lib/pq's form is `store_dsn`)."""
        user = self._params.get("user") or pwd.getpwuid(os.getuid())[0]
        return make_conninfo(
            host=self.socket_dir, port=str(LISTEN_PORT), dbname=POOL_DATABASE, user=user
        )

    # -- life ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start PgBouncer and wait until a query goes through it to PostgreSQL."""
        self.directory = Path(tempfile.mkdtemp(prefix="sessiond-store-"))
        if self._prefix:  # PgBouncer makes its socket here
            os.chown(self.directory, pwd.getpwnam(UNPRIVILEGED_USER).pw_uid, -1)
        self._launch()
        self._watcher = threading.Thread(target=self._watch, name="device-store-pool", daemon=True)
        self._watcher.start()
        log.info("device store: PgBouncer in %s, %d server connections", self.directory, self.size)

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            process, stdin = self._process, self._stdin
        if stdin is not None:
            with contextlib.suppress(OSError):
                stdin.close()  # the wrapper stops PgBouncer
        if process is not None:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def running(self) -> bool:
        with self._lock:
            return self._process is not None and self._process.poll() is None

    # -- inside ----------------------------------------------------------------------------

    def _launch(self) -> None:
        """Write the configuration, start PgBouncer, wait for it, remove the files."""
        self._write_config()
        try:
            self._spawn()
            self._wait_ready()
        finally:
            # Read at start-up and never again: no password stays on disk.
            with contextlib.suppress(FileNotFoundError):
                (Path(self.socket_dir) / "pgbouncer.ini").unlink()

    def _write_config(self) -> None:
        assert self.directory is not None
        params, host = self._params, self._host
        server_user = params.get("user") or pwd.getpwuid(os.getuid())[0]
        server = {
            "host": host,
            "port": params.get("port", "5432").split(",")[0],
            "dbname": params.get("dbname", server_user),
            "user": server_user,
            "application_name": APPLICATION_NAME,
            "connect_query": f"SET search_path TO {self.schema}",
        }
        if params.get("password"):
            # read at start-up, before PgBouncer drops root (an auth_file is read later)
            server["password"] = params["password"]
        connstring = " ".join(f"{key}={_quoted(value, key)}" for key, value in server.items())
        settings = {
            "listen_addr": "",
            "listen_port": str(LISTEN_PORT),
            "unix_socket_dir": str(self.directory),
            "unix_socket_mode": "0700",
            "auth_type": "any",  # the socket's directory is private; the server user is fixed
            "pool_mode": "transaction",
            "default_pool_size": str(self.size),
            "max_db_connections": str(self.size),
            "min_pool_size": "0",
            "reserve_pool_size": "0",
            "max_client_conn": "10000",
            "client_idle_timeout": str(CLIENT_IDLE_TIMEOUT),
            "server_idle_timeout": str(SERVER_IDLE_TIMEOUT),
            "server_lifetime": "3600",
            "query_wait_timeout": "60",
            # lib/pq sends these at start-up; search_path comes from connect_query instead
            "ignore_startup_parameters": "extra_float_digits,search_path",
            "log_connections": "0",
            "log_disconnections": "0",
            "log_stats": "0",
            "stats_period": "3600",
            "logfile": "",
            "pidfile": "",
        }
        if "sslmode" in params:
            settings["server_tls_sslmode"] = params["sslmode"]
        if "sslrootcert" in params:
            settings["server_tls_ca_file"] = params["sslrootcert"]
        lines = ["[databases]", f"{POOL_DATABASE} = {connstring}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        config = self.directory / "pgbouncer.ini"
        config.write_text("\n".join(lines) + "\n")
        config.chmod(0o600)

    def _spawn(self) -> None:
        assert self.directory is not None
        process = subprocess.Popen(  # noqa: S603 - our wrapper and the configured PgBouncer
            [
                *self._prefix,
                "/bin/sh",
                "-c",
                _WRAPPER,
                self.binary,
                str(self.directory / "pgbouncer.ini"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own process group: a signal to the worker's group (a terminal's Ctrl+C, a
            # supervisor stopping the worker) is the worker's to handle; PgBouncer follows the
            # worker through the pipe.
            start_new_session=True,
        )
        with self._lock:
            self._process, self._stdin = process, process.stdin
        assert process.stderr is not None
        threading.Thread(
            target=self._forward, args=(process.stderr,), name="pgbouncer-log", daemon=True
        ).start()

    def _forward(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            self._lines.append(line)
            if any(word in line for word in (" ERROR ", " WARNING ", " FATAL ")):
                log.warning("pgbouncer: %s", line)
            else:
                log.debug("pgbouncer: %s", line)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        error: Exception | None = None
        while time.monotonic() < deadline:
            with self._lock:
                process = self._process
            if process is not None and process.poll() is not None:
                break
            try:
                with psycopg.connect(self.conninfo(), connect_timeout=5, autocommit=True) as conn:
                    conn.execute("SELECT 1")
            except psycopg.Error as exc:
                error = exc
                time.sleep(0.05)
            else:
                return
        lines = "; ".join(self._lines) or "no output"
        raise DeviceStoreError(f"PgBouncer did not start ({error}): {lines}")

    def _watch(self) -> None:
        """Start PgBouncer again (same socket) whenever it ends while we are not closing."""
        pause = 0.5
        while not self._closing.is_set():
            with self._lock:
                process = self._process
            if process is None:
                return
            process.wait()
            if self._closing.is_set():
                return
            log.error("device store: PgBouncer exited (%s); starting it again", process.returncode)
            self._closing.wait(pause)
            pause = min(pause * 2, 10.0)
            if self._closing.is_set():
                return
            try:
                self._launch()
            except DeviceStoreError as exc:
                log.error("device store: %s", exc)  # noqa: TRY400 - no traceback needed
            else:
                pause = 0.5


STORE_SCHEMA = "whatsmeow"


DEVICE_TABLE = "whatsmeow_device"


_LIBPQ_PASSTHROUGH = ("connect_timeout", "application_name", "sslcert", "sslkey", "sslrootcert")


def store_dsn_from_url(
    database_url: str, schema: str = STORE_SCHEMA, *, pooled: bool = False
) -> str:
    """The lib/pq DSN of the whatsmeow store in the database of `database_url`.

    `database_url` is anything libpq takes (``postgresql://...`` or ``key=value`` conninfo,
    possibly with a Unix-socket directory as host). lib/pq wants a ``postgres://`` URL; a
    socket directory goes in the query (``?host=/dir&port=5432``). lib/pq knows no
    ``prefer``/``allow`` SSL modes and defaults to ``require``: those and a missing mode
    become ``disable``. Other query parameters, ``search_path`` here, become server settings.
    `pooled`: the URL is a PgBouncer in transaction mode (`infra.whatsapp.devicestore`), so lib/pq
    must send each query in one round trip (``binary_parameters=yes``).
    """
    params = {k: str(v) for k, v in conninfo_to_dict(database_url).items() if v is not None}
    user = params.get("user", "")
    password = params.get("password", "")
    host = params.get("host", "localhost").split(",")[0]
    port = params.get("port", "5432").split(",")[0]
    dbname = params.get("dbname", user)
    userinfo = quote(user, safe="")
    if password:
        userinfo += ":" + quote(password, safe="")
    query: dict[str, str] = {}
    if host.startswith("/"):
        netloc = f"{userinfo}@"
        query.update(host=host, port=port)
    else:
        shown = f"[{host}]" if ":" in host else host
        netloc = f"{userinfo}@{shown}:{port}"
    sslmode = params.get("sslmode", "disable")
    query["sslmode"] = "disable" if sslmode in ("prefer", "allow") else sslmode
    query.update({key: params[key] for key in _LIBPQ_PASSTHROUGH if key in params})
    query["search_path"] = schema
    if pooled:
        query["binary_parameters"] = "yes"
    return f"postgres://{netloc}/{quote(dbname, safe='')}?{urlencode(query)}"


def is_postgres_dsn(store_dsn: str) -> bool:
    """neonize's rule: a store name starting with ``postgres`` is lib/pq, else a SQLite path."""
    return store_dsn.startswith("postgres")


def _pg_connect_args(store_dsn: str) -> tuple[dict[str, Any], str]:
    """psycopg keyword arguments and the schema for a lib/pq store DSN."""
    parts = urlsplit(store_dsn)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    schema = query.pop("search_path", "public").split(",")[0].strip() or "public"
    query.pop("binary_parameters", None)  # lib/pq's own
    args: dict[str, Any] = {"dbname": unquote(parts.path.lstrip("/"))}
    if parts.username:
        args["user"] = unquote(parts.username)
    if parts.password:
        args["password"] = unquote(parts.password)
    if parts.hostname:
        args["host"] = parts.hostname
    if parts.port:
        args["port"] = str(parts.port)
    args.update(query)  # host/port of a socket directory, sslmode, connect_timeout...
    args.setdefault("connect_timeout", "10")
    return args, schema


def _device_query(template: str, store_dsn: str, jid: str) -> bool:
    """Run `template` (``{table}`` placeholder, one ``%s``/``?`` for the JID) on the store;
    True if it matched a row. A store without the device table holds no device."""
    if is_postgres_dsn(store_dsn):
        args, schema = _pg_connect_args(store_dsn)
        statement = sql.SQL(template).format(table=sql.Identifier(schema, DEVICE_TABLE))
        with psycopg.connect(autocommit=True, **args) as conn:
            try:
                return conn.execute(statement, (jid,)).rowcount > 0
            except psycopg.errors.UndefinedTable:
                return False
    try:
        # mode=rw: never create a store file just to look into it
        lite = sqlite3.connect(f"file:{store_dsn}?mode=rw", uri=True)
    except sqlite3.OperationalError:
        return False
    try:
        lite.execute("PRAGMA foreign_keys = ON")  # whatsmeow's other tables cascade
        with lite:
            cursor = lite.execute(template.format(table=DEVICE_TABLE).replace("%s", "?"), (jid,))
            return cursor.rowcount > 0 or bool(cursor.fetchall())
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return False
        raise
    finally:
        lite.close()


def device_stored(store_dsn: str, jid: str) -> bool:
    """Whether the store holds device `jid` (``user:device@server``), by SQL, not Go."""
    return _device_query("SELECT 1 FROM {table} WHERE jid = %s", store_dsn, jid)


def delete_device(store_dsn: str, jid: str) -> bool:
    """Delete device `jid` from the store (its keys and sessions cascade); True if it was
    there. The device can never be resumed afterwards."""
    return _device_query("DELETE FROM {table} WHERE jid = %s", store_dsn, jid)


class StoreError(RuntimeError):
    """The whatsmeow store could not be opened or upgraded."""


def upgrade_store(store_dsn: str) -> set[str]:
    """Run whatsmeow's schema upgrade on `store_dsn` through Go, once, and return the JIDs of
    the stored devices (``user:device@server``, the form `start` takes)."""
    nz = import_neonize()
    try:
        devices = nz.client_factory.get_all_devices_from_db(store_dsn)
    except ValueError as exc:
        # Go answers "error: ..." and neonize fails to parse that as a device row.
        raise StoreError(
            "the whatsmeow store could not be opened or upgraded (neonize hides Go's "
            "message; check the DSN, the schema and the database's permissions)"
        ) from exc
    return {nz.jid_to_string(device.JID) for device in devices}


#: The advisory lock held while whatsmeow upgrades its schema (an arbitrary constant).
STORE_UPGRADE_LOCK = 0x5E5510D_0057


def prepare_store(database_url: str, store_dsn: str | None = None) -> set[str]:
    """Create the store's schema in the service's database and upgrade it; call once at boot,
    before any client starts. Returns the JIDs of the stored devices. Go reaches the store
    through `store_dsn` (the pooler's) when given: the pool it opens is never closed.

    whatsmeow's upgrade races with itself (``table ... already exists``): an advisory lock
    keeps workers booting together from running it at the same time.
    """
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (STORE_UPGRADE_LOCK,))
        try:
            schema = sql.Identifier(STORE_SCHEMA)
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
            return upgrade_store(store_dsn or store_dsn_from_url(database_url))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (STORE_UPGRADE_LOCK,))
