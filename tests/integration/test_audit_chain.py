"""The tamper-evident history on PostgreSQL: every recorded event is chained, and an edit, a
deletion, an insertion or a swap made with SQL is found at its position; a chain rewritten
and signed again without the audit key fails its checkpoints; writers in two processes keep
one valid chain; a log recorded before the chain is chained on upgrade."""

from __future__ import annotations

import base64
import itertools
import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from eventsourcing.persistence import StoredEvent
from psycopg.rows import dict_row

from application.audit import Break, Checkpoint, Verified, checkpoint_message, event_hash
from application.sessions import SessionsApplication
from domain.values import ADMIN_ACTOR
from infra.bootstrap import Container
from infra.postgres.audit import AuditStore, ChainWriter, chained_event
from infra.postgres.schema import migrate
from infra.runtime.audit import (
    AuditKeyError,
    Checkpointer,
    load_audit_key,
    sign_head,
    verify_chain,
    verify_tail,
)
from infra.settings import eventsourcing_env
from tests.conftest import test_settings
from tests.fixtures import load_previous_release
from tests.waiting import eventually

pytestmark = pytest.mark.postgres


@pytest.fixture
def container(database_url: str, tmp_path: Path) -> Iterator[Container]:
    built = Container(test_settings(tmp_path, database_url), database_url, frozenset())
    yield built
    built.close()


def record_events(app: SessionsApplication, sessions: int = 3) -> None:
    """A few sessions, each created, stopped and reconnected: ~5 events each."""
    for n in range(sessions):
        session_id = app.create_session(f"S{n}", {}, None, ADMIN_ACTOR).session_id
        app.stop(session_id, ADMIN_ACTOR)
        app.reconnect(session_id, ADMIN_ACTOR)


