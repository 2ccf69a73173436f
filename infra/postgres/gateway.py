"""PostgreSQL side of the gateway: the desired-state view, leases, deadlines and requests.

- ``sessiond_gateway_sessions`` and ``sessiond_deadlines`` are written by the gateway
  projection, each change with its tracking record in one transaction (``NOTIFY
  sessiond_gateway`` wakes the workers).
- ``sessiond_leases``: which worker owns which session. A worker is alive while its
  connection named ``sessiond-worker:<id>`` is open (PostgreSQL drops it the moment the
  process dies, so a killed worker's sessions are taken over at once) and while it renews its
  leases (so a worker cut off from the database gives them up after the lease time).
- ``sessiond_gateway_requests``: calls that must run where the session's client lives (a
  pairing code, the simulator's phone); the API inserts, the owner executes and answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, MutableSet, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore
from psycopg.sql import SQL, Identifier

from domain.values import DeadlineKind
from infra.postgres.connect import fetch_all, fetch_one, transaction
from infra.postgres.views import SYNC_COMMIT_OFF, BatchingView, SetWrite
from projections.gateway import _UNSET, Deadline, GatewayChange, GatewayRow, GatewayView

GATEWAY_CHANNEL = "sessiond_gateway"
NOTIFY_GATEWAY = SQL("NOTIFY {0}").format(Identifier(GATEWAY_CHANNEL))
REQUESTS_CHANNEL = "sessiond_gateway_requests"
WORKER_APP_PREFIX = "sessiond-worker:"


@dataclass(frozen=True)
class Answer:
    """A worker's answer to a request: its result, or an error (code, detail)."""

    request_id: int
    result: dict[str, Any] | None
    error: tuple[str, str] | None = None


# The view's writes, each for a page's events at once (`SetWrite`); a session's in order.
_ROWS = SQL(
    "unnest(%b::uuid[], %b::text[], %b::int[], %b::bool[], %b::text[], %b::bigint[], "
    "%b::int[]) AS u(session_id, desired, bump, set_jid, jid, position, queued)"
)
#: A session's row is made by its first event: one already there is updated, else inserted
#: (only the gateway projection writes this table, under its lock: nothing comes between).
UPSERT_ROWS = SetWrite(
    (
        SQL(
            "UPDATE sessiond_gateway_sessions AS g SET "
            "desired = coalesce(u.desired, g.desired), generation = g.generation + u.bump, "
            "jid = CASE WHEN u.set_jid THEN u.jid ELSE g.jid END, "
            "position = u.position, queued = g.queued + u.queued "
            "FROM {rows} WHERE g.session_id = u.session_id"
        ).format(rows=_ROWS),
        SQL(
            "INSERT INTO sessiond_gateway_sessions "
            "(session_id, desired, generation, jid, position, queued) "
            "SELECT u.session_id, coalesce(u.desired, 'running'), u.bump, u.jid, u.position, "
            "u.queued FROM {rows} WHERE NOT EXISTS (SELECT FROM sessiond_gateway_sessions g "
            "WHERE g.session_id = u.session_id)"
        ).format(rows=_ROWS),
    ),
    key=lambda row: row[0],
)
CLEAR_DEADLINES = SetWrite(
    (
        "DELETE FROM sessiond_deadlines d "
        "USING unnest(%b::uuid[], %b::text[]) AS u(session_id, kind) "
        "WHERE d.session_id = u.session_id AND d.kind = u.kind",
    ),
    rows=lambda clear: [(clear[0], kind) for kind in clear[1]],
    key=lambda clear: clear[0],
)
_DEADLINES = SQL(
    "unnest(%b::uuid[], %b::text[], %b::timestamptz[], %b::bigint[]) "
    "AS u(session_id, kind, due_at, token)"
)
_SET = SQL(
    "ON CONFLICT (session_id, kind) DO UPDATE SET "
    "due_at = EXCLUDED.due_at, token = EXCLUDED.token, claims = 0"
)
SET_DEADLINES = SetWrite(
    (
        SQL(
            "INSERT INTO sessiond_deadlines (session_id, kind, due_at, token) "
            "SELECT * FROM {deadlines} {set}"
        ).format(deadlines=_DEADLINES, set=_SET),
    ),
    key=lambda deadline: deadline[0],
)
#: Only if messages wait, once the session's row is written.
SET_DEADLINES_IF_QUEUED = SetWrite(
    (
        SQL(
            "INSERT INTO sessiond_deadlines (session_id, kind, due_at, token) "
            "SELECT * FROM {deadlines} WHERE EXISTS (SELECT FROM sessiond_gateway_sessions g "
            "WHERE g.session_id = u.session_id AND g.queued > 0) {set}"
        ).format(deadlines=_DEADLINES, set=_SET),
    ),
    key=lambda deadline: deadline[0],
)


