"""The audit chain's tables: each event's hash (written by the recorder as it records the
event, `ChainWriter`; by the database's trigger for any other writer:
migrations/0005.audit-chain-witness.sql), the chain's witnessed end, the signed checkpoints and
the audit key.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresDatastore
from psycopg import Cursor
from psycopg.rows import DictRow

from application.audit import GENESIS, ChainedEvent, Checkpoint, Head
from infra.postgres.connect import fetch_all, fetch_one, returns_row

CHECKPOINTS = "sessiond_audit_checkpoints"
KEY = "sessiond_audit_key"
EVENTS = "sessiond_events"

_EVENTS_PAGE = (
    "SELECT notification_id, originator_id, originator_version, topic, recorded_at, state, "
    "chain_hash FROM sessiond_events WHERE notification_id > %s AND notification_id <= %s "
    "ORDER BY notification_id LIMIT %s"
)


class ChainWriter:
    """Chains the events of one insert, in its transaction (under the event table's lock).

    One statement (the database function ``sessiond_insert_chained``, or
    ``sessiond_insert_chained_one`` for a single event) takes the table's lock (already held
    by the recorder), reads the hash of the log's last event, reserves the events'
    positions, hashes them in order and inserts them: the chain is extended by one
    transaction at a time, whichever process writes, in the order of the positions, at no
    extra round trip and with no other row written. Each function inserts with one
    statement (migrations/0006.audit-chain-one-statement.sql).
    """

    insert = (
        "SELECT n AS notification_id FROM sessiond_insert_chained("
        "%s::uuid[], %s::bigint[], %s::text[], %s::bytea[]) AS n"
    )
    #: The usual commit, one event, as plain values (the same chain; no arrays to build).
    insert_one = (
        "SELECT sessiond_insert_chained_one(%s::uuid, %s::bigint, %s::text, %s::bytea) "
        "AS notification_id"
    )

    def insert_events(self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent]) -> None:
        """Insert `stored_events` chained on `curs` (whose last result is then the events'
        notification ids, in order)."""
        if len(stored_events) == 1:
            (event,) = stored_events
            curs.execute(
                self.insert_one,
                (event.originator_id, event.originator_version, event.topic, event.state),
            )
            return
        curs.execute(
            self.insert,
            (
                [e.originator_id for e in stored_events],
                [e.originator_version for e in stored_events],
                [e.topic for e in stored_events],
                [e.state for e in stored_events],
            ),
        )


def chained_event(row: dict[str, Any]) -> ChainedEvent:
    return ChainedEvent(
        position=row["notification_id"],
        originator_id=row["originator_id"],
        version=row["originator_version"],
        topic=row["topic"] or "",
        recorded_at=row["recorded_at"],
        state=bytes(row["state"] or b""),
        hash=None if row["chain_hash"] is None else bytes(row["chain_hash"]),
    )


def _checkpoint(row: dict[str, Any]) -> Checkpoint:
    return Checkpoint(
        position=row["position"],
        events=row["events"],
        hash=bytes(row["hash"]),
        signed_at=row["signed_at"],
        public_key=bytes(row["public_key"]),
        signature=bytes(row["signature"]),
    )


class AuditStore:
    """Reads the chain and writes checkpoints, on the application's pool."""

    def __init__(self, datastore: PostgresDatastore) -> None:
        self.datastore = datastore

    def witness(self) -> Head:
        """Advance the chain's witnessed end to the log's last event and return it; it stays
        where it was when the events it witnessed are no longer there as witnessed
        (``sessiond_witness_chain``, migrations/0005.audit-chain-witness.sql)."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                "SELECT witnessed, witnessed_events, witnessed_hash FROM sessiond_witness_chain()"
            )
            row = curs.fetchone()
        assert row is not None
        return Head(row["witnessed"], row["witnessed_events"], bytes(row["witnessed_hash"]))

    def events(
        self, after: int, page: int = 1000, *, until: int | None = None
    ) -> Iterator[list[ChainedEvent]]:
        """The chained events after position `after` (up to `until`), a page at a time, in
        log order."""
        last = until if until is not None else 2**63 - 1
        while True:
            rows = fetch_all(self.datastore, _EVENTS_PAGE, (after, last, page))
            if not rows:
                return
            events = [chained_event(row) for row in rows]
            yield events
            after = events[-1].position

    def recorded_after(self, position: int) -> datetime | None:
        """When the first event after `position` was recorded (None: there is none)."""
        row = fetch_one(
            self.datastore,
            "SELECT recorded_at FROM sessiond_events WHERE notification_id > %s "
            "ORDER BY notification_id LIMIT 1",
            (position,),
        )
        return None if row is None else row["recorded_at"]

    def hash_at(self, position: int) -> bytes | None:
        """The hash stored with the event at `position` (the genesis before position 1)."""
        row = fetch_one(
            self.datastore,
            "SELECT chain_hash FROM sessiond_events WHERE notification_id = %s",
            (position,),
        )
        return None if row is None or row["chain_hash"] is None else bytes(row["chain_hash"])

    def chain_before(self, position: int) -> tuple[bytes, int]:
        """The chain's hash after the last event at or before `position`, and how many
        events it has there (the genesis and 0 before the first)."""
        row = fetch_one(
            self.datastore,
            "SELECT chain_hash, (SELECT count(*) FROM sessiond_events "
            "WHERE notification_id <= %s) AS events FROM sessiond_events "
            "WHERE notification_id <= %s ORDER BY notification_id DESC LIMIT 1",
            (position, position),
        )
        if row is None:
            return GENESIS, 0
        return bytes(row["chain_hash"]), row["events"]

    def checkpoints(self, after: int = -1) -> list[Checkpoint]:
        """The checkpoints after position `after`, in position order."""
        rows = fetch_all(
            self.datastore,
            "SELECT position, events, hash, signed_at, public_key, signature "
            "FROM sessiond_audit_checkpoints WHERE position > %s ORDER BY position",
            (after,),
        )
        return [_checkpoint(row) for row in rows]

    def last_checkpoint(self, upto: int | None = None) -> Checkpoint | None:
        """The checkpoint of the highest position (at most `upto`)."""
        row = fetch_one(
            self.datastore,
            "SELECT position, events, hash, signed_at, public_key, signature "
            "FROM sessiond_audit_checkpoints WHERE position <= %s "
            "ORDER BY position DESC LIMIT 1",
            (2**63 - 1 if upto is None else upto,),
        )
        return None if row is None else _checkpoint(row)

    def now(self) -> datetime:
        """The database's clock (the one the chain's times come from)."""
        row = fetch_one(self.datastore, "SELECT clock_timestamp() AS now")
        assert row is not None
        now: datetime = row["now"]
        return now

    def add_checkpoint(self, checkpoint: Checkpoint) -> bool:
        """Record a checkpoint; False if one of that position is already there."""
        return returns_row(
            self.datastore,
            "INSERT INTO sessiond_audit_checkpoints "
            "(position, events, hash, signed_at, public_key, signature) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (position) DO NOTHING "
            "RETURNING position",
            (
                checkpoint.position,
                checkpoint.events,
                checkpoint.hash,
                checkpoint.signed_at,
                checkpoint.public_key,
                checkpoint.signature,
            ),
        )

    # -- the audit key ------------------------------------------------------------------

    def stored_key(self) -> tuple[bytes, bytes | None] | None:
        """The stored public key and, while sessiond keeps it, the private key."""
        row = fetch_one(
            self.datastore, "SELECT public_key, private_key FROM sessiond_audit_key WHERE id = 1"
        )
        if row is None:
            return None
        private = row["private_key"]
        return bytes(row["public_key"]), None if private is None else bytes(private)

    def store_generated_key(self, public: bytes, private: bytes) -> bool:
        """Keep a generated key unless one is stored already; True if it was kept."""
        return returns_row(
            self.datastore,
            "INSERT INTO sessiond_audit_key (id, public_key, private_key) VALUES (1, %s, %s) "
            "ON CONFLICT (id) DO NOTHING RETURNING id",
            (public, private),
        )

    def store_configured_key(self, public: bytes) -> None:
        """The configured key's public half replaces whatever is stored, private half gone."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                "INSERT INTO sessiond_audit_key (id, public_key, private_key) VALUES (1, %s, NULL) "
                "ON CONFLICT (id) DO UPDATE SET public_key = EXCLUDED.public_key, "
                "private_key = NULL",
                (public,),
            )
