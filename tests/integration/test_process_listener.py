"""The process's one listener: every channel on one connection, statements run on it, and a
lost connection noticed, its locks given up and its channels listened to again."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest

from infra.postgres.listener import ListenerDown, ProcessListener
from tests.waiting import eventually

pytestmark = pytest.mark.postgres
NAME = "sessiond-test:listener"


@pytest.fixture
def listener(database_url: str) -> Iterator[ProcessListener]:
    started = ProcessListener(database_url, NAME, check_interval=0.2)
    started.start()
    yield started
    started.stop()


def notify(database_url: str, channel: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, 'x')", (channel,))


def backends(database_url: str) -> list[int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            # This database's only: tests on other workers may share the server.
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            (NAME,),
        ).fetchall()
    return [int(r[0]) for r in rows]


def test_every_channel_and_lock_share_one_connection_that_comes_back_after_a_loss(
    listener: ProcessListener, database_url: str
) -> None:
    heard: dict[str, int] = {"one": 0, "two": 0}
    woken: dict[str, int] = {"one": 0, "two": 0}
    lost = threading.Event()

    def on(channel: str) -> Callable[[psycopg.Notify | None], None]:
        def callback(notification: psycopg.Notify | None) -> None:
            if notification is None:
                woken[channel] += 1
            else:
                heard[channel] += 1

        return callback

    listener.listen("one", on("one"))
    listener.listen("two", on("two"))
    listener.on_lost(lost.set)
    eventually(listener.connected.is_set)
    eventually(lambda: woken["one"] >= 1 and woken["two"] >= 1)

    # Check both channels are heard, on one connection, which also runs statements and holds
    # a lock across them.
    notify(database_url, "one")
    notify(database_url, "two")
    eventually(lambda: heard["one"] == 1 and heard["two"] == 1)
    assert len(backends(database_url)) == 1
    assert listener.run(lambda conn: conn.execute("SELECT pg_try_advisory_lock(42)").fetchone())
    with psycopg.connect(database_url, autocommit=True) as other:
        row = other.execute("SELECT pg_try_advisory_lock(42)").fetchone()
        assert row == (False,)

    # Check a lost connection is noticed: the lock goes with it, the listener connects again
    # under a new epoch, tells every callback (nothing sent meanwhile is missed) and listens
    # to every channel again.
    epoch = listener.epoch
    (pid,) = backends(database_url)
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
    eventually(lost.is_set)
    eventually(lambda: listener.connected.is_set() and listener.epoch == epoch + 1)
    eventually(lambda: woken["one"] >= 2 and woken["two"] >= 2)
    with psycopg.connect(database_url, autocommit=True) as other:
        row = other.execute("SELECT pg_try_advisory_lock(42)").fetchone()
        assert row == (True,)
    notify(database_url, "two")
    eventually(lambda: heard["two"] == 2)

    # Check a stopped listener refuses statements at once.
    listener.stop()
    # Its connection is closed; the server's backend for it exits a moment later.
    eventually(lambda: backends(database_url) == [], what="the listener's connection gone")
    with pytest.raises(ListenerDown):
        listener.run(lambda conn: conn.execute("SELECT 1"))
