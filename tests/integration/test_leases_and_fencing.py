"""Leases, fencing and the watchdogs of the gateway worker, in one process on PostgreSQL:
the cases a review found where a session could end up run twice or by no one."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from domain.values import session_uuid
from infra.postgres.gateway import WORKER_APP_PREFIX, WorkStore
from infra.runtime.worker import GatewayWorker
from infra.whatsapp.simulator import SimulatorGateway
from tests.integration.conftest import Api
from tests.integration.steps import (
    connected_session,
    eventually,
    simulate,
    status,
)


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    return {"SESSIOND_RETRY_BASE": "0.2", "SESSIOND_RETRY_CAP": "0.5"}


def worker_of(api: Api) -> GatewayWorker:
    worker = api.container.worker
    assert worker is not None
    return worker


def simulator_of(api: Api) -> SimulatorGateway:
    gateway = api.container.gateway
    assert isinstance(gateway, SimulatorGateway)
    return gateway


async def test_workers_of_other_databases_are_not_counted(
    api: Api, pg_base_url: str, database_url: str
) -> None:
    store = WorkStore(api.container.app.factory.datastore)  # type: ignore[attr-defined]
    ours = await asyncio.to_thread(store.live_workers)
    assert ours == {worker_of(api).worker_id}
    # A worker named like one that has a heartbeat here, but connected to another database
    # of the same server (as tests, or several deployments, share one server).
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sessiond_workers (id, ttl, renewed_at) VALUES ('elsewhere', 60, now())"
        )
    other = make_conninfo(pg_base_url, application_name=WORKER_APP_PREFIX + "elsewhere")
    with psycopg.connect(other):
        assert await asyncio.to_thread(store.live_workers) == ours


async def test_the_sessions_of_a_worker_that_stopped_renewing_are_taken_over(
    api: Api, database_url: str
) -> None:
    created = await connected_session(api, "Held by a hung worker")
    uuid_ = session_uuid(created["sessionId"])
    hung = "hung" + uuid.uuid4().hex[:8]
    # A second worker whose connection is still open, but which stopped renewing (hung, or
    # cut off while the server keeps its connection): its heartbeat and lease have expired.
    other = make_conninfo(database_url, application_name=WORKER_APP_PREFIX + hung)
    with psycopg.connect(other, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sessiond_workers (id, ttl, renewed_at) "
            "VALUES (%s, 5, now() - interval '1 minute')",
            (hung,),
        )
        conn.execute(
            "UPDATE sessiond_leases SET owner = %s, expires_at = now() - interval '1 s' "
            "WHERE session_id = %s",
            (hung, uuid_),
        )
        # Check it does not count as live: new sessions still find a worker.
        await connected_session(api, "Ours")

        async def taken_back() -> bool:
            row = conn.execute(
                "SELECT owner FROM sessiond_leases WHERE session_id = %s", (uuid_,)
            ).fetchone()
            return row is not None and row[0] == worker_of(api).worker_id

        await eventually(taken_back)


async def test_a_worker_that_cannot_renew_in_time_stops_every_client(api: Api) -> None:
    created = await connected_session(api, "Fenced")
    worker = worker_of(api)
    assert session_uuid(created["sessionId"]) in simulator_of(api).running()

    def failing_renew(ttl: float) -> set[Any]:
        raise psycopg.OperationalError("the database is unreachable")

    worker.store.renew = failing_renew  # type: ignore[method-assign]
    worker._last_renewal = time.monotonic() - worker.timings.lease_ttl  # last success: long ago

    async def fenced() -> bool:
        return not simulator_of(api).running()

    await eventually(fenced)
    assert not worker.holds(session_uuid(created["sessionId"]))


def intercept_first_start(api: Api, first: Callable[[Any], None]) -> list[Any]:
    """Make the simulator's next start of a client call `first` with the session instead
    (later starts are real); the sessions whose start was intercepted."""
    simulator = simulator_of(api)
    real_start = simulator.start
    seen: list[Any] = []

    def start(session_id: Any, device_jid: str | None, proxy: str | None = None) -> None:
        if not seen:
            seen.append(session_id)
            first(session_id)
            return
        real_start(session_id, device_jid, proxy)

    simulator.start = start  # type: ignore[method-assign]
    return seen


async def test_a_start_that_fails_is_recorded_and_retried(api: Api) -> None:
    created = await connected_session(api, "Fails once")

    def fail(session_id: Any) -> None:
        raise RuntimeError("the client could not be created")

    failures = intercept_first_start(api, fail)
    await simulate(api, created, "drop")

    async def back() -> bool:
        return bool((await status(api, created))["status"] == "connected")

    await eventually(back)
    assert failures
    events = list(api.container.app.events.get(session_uuid(created["sessionId"])))
    details = [getattr(e, "detail", "") for e in events if type(e).__name__ == "Disconnected"]
    assert any("start failed: the client could not be created" in d for d in details)


async def test_a_start_that_never_answers_is_given_up_and_retried(api: Api) -> None:
    created = await connected_session(api, "Hangs")
    session_id = session_uuid(created["sessionId"])
    hung = intercept_first_start(api, lambda _: None)  # accepted, then nothing reported
    await simulate(api, created, "drop")

    async def hanging() -> bool:
        return bool(hung) and (await status(api, created))["status"] == "connecting"

    await eventually(hanging)
    worker = worker_of(api)
    worker._started_at[session_id] -= 3600  # as if the start had waited an hour
    assert await asyncio.to_thread(worker._check_start, session_id)

    async def back() -> bool:
        return bool((await status(api, created))["status"] == "connected")

    await eventually(back)
    events = list(api.container.app.events.get(session_id))
    details = [getattr(e, "detail", "") for e in events if type(e).__name__ == "Disconnected"]
    assert any("no answer from WhatsApp" in d for d in details)


async def test_a_renewal_that_hangs_is_fenced_by_the_watchdog_and_recovers(api: Api) -> None:
    created = await connected_session(api, "Hung renewal")
    session_id = session_uuid(created["sessionId"])
    worker = worker_of(api)
    real_renew = worker.store.renew
    release = threading.Event()

    def hanging_renew(ttl: float) -> set[Any]:
        release.wait(30)  # as a network black hole would, with no error
        return real_renew(ttl)

    worker.store.renew = hanging_renew  # type: ignore[method-assign]
    worker._last_renewal = time.monotonic() - worker.timings.lease_ttl  # renewal due, and late

    async def fenced() -> bool:
        return session_id not in simulator_of(api).running()

    await eventually(fenced)
    assert not worker.holds(session_id)

    release.set()  # the database answers again: the worker holds its sessions and resumes them

    async def resumed() -> bool:
        running = session_id in simulator_of(api).running()
        return running and (await status(api, created))["status"] == "connected"

    await eventually(resumed, timeout=20)
