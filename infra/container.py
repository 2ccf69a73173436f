"""The composition root: the one place that builds adapters and wires the roles together.

Roles: ``api`` (HTTP, reads the in-process copy of the views), ``projector`` (runs the view
projections, one process at a time per projection) and ``worker`` (runs the gateway and the
driver that turns decisions into gateway calls). `sessiond serve` runs all three.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from litestar import Litestar

from api.app import create_app
from api.context import ApiContext
from api.ratelimit import SessionRateLimiter
from application.gateway import GatewayDriver, RecordingGatewayEvents, restore_sessions
from application.keys import ADMIN_KEY_KIND, generate_key, hash_key
from application.ports import PhoneSimulator, WhatsAppGateway
from application.sessions import SessionsApplication
from domain.values import session_uuid
from infra.pgrecorder import PollingApplicationRecorder
from infra.pgviews import PostgresApiKeyView, PostgresSessionStatusView
from infra.readmodels import INSTANCES_DDL, INSTANCES_MIGRATION, CachedReadModels
from infra.settings import Settings, eventsourcing_env
from infra.simulator import SimulatorGateway
from infra.supervisor import ProjectionSupervisor
from projections.keys import ApiKeyProjection
from projections.status import SessionStatusProjection

log = logging.getLogger(__name__)
ROLES = frozenset({"api", "projector", "worker"})
ADMIN_DDL = (
    "CREATE TABLE IF NOT EXISTS sessiond_admin (id int PRIMARY KEY CHECK (id = 1), "
    "key_hash text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
)


def _shared_view(datastore: PostgresDatastore, name: str, view_class: type[Any]) -> Any:
    """The view of projection `name` on an existing pool, with the tables its runner uses."""
    view = view_class(datastore=datastore, tracking_table_name=f"{name}_tracking")
    view.create_table()
    return view


@dataclass
class Container:
    settings: Settings
    database_url: str
    roles: frozenset[str]
    env: dict[str, str] = field(init=False)
    app: SessionsApplication = field(init=False)
    status_view: PostgresSessionStatusView = field(init=False)
    key_view: PostgresApiKeyView = field(init=False)
    supervisors: list[ProjectionSupervisor] = field(default_factory=list)
    gateway: WhatsAppGateway | None = None
    read_models: CachedReadModels | None = None
    driver_tracking: PostgresTrackingRecorder = field(init=False)
    runner_env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        PollingApplicationRecorder.poll_interval = self.settings.poll_interval
        self.env = eventsourcing_env(self.database_url)
        # Tables are created here, once, under a lock: processes starting together must not
        # race on CREATE TABLE. Everything built later is told not to create tables.
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(hashtext('sessiond:schema'))")
            self.app = SessionsApplication(
                env=eventsourcing_env(self.database_url, pool_size=2, max_overflow=10)
            )
            # The views read here share the application's connection pool: PostgreSQL's
            # connections are counted across every process.
            datastore = self.app.factory.datastore  # type: ignore[attr-defined]
            self.status_view = _shared_view(
                datastore, SessionStatusProjection.name, PostgresSessionStatusView
            )
            self.key_view = _shared_view(datastore, ApiKeyProjection.name, PostgresApiKeyView)
            self.driver_tracking = _shared_view(
                datastore, GatewayDriver.name, PostgresTrackingRecorder
            )
            with datastore.transaction(commit=True) as curs:
                curs.execute(ADMIN_DDL)
                curs.execute(INSTANCES_DDL)
                curs.execute(INSTANCES_MIGRATION)
        self.runner_env = {**self.env, "CREATE_TABLE": "n"}

    # -- admin key ----------------------------------------------------------------------

    def admin_key_hash(self) -> str:
        """The configured admin key's hash, or the stored one (generated and shown once)."""
        if self.settings.admin_key:
            return hash_key(self.settings.admin_key)
        new = generate_key(ADMIN_KEY_KIND)
        with self.app.factory.datastore.transaction(commit=True) as curs:  # type: ignore[attr-defined]
            curs.execute(
                "INSERT INTO sessiond_admin (id, key_hash) VALUES (1, %s) "
                "ON CONFLICT (id) DO NOTHING RETURNING key_hash",
                (new.key_hash,),
            )
            inserted = curs.fetchone() is not None
            curs.execute("SELECT key_hash FROM sessiond_admin WHERE id = 1")
            row = curs.fetchone()
        assert row is not None
        if inserted:
            print(
                "sessiond: generated the admin key; it is shown only now, store it:\n"
                f"  SESSIOND_ADMIN_KEY={new.key}",
                file=sys.stderr,
                flush=True,
            )
        return str(row["key_hash"])

    # -- roles --------------------------------------------------------------------------

    def start_projector(self) -> None:
        for projection, view in (
            (SessionStatusProjection, PostgresSessionStatusView),
            (ApiKeyProjection, PostgresApiKeyView),
        ):
            supervisor = ProjectionSupervisor(
                projection,
                view,
                self.runner_env,
                self.database_url,
                check_interval=self.settings.poll_interval,
            )
            supervisor.start()
            self.supervisors.append(supervisor)

    def start_worker(self) -> None:
        gateway = self._build_gateway()
        gateway.bind(RecordingGatewayEvents(self.app))
        self.gateway = gateway
        driver = GatewayDriver.bound_to(gateway)
        tracking = self.driver_tracking

        def on_elected() -> None:
            # A new side-effecting projector starts at the head of the log: history is
            # never replayed into the gateway by accident.
            if tracking.max_tracking_id(self.app.name) is None:
                head = self.app.recorder.max_notification_id()
                if head:
                    tracking.insert_tracking(Tracking(self.app.name, head))
            start = tracking.max_tracking_id(self.app.name) or 0
            restore_sessions(self.app, gateway, self._sessions_to_restore(start))

        def on_demoted() -> None:
            # Another process may take the driver over: it must be the only one to run clients.
            gateway.stop_all()

        supervisor = ProjectionSupervisor(
            driver,
            PostgresTrackingRecorder,
            self.runner_env,
            self.database_url,
            check_interval=self.settings.poll_interval,
            on_elected=on_elected,
            on_demoted=on_demoted,
        )
        supervisor.start()
        self.supervisors.append(supervisor)

    def _sessions_to_restore(self, start: int) -> list[UUID]:
        """Every session that may have to run as of position `start`, where the driver starts.

        The status view's running sessions, plus every session with an event the view has not
        processed yet (up to `start`): `restore_sessions` then loads each one and decides from
        its recorded state, so a lagging view can neither hide a session nor start one.
        """
        candidates = {
            session_uuid(row.session_id)
            for row in self.status_view.all_sessions()
            if row.desired == "running"
        }
        seen = self.status_view.max_tracking_id(self.app.name) or 0
        while seen < start:
            page = self.app.recorder.select_notifications(
                start=seen, limit=1000, stop=start, inclusive_of_start=False
            )
            if not page:
                break
            candidates.update(UUID(str(notification.originator_id)) for notification in page)
            seen = page[-1].id
        return sorted(candidates)

    def _build_gateway(self) -> WhatsAppGateway:
        return SimulatorGateway(
            first_timeout=self.settings.qr_first_timeout,
            next_timeout=self.settings.qr_next_timeout,
            max_codes=self.settings.qr_max_codes,
        )

    def api_context(self) -> ApiContext:
        self.read_models = CachedReadModels(
            self.database_url,
            self.status_view,
            self.key_view,
            poll_interval=self.settings.poll_interval,
            stale_after=self.settings.stale_after,
        )
        storage = self.settings.redis_url or "memory://"
        limiter = SessionRateLimiter(storage)
        simulator = self.gateway if isinstance(self.gateway, PhoneSimulator) else None
        read_models = self.read_models

        async def readiness() -> dict[str, str]:
            checks = {}
            try:
                await asyncio.to_thread(self.app.recorder.max_notification_id)
                checks["database"] = "ok"
            except Exception as error:
                checks["database"] = f"failing: {type(error).__name__}"
            checks["views"] = "ok" if read_models.is_fresh() else "stale"
            try:
                await limiter.check()
                checks["rateLimits"] = "ok"
            except Exception as error:
                checks["rateLimits"] = f"failing: {type(error).__name__}"
            return checks

        return ApiContext(
            app=self.app,
            read_models=read_models,
            limiter=limiter,
            admin_key_hash=self.admin_key_hash(),
            default_requests_per_minute=self.settings.default_requests_per_minute,
            write_wait_timeout=self.settings.write_wait_timeout,
            max_body_bytes=self.settings.max_body_bytes,
            simulator=simulator,
            readiness=readiness,
        )

    def start(self) -> None:
        if "projector" in self.roles:
            self.start_projector()
        if "worker" in self.roles:
            self.start_worker()

    def close(self) -> None:
        for supervisor in self.supervisors:
            supervisor.stop()
        if self.gateway is not None:
            self.gateway.close()
        if self.read_models is not None:
            self.read_models.stop()
        self.app.close()

    def create_api(self, *, freeze_gc: bool = False) -> Litestar:
        """The API app; its lifespan starts the other roles of this process and the views.

        `freeze_gc` (for a server process, which has one app for its whole life) moves what
        start-up built out of the garbage collector's sight, so requests do not pay for it.
        """
        self.start()
        ctx = self.api_context()
        read_models = self.read_models
        assert read_models is not None

        @asynccontextmanager
        async def lifespan(_: Litestar) -> AsyncIterator[None]:
            await asyncio.to_thread(read_models.start)
            if freeze_gc:
                gc.collect()
                gc.freeze()
            try:
                yield
            finally:
                await asyncio.to_thread(self.close)

        return create_app(ctx, lifespan=[lifespan])
