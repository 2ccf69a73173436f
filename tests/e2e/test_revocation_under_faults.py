"""A revoked key stops working whatever the projector is doing: two API processes, a worker and
a projector on one database; the projector stopped, frozen, killed mid-burst, or every API
process's refresh held up past its window."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import psycopg
import pytest

from application.ports import InboundMessage
from application.sessions import SessionsApplication
from domain.values import ADMIN_ACTOR, session_uuid
from infra.settings import eventsourcing_env
from projections.keys import KeyRow
from tests.e2e.conftest import ADMIN, Sessiond, create_session
from tests.e2e.steps import highest_position, one_row
from tests.waiting import eventually

REQUESTS = 50


@pytest.fixture
def env(sessiond_env: dict[str, str]) -> dict[str, str]:
    return {
        **sessiond_env,
        "SESSIOND_STALE_AFTER": "1",
        "SESSIOND_WRITE_WAIT_TIMEOUT": "3",
        # These tests send revoked keys on purpose, many times: no lock-out of the address.
        "SESSIOND_AUTH_FAILURE_LIMIT": "100000",
    }


class Cluster:
    def __init__(self, start: Any, env: dict[str, str]) -> None:
        self.start, self.env = start, env
        self.apis: list[Sessiond] = [start("api", env), start("api", env)]
        self.worker = start("worker", env)
        self.new_projector()
        self.clients = [api.client() for api in self.apis]
        self.a, self.b = self.clients

    def new_projector(self) -> Sessiond:
        """Start a projector: `start` waits until every projection runs again."""
        projector: Sessiond = self.start("projector", self.env)
        self.projector = projector
        return projector

    def close(self) -> None:
        for client in self.clients:
            client.close()


@pytest.fixture
def cluster(start: Any, env: dict[str, str]) -> Iterator[Cluster]:
    running = Cluster(start, env)
    yield running
    with contextlib.suppress(ProcessLookupError):  # a frozen projector must be able to stop
        os.kill(running.projector.process.pid, signal.SIGCONT)
    running.close()


def answered(
    client: httpx.Client, path: str, headers: dict[str, str], status: int
) -> Callable[[], bool]:
    return lambda: client.get(path, headers=headers).status_code == status


def new_key(cluster: Cluster, session_id: str) -> tuple[str, dict[str, str]]:
    """A key of the session that works on both API processes."""
    issued = cluster.a.post(f"/sessions/{session_id}/keys", json={}, headers=ADMIN)
    assert issued.status_code == 201, issued.text
    key = {"x-api-key": issued.json()["key"]}
    for client in cluster.clients:
        eventually(
            answered(client, f"/sessions/{session_id}/status", key, 200), "the new key works"
        )
    return issued.json()["keyId"], key


def answers(cluster: Cluster, session_id: str, key: dict[str, str]) -> Counter[int]:
    """The statuses of `REQUESTS` reads with `key`, spread over both processes and routes."""
    paths = [f"/sessions/{session_id}/status", f"/sessions/{session_id}", "/webhooks"]
    statuses: Counter[int] = Counter()
    for n in range(REQUESTS):
        client = cluster.clients[n % 2]
        statuses[client.get(paths[n % len(paths)], headers=key).status_code] += 1
    return statuses


def assert_refused(cluster: Cluster, session_id: str, key: dict[str, str]) -> Counter[int]:
    statuses = answers(cluster, session_id, key)
    assert sum(n for status, n in statuses.items() if status < 300) == 0, statuses
    assert set(statuses) <= {401, 503}, statuses
    return statuses


def refused_then_all_401(cluster: Cluster, session_id: str, key: dict[str, str]) -> None:
    """Every try of `key` is refused (none succeeds), until a round of `REQUESTS` tries is
    answered 401 every time. A process whose copy of the keys went stale meanwhile (its
    refresh held up past its 1 s window on a loaded machine) answers 503 instead, failing
    closed, as designed: refused too, and waited out rather than counted as a failure."""

    def all_401() -> Counter[int] | None:
        statuses = assert_refused(cluster, session_id, key)
        return statuses if statuses == Counter({401: REQUESTS}) else None

    eventually(all_401, f"{REQUESTS} tries in a row answered 401")


def view_says_active(database_url: str, key_id: str) -> bool:
    """Whether the key view (the projection's table) still has the key active."""
    with psycopg.connect(database_url) as conn:
        found = conn.execute("SELECT doc FROM api_keys WHERE key_id = %s", (key_id,)).fetchone()
    assert found is not None
    return msgspec.json.decode(found[0], type=KeyRow).is_active


def test_with_the_projector_stopped_or_frozen_a_revoked_key_is_refused_on_every_try(
    cluster: Cluster, database_url: str
) -> None:
    created = create_session(cluster.a, "Keys")
    session_id = created["sessionId"]
    stopped_key_id, stopped_key = new_key(cluster, session_id)
    frozen_key_id, frozen_key = new_key(cluster, session_id)
    revoke = f"/sessions/{session_id}/keys/"

    # The projector stopped: the revoke is in force everywhere, the views cannot catch up.
    cluster.projector.stop(signal.SIGTERM)
    first = cluster.a.delete(revoke + stopped_key_id, headers=ADMIN)
    assert first.status_code == 503, first.text
    assert first.json()["type"] == "urn:sessiond:problem:views-lagging"
    assert "in force on every server" in first.json()["detail"]
    assert view_says_active(database_url, stopped_key_id)  # the view still has it active
    assert_refused(cluster, session_id, stopped_key)

    # Check a retry (on the other process) answers the same 503, and the key stays refused.
    retry = cluster.b.delete(revoke + stopped_key_id, headers=ADMIN)
    assert retry.status_code == 503, retry.text
    assert_refused(cluster, session_id, stopped_key)

    # A projector that runs, then freezes (SIGSTOP): it holds the views and does nothing.
    projector = cluster.new_projector()
    eventually(lambda: not view_says_active(database_url, stopped_key_id), "the views catch up")
    os.kill(projector.process.pid, signal.SIGSTOP)
    frozen = cluster.b.delete(revoke + frozen_key_id, headers=ADMIN)
    assert frozen.status_code == 503, frozen.text
    assert view_says_active(database_url, frozen_key_id)
    assert_refused(cluster, session_id, frozen_key)
    assert cluster.a.delete(revoke + frozen_key_id, headers=ADMIN).status_code == 503
    assert_refused(cluster, session_id, frozen_key)

    # Check once the projector goes on, a retry answers 204 and the keys stay refused.
    os.kill(projector.process.pid, signal.SIGCONT)
    eventually(
        lambda: cluster.a.delete(revoke + frozen_key_id, headers=ADMIN).status_code == 204,
        "a retried revoke answers 204",
    )
    assert cluster.b.delete(revoke + stopped_key_id, headers=ADMIN).status_code == 204
    for key in (stopped_key, frozen_key):
        refused_then_all_401(cluster, session_id, key)
    projector.stop()


def test_with_the_projector_stopped_a_deleted_sessions_keys_are_refused_on_every_try(
    cluster: Cluster, database_url: str
) -> None:
    created = create_session(cluster.a, "Doomed")
    session_id = created["sessionId"]
    keys = [{"x-api-key": created["apiKey"]["key"]}, new_key(cluster, session_id)[1]]

    cluster.projector.stop(signal.SIGTERM)
    first = cluster.a.delete(f"/sessions/{session_id}", headers=ADMIN)
    assert first.status_code == 503, first.text
    assert "in force on every server" in first.json()["detail"]
    for key in keys:
        assert_refused(cluster, session_id, key)

    # Check the retry answers the same 503 (not a 404 while the keys might still work).
    for client in cluster.clients:
        retry = client.delete(f"/sessions/{session_id}", headers=ADMIN)
        assert retry.status_code == 503, retry.text
        for key in keys:
            assert_refused(cluster, session_id, key)

    # Check once a projector runs again, the retry answers 204; the keys stay refused.
    cluster.new_projector()
    eventually(
        lambda: cluster.b.delete(f"/sessions/{session_id}", headers=ADMIN).status_code == 204,
        "a retried delete answers 204",
    )
    assert cluster.a.get(f"/sessions/{session_id}", headers=ADMIN).status_code == 404
    for key in keys:
        refused_then_all_401(cluster, session_id, key)
    cluster.projector.stop()


def projected(database_url: str) -> int:
    return highest_position(database_url, "api_keys_tracking")


def head(database_url: str) -> int:
    return highest_position(database_url, "sessiond_events")


def every_api_holds(database_url: str, position: int) -> bool:
    row = one_row(
        database_url,
        "SELECT count(*) FROM sessiond_api_instances "
        "WHERE revoked_through < %s AND trusted_until > now()",
        (position,),
    )
    return row is not None and row[0] == 0


def test_with_the_projector_killed_mid_burst_revoked_keys_are_refused(
    cluster: Cluster, database_url: str
) -> None:
    created = create_session(cluster.a, "Keys")
    session_id = created["sessionId"]
    in_burst_id, in_burst = new_key(cluster, session_id)
    after_kill_id, after_kill = new_key(cluster, session_id)
    by_api_id, by_api = new_key(cluster, session_id)
    noisy = [create_session(cluster.a, f"Noisy {n}")["sessionId"] for n in range(8)]

    # Another writer (as a worker does) records a burst of events, one revocation among them.
    writer = SessionsApplication(env={**eventsourcing_env(database_url), "CREATE_TABLE": "n"})
    burst_start = head(database_url)
    revoked_in_burst: list[int | None] = []

    def burst(index: int) -> None:
        for n in range(400):
            message = InboundMessage(
                whatsapp_id=f"burst-{index}-{n}",
                sender="4915112345678@s.whatsapp.net",
                chat="4915112345678@s.whatsapp.net",
                text="hi",
                sent_at=datetime.now(UTC),
            )
            writer.record_received(session_uuid(noisy[index]), message)
            if index == 0 and n == 200:
                revoked_in_burst.append(writer.revoke_key(session_id, in_burst_id, ADMIN_ACTOR))

    threads = [threading.Thread(target=burst, args=(i,)) for i in range(len(noisy))]
    try:
        for thread in threads:
            thread.start()
        # Check the projector is killed while it is applying the burst.
        eventually(lambda: projected(database_url) > burst_start, "the burst is being projected")
        cluster.projector.stop(signal.SIGKILL)
        for thread in threads:
            thread.join()
        assert projected(database_url) < head(database_url)

        position = writer.revoke_key(session_id, after_kill_id, ADMIN_ACTOR)
        assert position is not None and revoked_in_burst[0] is not None
    finally:
        writer.close()
    eventually(lambda: every_api_holds(database_url, position), "every API has the revocations")
    for key in (in_burst, after_kill):
        assert_refused(cluster, session_id, key)
    assert view_says_active(database_url, after_kill_id)

    # Check a revoke through the API is refused everywhere too, first try and retry.
    for client in cluster.clients:
        answer = client.delete(f"/sessions/{session_id}/keys/{by_api_id}", headers=ADMIN)
        assert answer.status_code == 503, answer.text
        assert_refused(cluster, session_id, by_api)


def lock_waits(database_url: str, pid: int) -> bool:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", (pid,)
        ).fetchone()
    return row is not None and row[0] > 0


