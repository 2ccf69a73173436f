"""What the alert rules look at, read from the views on PostgreSQL: the sessions' status
rows, their failed messages, their quotas (from their events) and the webhook endpoints."""

from __future__ import annotations

import logging
from datetime import datetime

from eventsourcing.postgres import PostgresDatastore

from application.alerting import EndpointFacts, Facts, SessionFacts, quota_percent
from application.alerts import AlertSources
from application.errors import ApplicationError
from application.sessions import SessionsApplication
from domain.values import Status
from infra.postgres.connect import fetch_all
from infra.postgres.generations import ActiveViews
from infra.postgres.messages import PostgresMessagesView
from infra.postgres.status import PostgresSessionStatusView
from projections.status import SessionRow, linked_since

log = logging.getLogger(__name__)

#: Each endpoint with its failed attempts in a row: the attempts since it started failing
#: (a success clears `failing_since`, so every attempt since then failed).
ENDPOINTS = """
SELECT e.webhook_id, e.session_id, e.enabled, e.disabled_reason,
       CASE WHEN e.failing_since IS NULL THEN 0 ELSE (
           SELECT count(*) FROM sessiond_webhook_attempts a
           JOIN sessiond_webhook_deliveries d USING (delivery_id)
           WHERE d.webhook_id = e.webhook_id AND a.at >= e.failing_since) END AS failures
FROM sessiond_webhook_endpoints e ORDER BY e.webhook_id
"""


def session_facts(row: SessionRow) -> SessionFacts:
    down = row.down_since
    if down is None and row.status != Status.CONNECTED:  # a row written before `down_since`
        down = row.updated_at
    return SessionFacts(
        session_id=row.session_id,
        status=row.status,
        running=row.desired == "running",
        linked=linked_since(row) is not None,
        down_since=down,
        restriction_kind=row.restriction_kind,
        silent=row.silent_since is not None,
        queue_depth=row.queue_depth,
    )


class PostgresAlertSources(AlertSources):
    def __init__(
        self, app: SessionsApplication, views: ActiveViews, datastore: PostgresDatastore
    ) -> None:
        self.app = app
        self.views = views
        self.datastore = datastore

    def facts(self, now: datetime) -> Facts:
        rows = self.views.of(PostgresSessionStatusView).all_sessions()
        return Facts(
            sessions=[session_facts(r) for r in rows if not r.is_deleted],
            endpoints=self._endpoints(),
            failed_since=self.views.of(PostgresMessagesView).failed_since,
            quota_left=lambda session_id: self._quota_left(session_id, now),
        )

    def _endpoints(self) -> list[EndpointFacts]:
        rows = fetch_all(self.datastore, ENDPOINTS)
        return [
            EndpointFacts(
                webhook_id=r["webhook_id"],
                session_id=r["session_id"],
                enabled=r["enabled"],
                disabled_reason=r["disabled_reason"],
                consecutive_failures=int(r["failures"]),
            )
            for r in rows
        ]

    def _quota_left(self, session_id: str, now: datetime) -> float | None:
        """From the session's recorded sends (as the quotas themselves are counted)."""
        try:
            state = self.app.sending_state(self.app.get_session(session_id), now)
        except ApplicationError:  # deleted meanwhile
            return None
        s, q = state.settings, state.quota
        return quota_percent(s.per_hour, q.remaining_hour, s.per_day, q.remaining_day)
