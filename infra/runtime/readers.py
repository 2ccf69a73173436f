"""What each reader process of an API process builds once, to run expensive reads
(`api.expensive`, `api.reads`) with objects of its own: one database connection each, opened
at its first read and closed again when it has been unused for a while, so that an idle
server holds no reader connection (its connection budget, idle, is unchanged)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from api.expensive import ReaderProcesses
from api.reads import OwnReaders
from application.sessions import SessionsApplication
from infra.postgres.generations import ActiveUptimeView, ActiveViews
from infra.postgres.snapshots import PostgresStatusSnapshots
from infra.postgres.uptime import PostgresUptimeView
from infra.postgres.webhooks import WebhookStore
from infra.runtime.processes import die_with_parent
from infra.settings import Settings, eventsourcing_env
from projections.uptime import Transition, UptimeProjection


class FollowingUptimeView(ActiveUptimeView):
    """The uptime view of the active generation, looked up before each read (a reader process
    is not told of switches: a rebuilt view is read from the first read after its switch)."""

    def transitions(self, session_id: UUID, start: datetime, end: datetime) -> list[Transition]:
        self.views.resolve()
        return super().transitions(session_id, start, end)


#: Seconds a reader keeps its connection unused before closing it: an idle server holds none.
READER_IDLE = 30


@dataclass(frozen=True)
class ReaderRecipe:
    """How a reader process builds its objects (picklable: it travels to the process)."""

    settings: Settings
    database_url: str
    parent_pid: int
    label: str

    def __call__(self) -> OwnReaders:
        die_with_parent(self.parent_pid)  # no reader outlives its API process
        app = SessionsApplication(
            env={
                **eventsourcing_env(
                    self.database_url,
                    pool_size=0,  # connected at its first read, not while the server is idle
                    max_overflow=1,
                    cipher_key=self.settings.cipher_key,
                    application_name=f"sessiond-{self.label}:reader",
                ),
                "CREATE_TABLE": "n",
                # ... and closed again once unused for READER_IDLE (within twice that).
                "POSTGRES_MAX_IDLE": str(READER_IDLE),
            }
        )
        datastore = app.factory.datastore  # type: ignore[attr-defined]
        views = ActiveViews(datastore, {UptimeProjection.name: PostgresUptimeView})
        return OwnReaders(
            app=app,
            uptime=FollowingUptimeView(views, UptimeProjection.name),
            webhook_queries=WebhookStore(datastore),
            status_snapshots=PostgresStatusSnapshots(datastore),
            replay_max_events=self.settings.replay_max_events,
            default_requests_per_minute=self.settings.default_requests_per_minute,
        )


def reader_processes(settings: Settings, database_url: str, label: str) -> ReaderProcesses:
    """The API process's reader processes (SESSIOND_EXPENSIVE_READERS of them)."""
    recipe = ReaderRecipe(settings, database_url, os.getpid(), label)
    return ReaderProcesses(settings.expensive_readers, recipe, settings.reader_niceness)
