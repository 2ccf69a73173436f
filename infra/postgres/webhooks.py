"""PostgreSQL side of webhooks: the endpoints and the outbox (written by the webhook
projection with its tracking record), the attempts log, and the queries of the dispatcher
and the API.

- ``sessiond_webhook_endpoints``: one row per endpoint (no secret: the dispatcher reads it
  from the endpoint's events), plus `failing_since`, kept by the dispatcher.
- ``sessiond_webhook_deliveries``: one row per (endpoint, event): pending, delivered or dead.
  Workers claim due rows with ``FOR UPDATE SKIP LOCKED`` and push them `hold` seconds ahead, so
  a worker that dies mid-delivery leaves them to be claimed again.
- ``sessiond_webhook_attempts``: every attempt: status, duration, error, the start of the answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString

from eventsourcing.persistence import Notification, Tracking
from eventsourcing.postgres import PostgresDatastore
from psycopg.sql import SQL, Composed, Identifier
from psycopg.types.json import Jsonb

from infra.postgres.connect import fetch_all, fetch_one, returns_row
from infra.postgres.loghub import NOTIFICATION_COLUMNS, notification
from infra.postgres.views import SYNC_COMMIT_OFF, BatchingView
from projections.webhooks import (
    EndpointHealth,
    EndpointRow,
    NewDelivery,
    WebhookQueries,
    WebhookView,
)

WEBHOOKS_CHANNEL = "sessiond_webhooks"
INSERT_DELIVERY = SQL(
    "INSERT INTO sessiond_webhook_deliveries (delivery_id, webhook_id, event_id, event_type, "
    "session_id, position, occurred_at, status, next_attempt_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, 'pending', now())"
)
NOTIFY_DELIVERIES = SQL("NOTIFY {0}").format(Identifier(WEBHOOKS_CHANNEL))
EVENTS_TABLE = "sessiond_events"  # the application's stored events (eventsourcing's table)
APPLICATION_NAME = "sessiond"  # whose tracking records count
PENDING, DELIVERED, DEAD, CANCELLED = "pending", "delivered", "dead", "cancelled"


def new_delivery_id() -> str:
    return "dlv_" + uuid.uuid4().hex


def _delivery_row(d: NewDelivery) -> tuple[Any, ...]:
    """A new delivery's values, in the order of `INSERT_DELIVERY` (and of the replay's)."""
    return (
        new_delivery_id(),
        d.webhook_id,
        d.event_id,
        d.event_type,
        d.session_id,
        d.position,
        d.occurred_at,
    )


class PostgresWebhookView(BatchingView, WebhookView):
    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self._start: int | None = None

    def start_position(self) -> int:
        if self._start is None:
            with self._reading() as curs:
                curs.execute("SELECT start_position FROM sessiond_webhook_state WHERE id = 1")
                row = curs.fetchone()
            self._start = int(row["start_position"]) if row else 0
        return self._start

    def save_endpoint(self, row: EndpointRow, tracking: Tracking) -> None:
        with self._transaction() as curs:
            curs.execute(
                "INSERT INTO sessiond_webhook_endpoints (webhook_id, url, events, session_id, "
                "enabled, disabled_reason, version, created_at, updated_at) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (webhook_id) DO UPDATE SET "
                "url = EXCLUDED.url, events = EXCLUDED.events, enabled = EXCLUDED.enabled, "
                "disabled_reason = EXCLUDED.disabled_reason, version = EXCLUDED.version, "
                "updated_at = EXCLUDED.updated_at, failing_since = CASE WHEN EXCLUDED.enabled "
                "AND NOT sessiond_webhook_endpoints.enabled THEN NULL "
                "ELSE sessiond_webhook_endpoints.failing_since END",
                (
                    row.webhook_id,
                    row.url,
                    Jsonb(row.events),
                    row.session_id,
                    row.enabled,
                    row.disabled_reason,
                    row.version,
                    row.created_at,
                    row.updated_at,
                ),
            )
            self._insert_tracking(curs, tracking)

    def remove_endpoint(self, webhook_id: str, tracking: Tracking) -> None:
        with self._transaction() as curs:
            curs.execute(
                "DELETE FROM sessiond_webhook_endpoints WHERE webhook_id = %s", (webhook_id,)
            )
            curs.execute(
                "UPDATE sessiond_webhook_deliveries SET status = 'cancelled', "
                "last_error = 'the webhook was deleted' "
                "WHERE webhook_id = %s AND status = 'pending'",
                (webhook_id,),
            )
            self._insert_tracking(curs, tracking)

    def endpoints(self) -> list[EndpointRow]:
        with self._reading() as curs:
            curs.execute(
                "SELECT webhook_id, url, events, session_id, enabled, disabled_reason, version, "
                "created_at, updated_at FROM sessiond_webhook_endpoints"
            )
            return [EndpointRow(**row) for row in curs.fetchall()]

    def enqueue(self, deliveries: list[NewDelivery], tracking: Tracking) -> None:
        rows = [_delivery_row(d) for d in deliveries]
        self._defer(INSERT_DELIVERY, rows, tracking, NOTIFY_DELIVERIES)


@dataclass(frozen=True)
class Claimed:
    delivery_id: str
    webhook_id: str
    event_id: str
    event_type: str
    position: int
    attempts: int  # tries before this one
    url: str
    version: int  # of the endpoint


@dataclass(frozen=True)
class Attempt:
    """One attempt's facts, as the attempts log and the outbox record them."""

    claimed: Claimed
    at: datetime
    status_code: int | None
    duration_ms: float
    error: str | None
    response: str | None
    outcome: str  # delivered | retry | dead
    next_attempt_at: datetime | None


