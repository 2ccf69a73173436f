"""Real `sessiond` processes on 127.0.0.1, started the way an operator starts them."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import pytest

from infra.bootstrap import PROJECTIONS
from tests.conftest import ADMIN_KEY
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
#: Read-only: every test of the run shares it, so a helper that wrote into it (httpx-sse's
#: `connect_sse` writes ``Accept: text/event-stream`` into the headers it is given) would
#: change the requests of every later test (GET /qr then answers 406).
ADMIN: Mapping[str, str] = MappingProxyType({"x-api-key": ADMIN_KEY})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Sessiond:
    """One `sessiond <command>` process; `url` is set for the commands that serve HTTP."""

    def __init__(
        self, command: str, env: dict[str, str], log_path: Path, port: int | None = None
    ) -> None:
        self.command = command
        self.port = (port or free_port()) if command in ("serve", "api") else None
        self.url = f"http://127.0.0.1:{self.port}" if self.port else ""
        args = [sys.executable, "-m", "infra.cli", command]
        if self.port:
            args += ["--port", str(self.port)]
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"sessiond exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"sessiond was not ready in {timeout}s:\n{self.log()}")

    def exited_or(self, condition: bool) -> bool:
        """`condition`, or an AssertionError if the process has exited (it never will be)."""
        if self.process.poll() is not None:
            raise AssertionError(f"sessiond {self.command} exited early:\n{self.log()}")
        return condition

    def log(self) -> str:
        """The end of its log, for an assertion's message."""
        return self.full_log()[-5000:]

    def full_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kwargs)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever it left behind
        self._log.close()


def process_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    """The settings of test `sessiond` processes on `database_url`: the simulator, quick
    polls and ticks, short leases."""
    return {
        "SESSIOND_DATA_DIR": str(tmp_path / "var"),
        "SESSIOND_DATABASE_URL": database_url,
        "SESSIOND_ADMIN_KEY": ADMIN_KEY,
        "SESSIOND_POLL_INTERVAL": "0.2",
        "SESSIOND_GATEWAY": "simulator",
        "SESSIOND_WORKER_TICK": "0.2",
        "SESSIOND_LEASE_TTL": "5",
        "SESSIOND_LOG_LEVEL": "info",
    }


#: The machine's Redis (CI starts it), shared by every test that uses it.
REDIS_URL = os.environ.get("SESSIOND_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@contextlib.contextmanager
def one_at_a_time(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[None]:
    """Hold the run's lock `name` (a file in the run's temporary directory, which every xdist
    worker of the run shares): the tests that take it run one after another, whichever
    worker runs them."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # <basetemp>/popen-gwN: the run's directory is its parent
    with (root / f"{name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis, for one test of the run at a time (counts left by one test never
    meet another's). Ask for it before `start`, so that the test's processes are stopped
    before the next test gets it."""
    with one_at_a_time(tmp_path_factory, "redis"):
        yield REDIS_URL


@pytest.fixture
def sessiond_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        **process_env(database_url, tmp_path),
        # Tests never reach beyond this host: webhooks go to private addresses only.
        "SESSIOND_WEBHOOKS_ALLOW_PRIVATE": "only",
    }


@pytest.fixture
def start(tmp_path: Path, database_url: str) -> Iterator[Any]:
    """Start `sessiond <command>` processes; all are stopped after the test, before its
    database is dropped."""
    started: list[Sessiond] = []

    def _start(
        command: str, env: dict[str, str], *, wait: bool = True, port: int | None = None
    ) -> Sessiond:
        process = Sessiond(command, env, tmp_path / f"{command}-{len(started)}.log", port)
        started.append(process)
        if wait and process.url:
            process.wait_ready()
        elif wait and command == "worker":
            eventually(
                lambda: process.exited_or(" is up" in process.full_log()),
                f"the worker up:\n{process.log()}",
                timeout=60,
            )
        elif wait and command == "projector":
            eventually(
                lambda: process.exited_or(running_every_projection(started)),
                f"every projection run by a live process:\n{process.log()}",
                timeout=60,
            )
        return process

    yield _start
    for process in started:
        process.stop()


def running_every_projection(processes: list[Sessiond]) -> bool:
    """Every projection is run by one of `processes` still alive (a projector that stands by
    runs none; one that was killed runs none any more)."""
    running: set[str] = set()
    for process in processes:
        if process.process.poll() is None:
            running |= set(re.findall(r"now runs projection (\w+)", process.full_log()))
    return running == set(PROJECTIONS)


def create_session(client: httpx.Client, name: str = "Support", **body: Any) -> dict[str, Any]:
    response = client.post("/sessions", json={"name": name, **body}, headers=ADMIN)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def key_of(created: dict[str, Any]) -> dict[str, str]:
    return {"x-api-key": created["apiKey"]["key"]}