class PostgresGatewayView(BatchingView, GatewayView):
    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)

    def apply(self, session_id: UUID, change: GatewayChange, tracking: Tracking) -> None:
        """The row, then the deadlines cleared and set, in that order; in a batch they are
        kept for the page's end (written in one round trip with the page's other writes)."""
        jid_set = change.jid is not _UNSET
        writes: list[tuple[SetWrite, Any]] = [
            (
                UPSERT_ROWS,
                (
                    session_id,
                    change.desired,
                    int(change.bump),
                    jid_set,
                    change.jid if jid_set else None,
                    tracking.notification_id,
                    change.queued,
                ),
            )
        ]
        if change.clear_deadlines:
            writes.append((CLEAR_DEADLINES, (session_id, list(change.clear_deadlines))))
        token = tracking.notification_id
        writes += [
            (SET_DEADLINES, (session_id, kind, due, token))
            for kind, due in change.set_deadlines.items()
        ]
        if change.send_at is not None:
            send = (session_id, DeadlineKind.SEND, change.send_at, token)
            writes.append((SET_DEADLINES_IF_QUEUED, send))
        # Only what workers must act on at once; deadlines are polled.
        notify = NOTIFY_GATEWAY if change.desired is not None or change.bump else None
        self._defer_writes(writes, tracking, notify)

    def row(self, session_id: UUID) -> GatewayRow | None:
        with self._reading() as curs:
            curs.execute(
                "SELECT session_id, desired, generation, jid, position, queued "
                "FROM sessiond_gateway_sessions WHERE session_id = %s",
                (session_id,),
            )
            found = curs.fetchone()
        return None if found is None else GatewayRow(**found)

    def deadlines(self, session_id: UUID) -> list[Deadline]:
        with self._reading() as curs:
            curs.execute(
                "SELECT session_id, kind, due_at, token FROM sessiond_deadlines "
                "WHERE session_id = %s ORDER BY kind",
                (session_id,),
            )
            return [Deadline(**r) for r in curs.fetchall()]


#: Live workers: their identity connection is open (PostgreSQL drops it the moment the
#: process dies) and they renewed their heartbeat within their lease time (a hung or cut-off
#: worker whose connection lingers is not live).
LIVE_WORKERS = (
    "SELECT w.id AS owner FROM sessiond_workers w "
    "WHERE w.renewed_at > now() - make_interval(secs => w.ttl) AND EXISTS ("
    "SELECT 1 FROM pg_stat_activity a WHERE a.datname = current_database() "
    "AND a.application_name = 'sessiond-worker:' || w.id)"
)


