"""What a session's page reads besides its live row: keys, timeline, uptime, webhooks.

Blocking reads through the same query ports as the JSON API, run in one worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from api.dashboard.chart import Chart, chart, window
from application.sessions import SendingState, SessionsApplication
from domain.values import session_uuid
from projections.history import HistoryEntry, session_history
from projections.keys import KeyRow
from projections.readmodels import ReadModels
from projections.status import SessionRow
from projections.uptime import BUCKETS, UptimeView, series
from projections.webhooks import WebhookQueries

TIMELINE = 50
EARLIEST = datetime.min.replace(tzinfo=UTC)
DELIVERIES = 5


@dataclass(frozen=True)
class Webhook:
    endpoint: dict[str, Any]
    deliveries: list[dict[str, Any]]


@dataclass(frozen=True)
class SessionDetails:
    keys: list[KeyRow]
    timeline: list[HistoryEntry]
    chart: Chart
    webhooks: list[Webhook]
    proxy: str | None = None  # the session's proxy, its password masked
    now: datetime = EARLIEST  # when it was read (whether keys are past their expiry)
    sending: SendingState | None = None  # its pace and quotas, and where they stand

    @property
    def active_keys(self) -> int:
        return sum(1 for key in self.keys if key.is_usable_at(self.now))


@dataclass(frozen=True)
class SessionReads:
    """The reads of a session's page, built once for the dashboard and received by its
    handlers as the ``session_reads`` dependency."""

    app: SessionsApplication
    read_models: ReadModels
    uptime: UptimeView
    webhook_queries: WebhookQueries

    def timeline(self, row: SessionRow) -> list[HistoryEntry]:
        """The session's last events, newest first."""
        uuid = session_uuid(row.session_id)
        entries = session_history(self.app, uuid, max(0, row.version - TIMELINE), TIMELINE)
        return entries[::-1]

    def keys(self, session_id: str) -> list[KeyRow]:
        """The session's keys: those that work now first, then revoked or expired ones."""
        now = datetime.now(UTC)
        rows = self.read_models.keys_of(session_id)
        rows.sort(key=lambda key: (not key.is_usable_at(now), key.created_at, key.key_id))
        return rows

    def details(self, row: SessionRow) -> SessionDetails:
        now = datetime.now(UTC)
        begin, end = window(now)
        transitions = self.uptime.transitions(session_uuid(row.session_id), begin, end)
        endpoints = self.webhook_queries.endpoints_of(row.session_id)
        session = self.app.load(session_uuid(row.session_id))
        return SessionDetails(
            keys=self.keys(row.session_id),
            now=now,
            timeline=self.timeline(row),
            chart=chart(series(transitions, begin, end, BUCKETS["day"])),
            webhooks=[
                Webhook(
                    e,
                    self.webhook_queries.deliveries(
                        e["webhook_id"], status=None, before=None, limit=DELIVERIES
                    ),
                )
                for e in endpoints
            ],
            proxy=session.proxy_url,
            sending=self.app.sending_state(session, now),
        )
