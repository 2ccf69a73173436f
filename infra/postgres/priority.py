"""The CPU priority of a background process's PostgreSQL backends.

`SESSIOND_BACKGROUND_NICENESS` lowers the priority of the worker and projector processes so
that, on a node whose cores are all busy, the API's reads are served first. Half of what
those processes do, however, is done by PostgreSQL: the backends that run their statements
would still compete with the API at full priority. When the database runs on the same
machine, as the embedded one does, a background process therefore lowers each of its own
backends to its own niceness as it connects (`follow`).

A backend is touched only when it is certainly this connection's: the process that
``pg_backend_pid()`` names must be a PostgreSQL process on this machine whose title names the
connection's client side (its address and port for TCP, ``[local]`` with the same user and
database for a Unix socket). A database on another host, in a container with its own process
ids or behind PgBouncer fails that match and is left alone; so is a backend of another user
that this process may not renice (logged once). Lowering a process's priority never needs a
privilege for one's own processes, and a backend keeps it until it exits with its
connection.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

import psycopg

log = logging.getLogger(__name__)

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class BackendPriority:
    """The niceness this process's backends follow (0: leave them alone)."""

    def __init__(self) -> None:
        self.niceness = 0
        self._refused = threading.Event()

    def follow(self, conn: psycopg.Connection[Any]) -> bool:
        """Lower the backend of `conn` to this process's niceness when it is certainly its
        own on this machine; whether it did."""
        if self.niceness <= 0:
            return False
        pid = conn.info.backend_pid
        if not pid or not _is_own_backend(conn, pid):
            return False
        try:
            if os.getpriority(os.PRIO_PROCESS, pid) < self.niceness:
                os.setpriority(os.PRIO_PROCESS, pid, self.niceness)
        except OSError as error:
            if not self._refused.is_set():
                self._refused.set()
                log.info(
                    "PostgreSQL's backends keep their CPU priority (%s): only this process "
                    "runs at niceness %d",
                    error.strerror,
                    self.niceness,
                )
            return False
        return True


#: The process's policy: set by a background role as it lowers its own priority.
BACKENDS = BackendPriority()


def follow_niceness(niceness: int) -> None:
    """From now on, this process's connections lower their backends to `niceness`."""
    BACKENDS.niceness = niceness


def _is_own_backend(conn: psycopg.Connection[Any], pid: int) -> bool:
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, UnicodeDecodeError):
        return False
    if not title.startswith("postgres: "):
        return False
    host = conn.info.host
    if host.startswith("/"):  # a Unix socket: the same user and database, from [local]
        return f" {conn.info.user} {conn.info.dbname} [local]" in title
    if host not in _LOOPBACK and conn.info.hostaddr not in _LOOPBACK:
        return False
    try:
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            address = sock.getsockname()
    except OSError:
        return False
    return f"({address[1]})" in title