def positions(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT notification_id FROM sessiond_events ORDER BY 1").fetchall()
    return [row[0] for row in rows]


def recorded(container: Container, url: str) -> list[int]:
    """Record the scenario's events: their positions, in order."""
    record_events(container.app)
    return positions(url)


def verified(container: Container) -> Break | Verified:
    return verify_chain(container.audit_store, container.audit_key().public)


def tamper(url: str, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Run SQL as an intruder would: triggers off (the chain's trigger would refuse most)."""
    with psycopg.connect(url) as conn:
        conn.execute("SET session_replication_role = replica")
        for statement, parameters in statements:
            conn.execute(statement, parameters)


def test_every_recorded_event_is_chained_and_the_chain_verifies(
    container: Container, database_url: str
) -> None:
    ids = recorded(container, database_url)
    result = verified(container)
    assert result == Verified(len(ids), ids[-1], None, 0)
    # Check each stored hash is the documented encoding over the previous one.
    store = container.audit_store
    previous = bytes(32)
    for page in store.events(0):
        for event in page:
            assert event.hash == event_hash(previous, event)
            previous = event_hash(previous, event)
    head = store.witness()
    assert (head.position, head.events, head.hash) == (
        ids[-1],
        len(ids),
        previous,
    )


def test_commits_of_one_event_and_of_many_are_chained_alike(
    container: Container, database_url: str
) -> None:
    """The recorder inserts a commit of one event with its own function and a commit of several
    with the array one: both extend one chain that verifies, in the documented encoding."""
    record_events(container.app, 1)
    with psycopg.connect(database_url) as conn:
        cursor = conn.cursor(row_factory=dict_row)
        events = [StoredEvent(uuid.uuid4(), 1, "t", f"state {n}".encode()) for n in range(3)]
        ChainWriter().insert_events(cursor, events)
        assert len(cursor.fetchall()) == 3
        ChainWriter().insert_events(cursor, [StoredEvent(uuid.uuid4(), 1, "t", b"")])
        assert len(cursor.fetchall()) == 1
        conn.commit()
    ids = positions(database_url)
    assert verified(container) == Verified(len(ids), ids[-1], None, 0)
    previous = bytes(32)
    for page in container.audit_store.events(0):
        for event in page:
            assert event.hash == event_hash(previous, event)
            previous = event_hash(previous, event)


def test_an_edited_event_is_found_at_its_position(container: Container, database_url: str) -> None:
    target = recorded(container, database_url)[5]
    tamper(
        database_url,
        (
            "UPDATE sessiond_events SET state = state || '\\x20'::bytea WHERE notification_id = %s",
            (target,),
        ),
    )
    result = verified(container)
    assert isinstance(result, Break) and result.position == target
    assert "does not match its hash" in result.problem


def test_an_edited_time_or_topic_is_found_at_its_position(
    container: Container, database_url: str
) -> None:
    ids = recorded(container, database_url)
    tamper(
        database_url,
        (
            "UPDATE sessiond_events SET recorded_at = recorded_at - interval '1 day' "
            "WHERE notification_id = %s",
            (ids[3],),
        ),
    )
    result = verified(container)
    assert isinstance(result, Break) and result.position == ids[3]


def test_a_deleted_event_is_found_where_it_was(container: Container, database_url: str) -> None:
    ids = recorded(container, database_url)
    tamper(database_url, ("DELETE FROM sessiond_events WHERE notification_id = %s", (ids[4],)))
    result = verified(container)
    # The event after it no longer chains to what comes before it.
    assert isinstance(result, Break) and result.position == ids[5]
    assert "deleted" in result.problem


def test_deleting_the_last_events_once_witnessed_is_found_even_after_more_are_recorded(
    container: Container, database_url: str
) -> None:
    ids = recorded(container, database_url)
    # The projector role's checkpointer witnesses the chain's end on each tick, due or not.
    checkpointer = Checkpointer(
        container.audit_store, container.audit_key(), every_events=10_000, interval=3600, tick=1
    )
    assert checkpointer.check_once() is None
    tamper(
        database_url,
        ("DELETE FROM sessiond_events WHERE notification_id >= %s", (ids[-2],)),
    )
    result = verified(container)
    assert isinstance(result, Break) and result.position == ids[-1]
    assert "deleted" in result.problem
    # New events extend the chain from the shortened log; the witness stays where it was.
    record_events(container.app, 1)
    assert checkpointer.check_once() is None
    assert container.audit_store.witness().position == ids[-1]
    for result in (
        verified(container),
        verify_tail(container.audit_store, container.audit_key().public),
    ):
        assert isinstance(result, Break) and result.position == ids[-1]
        assert "deleted" in result.problem


def _inserted_row(container: Container, url: str, at: int, before: int) -> tuple[Any, ...]:
    """A copy of the event at `before`'s neighbour, placed at position `at` with a hash
    computed correctly from the event before it (the best an intruder without the key can
    do)."""
    store = container.audit_store
    with psycopg.connect(url, row_factory=dict_row) as conn:
        row = conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic, recorded_at, "
            "state, chain_hash FROM sessiond_events WHERE notification_id = %s",
            (before,),
        ).fetchone()
    assert row is not None
    event = chained_event({**row, "notification_id": at, "originator_version": 1000})
    previous = store.hash_at(before)
    assert previous is not None
    forged = event_hash(previous, event)
    return (
        at,
        event.originator_id,
        1000,
        event.topic,
        event.recorded_at,
        event.state,
        forged,
    )


INSERT = (
    "INSERT INTO sessiond_events (notification_id, originator_id, originator_version, topic, "
    "recorded_at, state, chain_hash) VALUES (%s, %s, %s, %s, %s, %s, %s)"
)


def test_an_inserted_event_is_found_at_its_position(
    container: Container, database_url: str
) -> None:
    app = container.app
    record_events(app, 1)
    with psycopg.connect(database_url) as conn:  # a rolled-back transaction leaves a gap
        conn.execute("SELECT nextval('sessiond_events_notification_id_seq')")
    record_events(app, 1)
    ids = positions(database_url)
    gap = next(p + 1 for p, q in itertools.pairwise(ids) if q != p + 1)
    tamper(database_url, (INSERT, _inserted_row(container, database_url, gap, gap - 1)))
    result = verified(container)
    assert isinstance(result, Break) and result.position == gap
    assert "inserted" in result.problem


def test_an_event_appended_without_extending_the_chain_is_found(
    container: Container, database_url: str
) -> None:
    record_events(container.app, 1)
    ids = positions(database_url)
    last = ids[-1]
    # Chained to the event before the last, as a copy of an old event replayed at the end.
    tamper(database_url, (INSERT, _inserted_row(container, database_url, last + 1, ids[-2])))
    result = verified(container)
    # The chain forks at the last event: it and the appended one both chain to the one
    # before it, and the walk reports the fork there, naming the appended event.
    assert isinstance(result, Break) and result.position == last
    assert f"(at position {last + 1}) chains to the event before this one" in result.problem


def test_an_insert_that_skips_ahead_of_the_chain_is_refused(
    container: Container, database_url: str
) -> None:
    """With the trigger on, an event cannot be chained before the head's position."""
    record_events(container.app, 1)
    ids = positions(database_url)
    with psycopg.connect(database_url) as conn, pytest.raises(psycopg.errors.RaiseException):
        conn.execute(
            "INSERT INTO sessiond_events (notification_id, originator_id, originator_version, "
            "topic, state) SELECT %s, originator_id, 999, topic, state FROM sessiond_events "
            "WHERE notification_id = %s",
            (ids[0] - 1 if ids[0] > 1 else 0, ids[0]),
        )
    assert verified(container) == Verified(len(ids), ids[-1], None, 0)


def test_a_swapped_pair_of_events_is_found_at_the_first(
    container: Container, database_url: str
) -> None:
    ids = recorded(container, database_url)
    a, b = ids[6], ids[7]
    tamper(
        database_url,
        ("UPDATE sessiond_events SET notification_id = -1 WHERE notification_id = %s", (a,)),
        ("UPDATE sessiond_events SET notification_id = %s WHERE notification_id = %s", (a, b)),
        ("UPDATE sessiond_events SET notification_id = %s WHERE notification_id = -1", (b,)),
    )
    result = verified(container)
    assert isinstance(result, Break) and result.position == a


def _rewrite_chain_from(url: str, start: int) -> None:
    """Recompute every hash from `start` on, and the head, as an intruder who knows the
    encoding would after an edit."""
    with psycopg.connect(url) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "UPDATE sessiond_events SET state = state || '\\x20'::bytea WHERE notification_id = %s",
            (start,),
        )
        conn.execute(
            """
            DO $$ DECLARE r record; h bytea; BEGIN
                SELECT chain_hash INTO h FROM sessiond_events WHERE notification_id < %s
                ORDER BY notification_id DESC LIMIT 1;
                FOR r IN SELECT * FROM sessiond_events WHERE notification_id >= %s
                    ORDER BY notification_id LOOP
                    h := sessiond_event_hash(h, r.notification_id, r.originator_id,
                        r.originator_version, r.topic, r.recorded_at, r.state);
                    UPDATE sessiond_events SET chain_hash = h
                    WHERE notification_id = r.notification_id;
                END LOOP;
                UPDATE sessiond_audit_head SET hash = h WHERE id = 1;
            END $$
            """.replace("%s", str(int(start))),
        )


def test_a_rewritten_chain_fails_the_signed_checkpoint(
    container: Container, database_url: str
) -> None:
    record_events(container.app)
    checkpoint = sign_head(container.audit_store, container.audit_key())
    assert checkpoint is not None
    ids = positions(database_url)
    assert verified(container) == Verified(len(ids), ids[-1], checkpoint, 0)
    _rewrite_chain_from(database_url, ids[2])
    result = verified(container)
    assert isinstance(result, Break) and result.position == checkpoint.position
    assert "signed checkpoint" in result.problem
    tail = verify_tail(container.audit_store, container.audit_key().public)
    assert isinstance(tail, Break) and tail.position == checkpoint.position


@pytest.mark.parametrize("claimed_key", ["forger's", "real"])
def test_a_chain_signed_again_without_the_key_fails_the_checkpoint_check(
    container: Container, database_url: str, claimed_key: str
) -> None:
    record_events(container.app)
    real = container.audit_key()
    assert sign_head(container.audit_store, real) is not None
    ids = positions(database_url)
    _rewrite_chain_from(database_url, ids[2])
    # Check the intruder signs the rewritten head with a key of their own, whether the
    # checkpoint then names that key or still names the real one.
    forger = Ed25519PrivateKey.generate()
    forger_public = forger.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    head = container.audit_store.witness()
    with psycopg.connect(database_url) as conn:
        signed_at = conn.execute(
            "SELECT signed_at FROM sessiond_audit_checkpoints WHERE position = %s", (head.position,)
        ).fetchone()[0]  # type: ignore[index]
        signature = forger.sign(
            checkpoint_message(head.position, head.events, head.hash, signed_at)
        )
        conn.execute(
            "UPDATE sessiond_audit_checkpoints SET hash = %s, signature = %s, public_key = %s",
            (head.hash, signature, forger_public if claimed_key == "forger's" else real.public),
        )
    result = verified(container)
    assert isinstance(result, Break) and result.position == head.position
    expected = "another key" if claimed_key == "forger's" else "wrong signature"
    assert expected in result.problem
    tail = verify_tail(container.audit_store, real.public)
    assert isinstance(tail, Break) and tail.position == head.position


def test_the_tail_since_the_last_checkpoint_verifies_and_finds_an_edit(
    container: Container, database_url: str
) -> None:
    record_events(container.app, 2)
    checkpoint = sign_head(container.audit_store, container.audit_key())
    assert checkpoint is not None
    record_events(container.app, 2)
    ids = positions(database_url)
    public = container.audit_key().public
    tail = verify_tail(container.audit_store, public)
    assert tail == Verified(len(ids), ids[-1], checkpoint, checkpoint.position)
    target = ids[-3]
    tamper(
        database_url,
        (
            "UPDATE sessiond_events SET topic = topic || 'x' WHERE notification_id = %s",
            (target,),
        ),
    )
    tail = verify_tail(container.audit_store, public)
    assert isinstance(tail, Break) and tail.position == target


def test_checkpoints_come_every_n_events_and_when_an_event_waited_too_long(
    container: Container, database_url: str
) -> None:
    store = container.audit_store
    key = container.audit_key()
    record_events(container.app, 1)
    per_session = len(positions(database_url))
    by_count = Checkpointer(store, key, every_events=2 * per_session, interval=3600, tick=1)
    assert by_count.check_once() is None  # neither due
    record_events(container.app, 1)
    first = by_count.check_once()
    assert first is not None and first.events == 2 * per_session
    assert by_count.check_once() is None  # nothing new
    by_age = Checkpointer(store, key, every_events=1000, interval=2.0, tick=1)
    record_events(container.app, 1)
    oldest = store.recorded_after(first.position)
    assert oldest is not None
    # Asked until it signs: it must not sign before the oldest unsigned event has waited the
    # interval (both times are the database's clock), however slow the machine is.
    second = eventually(by_age.check_once, "a checkpoint once the oldest event waited 2 s")
    assert (second.signed_at - oldest).total_seconds() >= 2.0, (second.signed_at, oldest)
    assert second.events == 3 * per_session
    assert [c.position for c in store.checkpoints()] == [first.position, second.position]
    assert verified(container) == Verified(3 * per_session, second.position, second, 0)


def test_the_generated_key_is_kept_once_and_a_configured_key_replaces_its_stored_copy(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = SessionsApplication(env=eventsourcing_env(database_url))
    store = AuditStore(app.factory.datastore)  # type: ignore[attr-defined]
    try:
        generated = load_audit_key(store, None)
        assert "SESSIOND_AUDIT_SIGNING_KEY=" in capsys.readouterr().err
        again = load_audit_key(store, None)
        assert again.public == generated.public and capsys.readouterr().err == ""
        assert generated.private is not None
        raw = generated.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        configured = load_audit_key(store, base64.b64encode(raw).decode())
        assert configured.public == generated.public
        assert store.stored_key() == (generated.public, None)  # the private half is gone
        other = base64.b64encode(bytes(range(32))).decode()
        with pytest.raises(AuditKeyError, match="not the key"):
            load_audit_key(store, other)
    finally:
        app.close()


def _write_in_a_process(url: str, name: str, sessions: int, start: Any) -> None:
    app = SessionsApplication(env={**eventsourcing_env(url, pool_size=2)})
    try:
        start.wait(120)  # both write together, whichever process took longer to start
        for n in range(sessions):
            session_id = app.create_session(f"{name}{n}", {}, None, ADMIN_ACTOR).session_id
            for _ in range(3):
                app.stop(session_id, ADMIN_ACTOR)
                app.reconnect(session_id, ADMIN_ACTOR)
    finally:
        app.close()


def test_writers_in_two_processes_keep_one_valid_chain(
    container: Container, database_url: str
) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    writers = [
        context.Process(target=_write_in_a_process, args=(database_url, name, 25, start))
        for name in ("A", "B")
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(180)
        assert writer.exitcode == 0
    ids = positions(database_url)
    assert len(ids) == 2 * 25 * 8  # each session: created, a key, 3 stops and 3 reconnects
    assert verified(container) == Verified(len(ids), ids[-1], None, 0)
    # Check the writers interleaved (else this proves nothing about concurrency).
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT originator_id FROM sessiond_events ORDER BY notification_id"
        ).fetchall()
    switches = sum(1 for x, y in itertools.pairwise(rows) if x != y)
    assert switches > 50


def test_a_log_recorded_before_the_chain_is_chained_on_upgrade(
    empty_database_url: str, tmp_path: Path
) -> None:
    load_previous_release(empty_database_url)
    with psycopg.connect(empty_database_url) as conn:
        count = conn.execute("SELECT count(*) FROM sessiond_events").fetchone()[0]  # type: ignore[index]
    assert count > 0
    migrate(empty_database_url)
    upgraded = Container(
        test_settings(tmp_path, empty_database_url), empty_database_url, frozenset()
    )
    try:
        ids = positions(empty_database_url)
        assert len(ids) == count
        assert verified(upgraded) == Verified(count, ids[-1], None, 0)
        # Check new events extend the chain from the upgraded head.
        record_events(upgraded.app, 1)
        ids = positions(empty_database_url)
        assert verified(upgraded) == Verified(len(ids), ids[-1], None, 0)
        assert isinstance(sign_head(upgraded.audit_store, upgraded.audit_key()), Checkpoint)
    finally:
        upgraded.close()


def test_events_of_a_writer_that_does_not_chain_are_chained_by_the_database(
    container: Container, database_url: str
) -> None:
    """A writer that does not chain its events (an older release during an upgrade) is
    chained by the database, between the recorder's events; a savepoint rolled back takes
    its events' links with it."""
    record_events(container.app, 1)
    insert = (
        "INSERT INTO sessiond_events (originator_id, originator_version, topic, state) "
        "VALUES (%s, %s, 't', '\\x00')"
    )
    originator = uuid.uuid4()
    with psycopg.connect(database_url) as conn, conn.transaction():
        conn.execute("LOCK TABLE sessiond_events IN EXCLUSIVE MODE")
        conn.execute(insert, (originator, 1))
        conn.execute("SAVEPOINT before_two")
        conn.execute(insert, (originator, 2))
        conn.execute("ROLLBACK TO SAVEPOINT before_two")
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        conn.execute(insert, (originator, 3))
        conn.execute("SET CONSTRAINTS ALL DEFERRED")
        conn.execute(insert, (originator, 4))
    record_events(container.app, 1)  # the recorder goes on from the head they moved
    ids = positions(database_url)
    assert verified(container) == Verified(len(ids), ids[-1], None, 0)


def test_encrypted_events_are_chained_over_their_ciphertext(
    database_url: str, tmp_path: Path
) -> None:
    settings = test_settings(
        tmp_path, database_url, SESSIOND_CIPHER_KEY=base64.b64encode(bytes(32)).decode()
    )
    encrypted = Container(settings, database_url, frozenset())
    try:
        record_events(encrypted.app, 2)
        ids = positions(database_url)
        assert verified(encrypted) == Verified(len(ids), ids[-1], None, 0)
        first = next(encrypted.audit_store.events(0))[0]
        assert b"S0" not in first.state  # the session's name is in it, encrypted
    finally:
        encrypted.close()


@pytest.mark.parametrize(
    "function", ["sessiond_insert_chained", "sessiond_insert_chained_one", "ChainWriter"]
)
def test_chained_inserts_that_skip_the_table_lock_still_extend_one_chain(
    container: Container, database_url: str, function: str
) -> None:
    """Two inserts that skip the table lock cannot fork the chain: each insert function
    takes the lock itself, so the second waits for the first's commit and extends the chain
    from its event (either function: of many events, or of one; and the recorder's writer,
    which calls them)."""
    record_events(container.app, 1)
    before = positions(database_url)

    def insert(conn: psycopg.Connection[Any], state: bytes) -> None:
        if function == "ChainWriter":
            event = StoredEvent(uuid.uuid4(), 1, "t", state)
            ChainWriter().insert_events(conn.cursor(row_factory=dict_row), [event])
        elif function == "sessiond_insert_chained":
            conn.execute(
                f"SELECT * FROM {function}(%s, %s, %s, %s)", ([uuid.uuid4()], [1], ["t"], [state])
            )
        else:
            conn.execute(f"SELECT * FROM {function}(%s, %s, %s, %s)", (uuid.uuid4(), 1, "t", state))

    with psycopg.connect(database_url) as first, psycopg.connect(database_url) as second:
        insert(first, b"1")
        second_done = threading.Event()

        def insert_second() -> None:
            insert(second, b"2")
            second.commit()
            second_done.set()

        thread = threading.Thread(target=insert_second)
        thread.start()
        # The second is queued behind the first's lock (seen by the database, not guessed).
        with psycopg.connect(database_url, autocommit=True) as observer:
            deadline = time.monotonic() + 30
            while not observer.execute(
                "SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                "WHERE c.relname = 'sessiond_events' AND NOT l.granted AND l.pid = %s",
                (second.info.backend_pid,),
            ).fetchone():
                assert time.monotonic() < deadline, "the second insert never waited"
                time.sleep(0.02)
        assert not second_done.is_set()
        first.commit()
        thread.join(30)
    assert second_done.is_set()
    ids = positions(database_url)
    assert len(ids) == len(before) + 2
    assert verified(container) == Verified(len(ids), ids[-1], None, 0)


def test_an_unchained_event_at_the_end_is_reported_and_recording_goes_on(
    container: Container, database_url: str
) -> None:
    """An event inserted at the end with the chain's trigger disabled has no hash: sessiond
    goes on recording (chained from the last event that has one), and a check reports the
    unchained event at its position."""
    record_events(container.app, 1)
    tamper(
        database_url,
        (
            "INSERT INTO sessiond_events (originator_id, originator_version, topic, state) "
            "VALUES (%s, 1, 't', '\\x00')",
            (uuid.uuid4(),),
        ),
    )
    unchained = positions(database_url)[-1]
    record_events(container.app, 1)
    assert positions(database_url)[-1] > unchained
    result = verified(container)
    assert result == Break(unchained, "the event has no hash (inserted)")