class WorkStore:
    """The worker's and the API's queries on leases, deadlines and requests (one pool)."""

    def __init__(self, datastore: PostgresDatastore, worker_id: str = "") -> None:
        self.datastore = datastore
        self.worker_id = worker_id

    # -- leases --------------------------------------------------------------------------

    def live_workers(self) -> set[str]:
        rows = fetch_all(self.datastore, LIVE_WORKERS)
        return {r["owner"] for r in rows}

    def held_counts(self) -> dict[str, int]:
        """How many sessions each live worker holds (live workers holding none included)."""
        rows = fetch_all(
            self.datastore,
            f"WITH live AS ({LIVE_WORKERS}) "  # noqa: S608 - constant text, no input
            "SELECT live.owner, count(l.session_id) AS n FROM live "
            "LEFT JOIN sessiond_leases l ON l.owner = live.owner AND l.expires_at > now() "
            "GROUP BY live.owner",
        )
        return {r["owner"]: int(r["n"]) for r in rows}

    def claim(self, limit: int, ttl: float, *, orphans_only: bool) -> list[tuple[UUID, bool]]:
        """Take up to `limit` sessions meant to run that no live worker holds, with whether
        another worker held them before (it died, or stopped renewing) or nobody did (the
        service started). `orphans_only`: only sessions another worker held."""
        if limit <= 0:
            return []
        held_before = "AND l.session_id IS NOT NULL " if orphans_only else ""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                f"WITH live AS ({LIVE_WORKERS}), "  # noqa: S608 - constant text, no input
                "orphans AS (SELECT g.session_id, l.owner AS previous FROM "
                "sessiond_gateway_sessions g LEFT JOIN sessiond_leases l USING (session_id) "
                "WHERE g.desired = 'running' AND (l.session_id IS NULL OR l.expires_at < now() "
                "OR l.owner NOT IN (SELECT owner FROM live)) "
                + held_before
                + "AND %s IN (SELECT owner FROM live) "  # a worker cut off claims nothing
                "ORDER BY g.session_id LIMIT %s) "
                "INSERT INTO sessiond_leases AS l (session_id, owner, expires_at) "
                "SELECT session_id, %s, now() + make_interval(secs => %s) FROM orphans "
                "ON CONFLICT (session_id) DO UPDATE SET owner = EXCLUDED.owner, "
                "expires_at = EXCLUDED.expires_at, acquired_at = now() "
                "WHERE l.expires_at < now() OR l.owner NOT IN (SELECT owner FROM live) "
                "RETURNING session_id, (SELECT previous FROM orphans o "
                "WHERE o.session_id = l.session_id) AS previous",
                (self.worker_id, limit, self.worker_id, ttl),
            )
            return [(r["session_id"], r["previous"] is not None) for r in curs.fetchall()]

    def renew(self, ttl: float) -> set[UUID]:
        """Extend this worker's leases; the sessions it still holds (none while its identity
        connection is down: others may be taking them over)."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(  # the heartbeat, while the identity connection is open
                "INSERT INTO sessiond_workers (id, ttl, renewed_at) SELECT %s, %s, now() "
                "WHERE EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
                "AND datname = current_database()) ON CONFLICT (id) DO UPDATE SET "
                "renewed_at = now(), ttl = EXCLUDED.ttl",
                (self.worker_id, ttl, WORKER_APP_PREFIX + self.worker_id),
            )
            curs.execute(
                f"WITH live AS ({LIVE_WORKERS}) "  # noqa: S608 - constant text, no input
                "UPDATE sessiond_leases SET expires_at = now() + make_interval(secs => %s) "
                "WHERE owner = %s AND owner IN (SELECT owner FROM live) RETURNING session_id",
                (ttl, self.worker_id),
            )
            return {r["session_id"] for r in curs.fetchall()}

    def release(
        self, session_ids: list[UUID] | None = None, *, timeout: float | None = None
    ) -> None:
        """Give up leases (all of this worker's when `session_ids` is None), waiting at most
        `timeout` seconds for a connection when given (the pool's timeout otherwise)."""
        with (
            self.datastore.transaction(commit=True)
            if timeout is None
            else transaction(self.datastore, timeout=timeout)
        ) as curs:
            if session_ids is None:
                curs.execute("DELETE FROM sessiond_leases WHERE owner = %s", (self.worker_id,))
                curs.execute("DELETE FROM sessiond_workers WHERE id = %s", (self.worker_id,))
            elif session_ids:
                curs.execute(
                    "DELETE FROM sessiond_leases WHERE owner = %s AND session_id = ANY(%s)",
                    (self.worker_id, session_ids),
                )

    def wanted(self) -> int:
        """How many sessions are meant to be running."""
        row = fetch_one(
            self.datastore,
            "SELECT count(*) AS n FROM sessiond_gateway_sessions WHERE desired = 'running'",
        )
        return int(row["n"]) if row else 0

    def owned_rows(
        self, since: int | None = None, also: list[UUID] | None = None
    ) -> list[GatewayRow]:
        """The desired state of the sessions this worker holds (none while it is cut off):
        every one, or (`since` given) those changed after that position and those in `also`."""
        changed = (
            "" if since is None else "AND (g.position > %(since)s OR g.session_id = ANY(%(also)s)) "
        )
        rows = fetch_all(
            self.datastore,
            f"WITH live AS ({LIVE_WORKERS}) "  # noqa: S608 - constant text, no input
            "SELECT g.session_id, g.desired, g.generation, g.jid, g.position "
            "FROM sessiond_gateway_sessions g JOIN sessiond_leases l USING (session_id) "
            "WHERE l.owner = %(me)s AND l.owner IN (SELECT owner FROM live) " + changed,
            {"me": self.worker_id, "since": since, "also": also or []},
        )
        return [GatewayRow(**r) for r in rows]

    # -- deadlines ---------------------------------------------------------------------------

    def claim_deadlines(self, limit: int, hold: float) -> list[Deadline]:
        """Due deadlines of this worker's sessions (and logouts nobody holds), pushed
        `hold` seconds ahead so that a worker dying mid-way leaves them to be claimed again."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(SYNC_COMMIT_OFF)  # a claim lost in a crash: the deadline runs again
            curs.execute(
                f"WITH live AS ({LIVE_WORKERS}), "  # noqa: S608 - constant text, no input
                "due AS (SELECT d.session_id, d.kind FROM sessiond_deadlines d "
                "LEFT JOIN sessiond_leases l USING (session_id) WHERE d.due_at <= now() AND "
                "(l.owner = %s OR (d.kind = 'logout' AND (l.session_id IS NULL OR "
                "l.owner NOT IN (SELECT owner FROM live)))) "
                "ORDER BY d.due_at LIMIT %s FOR UPDATE OF d SKIP LOCKED) "
                "UPDATE sessiond_deadlines d SET due_at = now() + make_interval(secs => %s), "
                "claims = claims + 1 FROM due "
                "WHERE d.session_id = due.session_id AND d.kind = due.kind "
                "RETURNING d.session_id, d.kind, d.due_at, d.token, d.claims",
                (self.worker_id, limit, hold),
            )
            return [Deadline(**r) for r in curs.fetchall()]

    def finish_deadline(self, deadline: Deadline) -> None:
        """Remove a deadline that was handled, unless a newer event has set it again."""
        self.finish_deadlines([deadline])

    def finish_deadlines(self, deadlines: list[Deadline]) -> None:
        """Remove deadlines that were handled (in one statement), each unless a newer event
        has set it again. Rows locked by someone else are skipped, never waited for (the
        projection may be setting them again, in its own order: waiting could deadlock); one
        skipped comes back after the hold, and its run then finds nothing to do."""
        if not deadlines:
            return
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(SYNC_COMMIT_OFF)  # lost in a crash: run again, and found done
            curs.execute(
                "WITH done AS (SELECT d.session_id, d.kind FROM sessiond_deadlines d "
                "JOIN unnest(%b::uuid[], %b::text[], %b::bigint[]) AS f(session_id, kind, "
                "token) ON d.session_id = f.session_id AND d.kind = f.kind "
                "AND d.token = f.token FOR UPDATE OF d SKIP LOCKED) "
                "DELETE FROM sessiond_deadlines d USING done "
                "WHERE d.session_id = done.session_id AND d.kind = done.kind",
                (
                    [d.session_id for d in deadlines],
                    [d.kind for d in deadlines],
                    [d.token for d in deadlines],
                ),
            )

    # -- requests ---------------------------------------------------------------------------

    def open_requests(self) -> list[tuple[int, UUID]]:
        """Unanswered requests for this worker's sessions that nobody live is running: new
        ones, and those of a worker that died mid-call (its holder now answers them)."""
        rows = fetch_all(
            self.datastore,
            f"WITH live AS ({LIVE_WORKERS}) "  # noqa: S608 - constant text, no input
            "SELECT r.id, r.session_id FROM sessiond_gateway_requests r "
            "JOIN sessiond_leases l USING (session_id) WHERE l.owner = %s "
            "AND r.done_at IS NULL AND (r.claimed_by IS NULL OR "
            "r.claimed_by NOT IN (SELECT owner FROM live)) ORDER BY r.id LIMIT 500",
            (self.worker_id,),
        )
        return [(r["id"], r["session_id"]) for r in rows]

    def claim_requests(self, ids: list[int]) -> list[dict[str, Any]]:
        """Take the requests `ids` (from `open_requests`) unless someone live took them. The ids
        are joined, not tested with ``= ANY``: that tested each open request against the whole
        list (a storm's 10,000 open requests against 500 ids: five times slower)."""
        if not ids:
            return []
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(SYNC_COMMIT_OFF)  # a claim lost in a crash: claimed again
            curs.execute(
                f"WITH live AS ({LIVE_WORKERS}) "  # noqa: S608 - constant text, no input
                "UPDATE sessiond_gateway_requests r SET claimed_by = %s FROM ("
                "SELECT r2.id FROM sessiond_gateway_requests r2 JOIN sessiond_leases l "
                "USING (session_id) WHERE r2.id IN (SELECT unnest(%s::bigint[])) "
                "AND l.owner = %s "
                "AND r2.done_at IS NULL AND (r2.claimed_by IS NULL OR "
                "r2.claimed_by NOT IN (SELECT owner FROM live)) "
                "FOR UPDATE OF r2 SKIP LOCKED) picked WHERE r.id = picked.id "
                "RETURNING r.id, r.session_id, r.action, r.args",
                (self.worker_id, ids, self.worker_id),
            )
            return list(curs.fetchall())

    def answer_requests(self, answers: Sequence[Answer]) -> None:
        """Answer requests, all in one statement (a storm's drops are answered together)."""
        if not answers:
            return
        ids = [answer.request_id for answer in answers]
        with self.datastore.transaction(commit=True) as curs:
            # Never waits for the disk: an answer lost in a crash leaves its caller to retry,
            # as the crash itself would (a storm's answers do not each wait for a flush).
            curs.execute(SYNC_COMMIT_OFF)
            curs.execute(
                "UPDATE sessiond_gateway_requests r SET result = a.result::jsonb, "
                "error_code = a.code, error_detail = a.detail, done_at = now() "
                "FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[]) "
                "AS a(id, result, code, detail) WHERE r.id = a.id",
                (
                    ids,
                    [None if a.result is None else json.dumps(a.result) for a in answers],
                    [None if a.error is None else a.error[0] for a in answers],
                    [None if a.error is None else a.error[1] for a in answers],
                ),
            )
            curs.execute(
                "SELECT pg_notify(%s, id::text) FROM unnest(%b::bigint[]) AS id",
                (REQUESTS_CHANNEL + "_done", ids),
            )

    def purge_requests(self, older_than_seconds: float = 3600.0) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                "DELETE FROM sessiond_gateway_requests "
                "WHERE created_at < now() - make_interval(secs => %s)",
                (older_than_seconds,),
            )
            curs.execute(  # heartbeats of workers long gone
                "DELETE FROM sessiond_workers WHERE renewed_at < now() - interval '1 day'"
            )


class PostgresDeviceSet(MutableSet[str]):
    """The simulator's device store in PostgreSQL (table ``sessiond_simulator_devices``)."""

    def __init__(self, datastore: PostgresDatastore) -> None:
        self.datastore = datastore

    def __contains__(self, jid: object) -> bool:
        row = fetch_one(
            self.datastore, "SELECT 1 FROM sessiond_simulator_devices WHERE jid = %s", (jid,)
        )
        return row is not None

    def __iter__(self) -> Iterator[str]:
        rows = fetch_all(self.datastore, "SELECT jid FROM sessiond_simulator_devices ORDER BY jid")
        return iter([r["jid"] for r in rows])

    def __len__(self) -> int:
        return len(list(iter(self)))

    def add(self, jid: str) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                "INSERT INTO sessiond_simulator_devices VALUES (%s) ON CONFLICT DO NOTHING", (jid,)
            )

    def discard(self, jid: str) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute("DELETE FROM sessiond_simulator_devices WHERE jid = %s", (jid,))