class WebhookStore(WebhookQueries):
    """The dispatcher's and the API's queries on endpoints, deliveries and attempts."""

    def __init__(self, datastore: PostgresDatastore) -> None:
        self.datastore = datastore

    def position(self) -> int:
        row = fetch_one(
            self.datastore,
            "SELECT max(notification_id) AS n FROM webhooks_tracking WHERE application_name = %s",
            (APPLICATION_NAME,),
        )
        return int(row["n"] or 0) if row else 0

    # -- the dispatcher ----------------------------------------------------------------------

    def claim(self, limit: int, hold: float) -> list[Claimed]:
        """Take up to `limit` due deliveries for `hold` seconds. The claim need not wait for
        the disk: one that a crash of PostgreSQL loses leaves its deliveries due, to be
        claimed and sent again with the same ids, as when a worker dies."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(SYNC_COMMIT_OFF)
            curs.execute(
                "WITH due AS (SELECT d.delivery_id FROM sessiond_webhook_deliveries d "
                "JOIN sessiond_webhook_endpoints e USING (webhook_id) "
                "WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND e.enabled "
                "ORDER BY d.next_attempt_at LIMIT %s FOR UPDATE OF d SKIP LOCKED) "
                "UPDATE sessiond_webhook_deliveries d SET next_attempt_at = now() + "
                "make_interval(secs => %s) FROM due, sessiond_webhook_endpoints e "
                "WHERE d.delivery_id = due.delivery_id AND e.webhook_id = d.webhook_id "
                "RETURNING d.delivery_id, d.webhook_id, d.event_id, d.event_type, d.position, "
                "d.attempts, e.url, e.version",
                (limit, hold),
            )
            return [Claimed(**row) for row in curs.fetchall()]

    def due_by_endpoint(self, most: int) -> list[tuple[str, str | None, int]]:
        """Each enabled endpoint with deliveries due: its id, its session (None for the
        admin's) and how many are due, counted up to `most`. The endpoints with pending
        deliveries are found by skipping through an index (one probe per endpoint), so a
        long backlog of one endpoint costs no more than a short one."""
        rows = fetch_all(
            self.datastore,
            "WITH RECURSIVE pending (webhook_id) AS ("
            "(SELECT webhook_id FROM sessiond_webhook_deliveries WHERE status = 'pending' "
            "ORDER BY webhook_id LIMIT 1) UNION ALL "
            "SELECT (SELECT d.webhook_id FROM sessiond_webhook_deliveries d "
            "WHERE d.status = 'pending' AND d.webhook_id > pending.webhook_id "
            "ORDER BY d.webhook_id LIMIT 1) FROM pending WHERE pending.webhook_id IS NOT NULL) "
            "SELECT e.webhook_id, e.session_id, due.n FROM pending "
            "JOIN sessiond_webhook_endpoints e USING (webhook_id) "
            "CROSS JOIN LATERAL (SELECT count(*) AS n FROM (SELECT 1 FROM "
            "sessiond_webhook_deliveries d WHERE d.webhook_id = e.webhook_id "
            "AND d.status = 'pending' AND d.next_attempt_at <= now() LIMIT %s) x) due "
            "WHERE e.enabled AND due.n > 0",
            (most,),
        )
        return [(r["webhook_id"], r["session_id"], int(r["n"])) for r in rows]

    def claim_shares(self, quotas: Mapping[str, int], hold: float) -> list[Claimed]:
        """Take, for `hold` seconds, up to each endpoint's quota of its due deliveries
        (oldest due first), as `claim` does."""
        if not quotas:
            return []
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(SYNC_COMMIT_OFF)
            curs.execute(
                "WITH q AS (SELECT * FROM unnest(%s::text[], %s::int[]) AS q(webhook_id, quota)), "
                "due AS (SELECT d.delivery_id FROM q CROSS JOIN LATERAL (SELECT d.delivery_id "
                "FROM sessiond_webhook_deliveries d WHERE d.webhook_id = q.webhook_id "
                "AND d.status = 'pending' AND d.next_attempt_at <= now() "
                "ORDER BY d.next_attempt_at LIMIT q.quota FOR UPDATE SKIP LOCKED) d) "
                "UPDATE sessiond_webhook_deliveries d SET next_attempt_at = now() + "
                "make_interval(secs => %s) FROM due, sessiond_webhook_endpoints e "
                "WHERE d.delivery_id = due.delivery_id AND e.webhook_id = d.webhook_id "
                "AND e.enabled "
                "RETURNING d.delivery_id, d.webhook_id, d.event_id, d.event_type, d.position, "
                "d.attempts, e.url, e.version",
                (list(quotas), list(quotas.values()), hold),
            )
            return [Claimed(**row) for row in curs.fetchall()]

    def _select_events(self, condition: LiteralString) -> Composed:
        """The recorded events that meet `condition`, as `notification` reads them."""
        return SQL("SELECT {0} FROM {1}.{2} WHERE {3}").format(
            NOTIFICATION_COLUMNS,
            Identifier(self.datastore.schema or "public"),
            Identifier(EVENTS_TABLE),
            SQL(condition),
        )

    def stored_events(self, positions: Sequence[int]) -> dict[int, Notification]:
        """The recorded events at these positions (one query for a claimed batch)."""
        rows = fetch_all(
            self.datastore, self._select_events("notification_id = ANY(%s)"), (list(positions),)
        )
        return {row["notification_id"]: notification(row) for row in rows}

    def record_attempt(
        self,
        claimed: Claimed,
        *,
        at: datetime,
        status_code: int | None,
        duration_ms: float,
        error: str | None,
        response: str | None,
        outcome: str,  # delivered | retry | dead
        next_attempt_at: datetime | None,
    ) -> None:
        self.record_attempts(
            [
                Attempt(
                    claimed, at, status_code, duration_ms, error, response, outcome, next_attempt_at
                )
            ]
        )

    def record_attempts(self, attempts: Sequence[Attempt]) -> None:
        """Log the attempts and update their deliveries and endpoints, in one transaction: the
        same as recording them one after the other, in this order (the statements of each
        kind are pipelined; an endpoint's `failing_since` only changes where its outcome
        changes from success to failure or back, so a run of alike outcomes needs one)."""
        if not attempts:
            return
        endpoint_changes: list[dict[str, Any]] = []
        last_ok: dict[str, bool] = {}
        for a in attempts:
            ok = a.outcome == "delivered"
            if last_ok.get(a.claimed.webhook_id) is not ok:  # the same again changes nothing
                last_ok[a.claimed.webhook_id] = ok
                endpoint_changes.append(
                    {"w": a.claimed.webhook_id, "since": None if ok else a.at, "failed": not ok}
                )
        with self.datastore.transaction(commit=True) as curs:
            curs.executemany(
                "INSERT INTO sessiond_webhook_attempts (delivery_id, attempt, at, status_code, "
                "duration_ms, error, response) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                [
                    (
                        a.claimed.delivery_id,
                        a.claimed.attempts + 1,
                        a.at,
                        a.status_code,
                        a.duration_ms,
                        a.error,
                        a.response,
                    )
                    for a in attempts
                ],
            )
            curs.executemany(
                "UPDATE sessiond_webhook_deliveries SET attempts = attempts + 1, status = %(s)s, "
                "last_status = %(code)s, last_error = %(error)s, "
                "delivered_at = CASE WHEN %(s)s = 'delivered' THEN %(at)s ELSE delivered_at END, "
                "next_attempt_at = coalesce(%(next)s, next_attempt_at) "
                "WHERE delivery_id = %(id)s AND status = 'pending'",
                [
                    {
                        "s": {"delivered": DELIVERED, "dead": DEAD}.get(a.outcome, PENDING),
                        "code": a.status_code,
                        "error": a.error,
                        "at": a.at,
                        "next": a.next_attempt_at,
                        "id": a.claimed.delivery_id,
                    }
                    for a in attempts
                ],
            )
            # A success clears `failing_since`; a failure sets it unless it is set already.
            curs.executemany(
                "UPDATE sessiond_webhook_endpoints SET failing_since = %(since)s "
                "WHERE webhook_id = %(w)s AND (failing_since IS NULL) = %(failed)s",
                endpoint_changes,
            )

    def failing_since(self, webhook_id: str) -> datetime | None:
        row = fetch_one(
            self.datastore,
            "SELECT failing_since FROM sessiond_webhook_endpoints WHERE webhook_id = %s",
            (webhook_id,),
        )
        return None if row is None else row["failing_since"]

    def kill_pending(self, webhook_id: str, reason: str) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                "UPDATE sessiond_webhook_deliveries SET status = 'dead', last_error = %s "
                "WHERE webhook_id = %s AND status = 'pending'",
                (reason, webhook_id),
            )

    # -- the API ------------------------------------------------------------------------------

    def endpoint_health(self) -> EndpointHealth:
        row = fetch_one(
            self.datastore,
            "SELECT count(*) FILTER (WHERE enabled) AS enabled, "
            "count(*) FILTER (WHERE NOT enabled) AS disabled, "
            "count(*) FILTER (WHERE enabled AND failing_since IS NOT NULL) AS failing, "
            "min(failing_since) FILTER (WHERE enabled) AS oldest "
            "FROM sessiond_webhook_endpoints",
        )
        if row is None:  # pragma: no cover - an aggregate always answers one row
            return EndpointHealth()
        return EndpointHealth(row["enabled"], row["disabled"], row["failing"], row["oldest"])

    def endpoints_of(self, session_id: str | None) -> list[dict[str, Any]]:
        """Endpoints of a session (None: every endpoint)."""
        if session_id is None:
            return fetch_all(
                self.datastore, "SELECT * FROM sessiond_webhook_endpoints ORDER BY created_at"
            )
        return fetch_all(
            self.datastore,
            "SELECT * FROM sessiond_webhook_endpoints WHERE session_id = %s ORDER BY created_at",
            (session_id,),
        )

    def endpoint(self, webhook_id: str) -> dict[str, Any] | None:
        return fetch_one(
            self.datastore,
            "SELECT * FROM sessiond_webhook_endpoints WHERE webhook_id = %s",
            (webhook_id,),
        )

    def deliveries(
        self, webhook_id: str, *, status: str | None, before: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """The endpoint's deliveries, newest first, each with its attempts."""
        with self.datastore.cursor() as curs:
            curs.execute(
                "SELECT * FROM sessiond_webhook_deliveries WHERE webhook_id = %(w)s "
                "AND (%(s)s::text IS NULL OR status = %(s)s) AND (%(b)s::text IS NULL OR "
                "(created_at, delivery_id) < (SELECT created_at, delivery_id FROM "
                "sessiond_webhook_deliveries WHERE delivery_id = %(b)s)) "
                "ORDER BY created_at DESC, delivery_id DESC LIMIT %(l)s",
                {"w": webhook_id, "s": status, "b": before, "l": limit},
            )
            rows = list(curs.fetchall())
            ids = [r["delivery_id"] for r in rows]
            curs.execute(
                "SELECT * FROM sessiond_webhook_attempts WHERE delivery_id = ANY(%s) "
                "ORDER BY attempt",
                (ids,),
            )
            attempts: dict[str, list[dict[str, Any]]] = {}
            for attempt in curs.fetchall():
                attempts.setdefault(attempt["delivery_id"], []).append(attempt)
        for row in rows:
            row["attempt_log"] = attempts.get(row["delivery_id"], [])
        return rows

    def retry(self, webhook_id: str, delivery_id: str) -> bool:
        """Send a delivery again now (whatever its status), keeping its event id."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                "UPDATE sessiond_webhook_deliveries SET status = 'pending', "
                "next_attempt_at = now() WHERE webhook_id = %s AND delivery_id = %s "
                "RETURNING delivery_id",
                (webhook_id, delivery_id),
            )
            found = curs.fetchone() is not None
            curs.execute(NOTIFY_DELIVERIES)
        return found

    def replay(self, deliveries: list[NewDelivery]) -> int:
        """Enqueue deliveries again (a replay): new delivery ids, the events' own ids."""
        with self.datastore.transaction(commit=True) as curs:
            curs.executemany(
                "INSERT INTO sessiond_webhook_deliveries (delivery_id, webhook_id, event_id, "
                "event_type, session_id, position, occurred_at, status, next_attempt_at, "
                "replay) VALUES (%s, %s, %s, %s, %s, %s, %s, 'pending', now(), true)",
                [_delivery_row(d) for d in deliveries],
            )
            curs.execute(NOTIFY_DELIVERIES)
        return len(deliveries)

    def session_notifications(
        self, session_id: uuid.UUID, after_version: int, limit: int
    ) -> list[Notification]:
        rows = fetch_all(
            self.datastore,
            self._select_events(
                "originator_id = %s AND originator_version > %s "
                "ORDER BY originator_version LIMIT %s"
            ),
            (session_id, after_version, limit),
        )
        return [notification(row) for row in rows]

    def begin_replay(self, webhook_id: str, hold: float) -> bool:
        return returns_row(
            self.datastore,
            "INSERT INTO sessiond_webhook_replays (webhook_id, until) VALUES "
            "(%s, now() + make_interval(secs => %s)) ON CONFLICT (webhook_id) DO UPDATE "
            "SET until = EXCLUDED.until WHERE sessiond_webhook_replays.until < now() "
            "RETURNING webhook_id",
            (webhook_id, hold),
        )

    def end_replay(self, webhook_id: str) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                "DELETE FROM sessiond_webhook_replays WHERE webhook_id = %s", (webhook_id,)
            )