def test_a_process_whose_refresh_is_held_past_its_window_refuses_keys_then_recovers(
    cluster: Cluster, database_url: str
) -> None:
    created = create_session(cluster.a, "Keys")
    session_id = created["sessionId"]
    good = {"x-api-key": created["apiKey"]["key"]}
    doomed_id, doomed = new_key(cluster, session_id)
    status = f"/sessions/{session_id}/status"

    # The test holds a lock on a table every refresh reads: every refresh blocks on it.
    with psycopg.connect(database_url) as held, psycopg.connect(database_url) as queued:
        held.execute("LOCK TABLE api_keys_tracking IN ACCESS EXCLUSIVE MODE")
        for client in cluster.clients:
            eventually(
                answered(client, status, good, 503),
                "the process refuses session keys once its copy is older than its window",
            )
            ready = client.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["checks"]["views"] == "stale"
            assert client.get(status, headers=ADMIN).status_code == 200  # admin: no copy needed
        # Check a revoke meanwhile: recorded, the processes' windows are over, never 2xx
        # before the views have it.
        answer = cluster.a.delete(f"/sessions/{session_id}/keys/{doomed_id}", headers=ADMIN)
        assert answer.status_code == 503, answer.text
        assert_refused(cluster, session_id, doomed)
        assert_refused(cluster, session_id, good)

        # Let the held refreshes finish with the snapshots they read before the revoke, and
        # hold the next ones: a lock queued on a table they read first (behind the held
        # refreshes, which read it already) is granted once they have finished.
        granted = threading.Thread(
            target=queued.execute,
            args=("LOCK TABLE sessiond_view_generations IN ACCESS EXCLUSIVE MODE",),
        )
        granted.start()
        eventually(lambda: lock_waits(database_url, queued.info.backend_pid), "the lock queued")
        held.rollback()
        granted.join(20)
        assert not granted.is_alive()
        # Check the processes do not trust the copy whose refresh outlasted the window: both
        # keys are refused (the revoked one was not in that snapshot).
        assert_refused(cluster, session_id, doomed)
        for client in cluster.clients:
            assert client.get(status, headers=good).status_code == 503
        queued.rollback()

    # Check both processes recover by themselves, and the key revoked meanwhile stays refused.
    for client in cluster.clients:
        eventually(answered(client, status, good, 200), "the process recovers")
    refused_then_all_401(cluster, session_id, doomed)
    eventually(
        lambda: (
            cluster.b.delete(f"/sessions/{session_id}/keys/{doomed_id}", headers=ADMIN).status_code
            == 204
        ),
        "the retried revoke answers 204",
    )


def test_settings_that_make_revocation_impossible_are_refused_at_start(
    start: Any, env: dict[str, str]
) -> None:
    bad = start(
        "api", {**env, "SESSIOND_STALE_AFTER": "5", "SESSIOND_WRITE_WAIT_TIMEOUT": "5"}, wait=False
    )
    assert bad.process.wait(30) == 2
    lines = [line for line in bad.log().splitlines() if line.strip()]
    assert lines == [
        "sessiond: SESSIOND_STALE_AFTER=5 needs SESSIOND_WRITE_WAIT_TIMEOUT > 6 (it is 5): "
        "a revocation must be able to outwait an API process that stopped refreshing"
    ], lines
