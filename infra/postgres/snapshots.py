"""Snapshots of sessions' status rows in PostgreSQL (``sessiond_status_snapshots``): what a
read of a session's past state starts from (see `projections.history.past_state`)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec
from eventsourcing.postgres import PostgresDatastore

from infra.postgres.connect import fetch_one
from projections.history import SNAPSHOT_FORMAT, StatusSnapshots
from projections.status import SessionRow

_DECODER = msgspec.json.Decoder(SessionRow)
_ENCODER = msgspec.json.Encoder()


class PostgresStatusSnapshots(StatusSnapshots):
    def __init__(self, datastore: PostgresDatastore) -> None:
        self.datastore = datastore

    def nearest(self, session_id: UUID, instant: datetime) -> tuple[int, SessionRow] | None:
        row = fetch_one(
            self.datastore,
            "SELECT version, row FROM sessiond_status_snapshots WHERE session_id = %s "
            "AND format = %s AND at <= %s ORDER BY version DESC LIMIT 1",
            (session_id, SNAPSHOT_FORMAT, instant),
        )
        found = row
        if found is None:
            return None
        return int(found["version"]), _DECODER.decode(bytes(found["row"]))

    def put(self, session_id: UUID, snapshots: list[tuple[int, datetime, SessionRow]]) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.executemany(
                "INSERT INTO sessiond_status_snapshots (session_id, format, version, at, row) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [
                    (session_id, SNAPSHOT_FORMAT, version, at, _ENCODER.encode(row))
                    for version, at, row in snapshots
                ],
            )
