"""What a session's page reads besides its live row: keys, timeline, uptime, webhooks.

Blocking reads through the same query ports as the JSON API, run in one worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from api.context import ApiContext
from api.dashboard.chart import Chart, chart, window
from application.sessions import SendingState
from domain.values import session_uuid
from projections.history import HistoryEntry, session_history
from projections.keys import KeyRow
from projections.status import SessionRow
from projections.uptime import BUCKETS, series

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


def timeline(ctx: ApiContext, row: SessionRow) -> list[HistoryEntry]:
    """The session's last events, newest first."""
    uuid = session_uuid(row.session_id)
    entries = session_history(ctx.app, uuid, max(0, row.version - TIMELINE), TIMELINE)
    return entries[::-1]


def keys(ctx: ApiContext, session_id: str) -> list[KeyRow]:
    """The session's keys: those that work now first, then revoked or expired ones."""
    now = datetime.now(UTC)
    rows = ctx.read_models.keys_of(session_id)
    rows.sort(key=lambda key: (not key.is_usable_at(now), key.created_at, key.key_id))
    return rows


def details(ctx: ApiContext, row: SessionRow) -> SessionDetails:
    now = datetime.now(UTC)
    begin, end = window(now)
    transitions = ctx.uptime.transitions(session_uuid(row.session_id), begin, end)
    endpoints = ctx.webhook_queries.endpoints_of(row.session_id)
    session = ctx.app.load(session_uuid(row.session_id))
    return SessionDetails(
        keys=keys(ctx, row.session_id),
        now=now,
        timeline=timeline(ctx, row),
        chart=chart(series(transitions, begin, end, BUCKETS["day"])),
        webhooks=[
            Webhook(
                e,
                ctx.webhook_queries.deliveries(
                    e["webhook_id"], status=None, before=None, limit=DELIVERIES
                ),
            )
            for e in endpoints
        ],
        proxy=session.proxy_url,
        sending=ctx.app.sending_state(session, now),
    )
