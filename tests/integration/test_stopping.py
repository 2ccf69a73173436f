"""Nothing that stops or recovers a process waits behind a thread that waits for the database.

The database here answers, but the pool has no connection to give (every one is taken by the
test) and waits a minute for one: a database that does not answer, as far as the waiting
threads can tell.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.bootstrap import STOP_TIMEOUT, Container
from infra.runtime.worker import GatewayWorker, WorkerTimings
from infra.whatsapp.simulator import SimulatorGateway
from tests.conftest import test_settings
from tests.waiting import eventually


@pytest.fixture
def container(database_url: str, tmp_path: Path) -> Iterator[Container]:
    built = Container(test_settings(tmp_path, database_url), database_url, frozenset({"worker"}))
    yield built
    built.close()


def exhaust(container: Container) -> tuple[Any, list[Any]]:
    """Take every connection of the container's pool; a caller now waits for a minute."""
    pool = container.app.factory.datastore.pool  # type: ignore[attr-defined]
    pool.timeout = 60.0
    return pool, [pool.getconn() for _ in range(pool.max_size)]


def waiting(pool: Any) -> int:
    return int(pool.get_stats().get("requests_waiting", 0))


def test_losing_the_connection_does_not_wait_behind_a_reconcile_that_waits_for_the_database(
    container: Container,
) -> None:
    worker = GatewayWorker(
        container.app, SimulatorGateway(), container.database_url, WorkerTimings(tick=0.2)
    )
    worker._last_renewal = time.monotonic()  # as if renewed: reconcile reads what it holds
    pool, taken = exhaust(container)
    reconcile = threading.Thread(target=worker.reconcile, daemon=True)
    reconcile.start()
    eventually(lambda: waiting(pool) >= 1)

    # Check every client is stopped at once, the reconcile still waiting for its connection.
    lost = threading.Thread(target=worker._lose_everything, daemon=True)
    lost.start()
    lost.join(10)
    assert not lost.is_alive(), "losing the connection waited for the reconcile"
    assert reconcile.is_alive() and waiting(pool) >= 1

    # Check the reconcile, once it has its connection, applies nothing it planned before.
    for conn in taken:
        pool.putconn(conn)
    reconcile.join(10)
    assert not reconcile.is_alive()
    assert worker.gateway.running() == set()
    worker.close(timeout=1)


def test_a_worker_stops_in_time_while_every_tick_waits_for_the_database(
    container: Container,
) -> None:
    container.start()
    pool, _ = exhaust(container)
    eventually(lambda: waiting(pool) >= 2)  # ticks, the webhook claimer…

    began = time.monotonic()
    closing = threading.Thread(target=container.close, daemon=True)
    closing.start()
    closing.join(STOP_TIMEOUT + 5)
    assert not closing.is_alive(), "the worker did not stop while its ticks waited"
    print(f"stopped in {time.monotonic() - began:.2f} s with every tick waiting")
    # Check nothing waits any more: closing the pool ended every wait.
    eventually(lambda: waiting(pool) == 0, timeout=30)
