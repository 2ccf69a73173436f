"""The composition root: the one place that builds adapters and wires the roles together.

Roles: ``api`` (HTTP, reads the in-process copy of the views), ``projector`` (runs the view
projections, one process at a time per projection) and ``worker`` (runs the gateway: holds
sessions by lease and keeps their clients as desired). `sessiond serve` runs the first two in
its HTTP process and the worker in a child process that it restarts if it dies.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.projection import Projection
from litestar import Litestar

from api.app import create_app
from api.context import ApiContext
from api.expensive import ExpensiveReads, keep_the_loop_responsive
from api.ratelimit import FailureThrottle, SessionRateLimiter
from application.alerts import AlertEvaluator
from application.keys import ADMIN_KEY_KIND, generate_key, hash_key
from application.ports import WhatsAppGateway
from application.sessions import SessionCaps, SessionsApplication
from domain.policy import ReconnectPolicy
from infra.postgres.alerts import PostgresAlertSources
from infra.postgres.audit import AuditStore
from infra.postgres.gateway import PostgresDeviceSet, PostgresGatewayView
from infra.postgres.gatewaycalls import PostgresGatewayCalls
from infra.postgres.generations import ActiveMessagesView, ActiveUptimeView, ActiveViews
from infra.postgres.keys import PostgresApiKeyView
from infra.postgres.listener import ProcessListener
from infra.postgres.livefeed import PostgresLiveFeed
from infra.postgres.messages import PostgresMessagesView
from infra.postgres.recorder import PollingApplicationRecorder, event_texts
from infra.postgres.revocations import TABLE as REVOCATIONS_TABLE
from infra.postgres.revocations import backfill
from infra.postgres.schema import apply_migrations, schema_lock
from infra.postgres.snapshots import PostgresStatusSnapshots
from infra.postgres.status import PostgresSessionStatusView
from infra.postgres.uptime import PostgresUptimeView
from infra.postgres.viewcache import CachedReadModels
from infra.postgres.views import BatchingView
from infra.postgres.webhooks import PostgresWebhookView, WebhookStore
from infra.runtime.audit import AuditKey, Checkpointer, load_audit_key, verify_tail
from infra.runtime.keyexpiry import KeyExpiry
from infra.runtime.readers import reader_processes
from infra.runtime.supervisor import ProjectionSupervisor
from infra.runtime.worker import GatewayWorker, WorkerTimings
from infra.settings import Settings, eventsourcing_env
from infra.webhooks.client import registration_refusal, webhook_client
from infra.webhooks.dispatcher import DispatcherSettings, WebhookDispatcher
from infra.whatsapp.simulator import SimulatorGateway
from projections.gateway import GatewayProjection
from projections.keys import ApiKeyProjection
from projections.messages import MessagesProjection
from projections.status import SessionStatusProjection
from projections.uptime import UptimeProjection
from projections.webhooks import WebhookProjection

log = logging.getLogger(__name__)
ROLES = frozenset({"api", "projector", "worker"})
#: How long `Container.close` takes at most: a role asked to stop stops in 10 s, start to end.
STOP_TIMEOUT = 6.0


#: Every projection with the class of its PostgreSQL view, by projection name.
PROJECTIONS: dict[str, tuple[type[Projection[Any]], type[BatchingView]]] = {
    SessionStatusProjection.name: (SessionStatusProjection, PostgresSessionStatusView),
    ApiKeyProjection.name: (ApiKeyProjection, PostgresApiKeyView),
    GatewayProjection.name: (GatewayProjection, PostgresGatewayView),
    UptimeProjection.name: (UptimeProjection, PostgresUptimeView),
    MessagesProjection.name: (MessagesProjection, PostgresMessagesView),
    WebhookProjection.name: (WebhookProjection, PostgresWebhookView),
}
#: The views `sessiond projections rebuild` can rebuild, and why the others cannot.
REBUILDABLE = frozenset(
    {
        SessionStatusProjection.name,
        ApiKeyProjection.name,
        UptimeProjection.name,
        MessagesProjection.name,
    }
)
NOT_REBUILDABLE = {
    WebhookProjection.name: (
        "it sends: a copy built from the log would enqueue every delivery again, and its "
        "deliveries and attempts are a record of what was sent, not something derived"
    ),
    GatewayProjection.name: (
        "workers change its tables in place (deadlines claimed and pushed back, finished ones "
        "deleted) and query them by their fixed names, so a copy built from the log would "
        "neither equal it nor be read"
    ),
}


def per_process_warning(processes: int) -> str:
    return (
        f"{processes} API processes share this database without SESSIOND_REDIS_URL: each "
        "counts rate limits and failed authentications on its own (a client spread over "
        "them gets up to that many times its budget); set SESSIOND_REDIS_URL to share them"
    )


#: The most connections each process's pool opens, by the roles it runs: with its listener,
#: `api` 4, `projector` 8, `worker` 6 (plus the device store's own pool), and `serve` 12 in
#: all (api and projector in its HTTP process: 6; its child worker: 6); an API process's
#: reader processes add one each while they read (2 by default: `infra.runtime.readers`).
#: Tested by tests/e2e/test_connection_budget.py.
POOL_MAX = {
    frozenset({"api"}): 3,
    frozenset({"projector"}): 7,
    frozenset({"worker"}): 5,
    frozenset({"api", "projector"}): 5,
}
#: A process with other roles together (tests, benchmarks).
POOL_MAX_OTHERWISE = 10


def process_label(roles: frozenset[str]) -> str:
    """How a process names its connections: ``sessiond-<label>:pool``, ``…:listener``."""
    if roles == frozenset({"api", "projector"}):
        return "serve"
    return "+".join(sorted(roles)) or "command"


@dataclass
class Container:
    settings: Settings
    database_url: str
    roles: frozenset[str]
    env: dict[str, str] = field(init=False)
    #: The process's session-bound connection (LISTEN, the projections' locks); a worker
    #: alone has none: its identity connection listens for it.
    listener: ProcessListener | None = field(default=None, init=False)
    app: SessionsApplication = field(init=False)
    views: ActiveViews = field(init=False)
    supervisors: list[ProjectionSupervisor] = field(default_factory=list)
    gateway: WhatsAppGateway | None = None
    read_models: CachedReadModels | None = None
    worker: GatewayWorker | None = None
    dispatcher: WebhookDispatcher | None = None
    checkpointer: Checkpointer | None = None
    runner_env: dict[str, str] = field(init=False)
    _audit_key: AuditKey | None = field(default=None, init=False)

    @property
    def direct_url(self) -> str:
        """Where the connections that need a session of their own go (see the README)."""
        return self.settings.direct_database_url or self.database_url

    def __post_init__(self) -> None:
        PollingApplicationRecorder.poll_interval = self.settings.poll_interval
        label = process_label(self.roles)
        # No statement is prepared (see `eventsourcing_env`): behind PgBouncer in transaction
        # mode too, each transaction may run on another server connection.
        self.env = eventsourcing_env(self.database_url, cipher_key=self.settings.cipher_key)
        pool_max = self.settings.pool_max or POOL_MAX.get(self.roles, POOL_MAX_OTHERWISE)
        # The schema is brought up to date here, once, under a lock: processes starting
        # together take turns (infra/postgres/schema.py). No table is created anywhere else.
        with schema_lock(self.direct_url, application_name=f"sessiond-{label}:boot") as conn:
            found = conn.execute(
                "SELECT to_regclass('sessiond_events') IS NOT NULL AND to_regclass(%s) IS NULL",
                (REVOCATIONS_TABLE,),
            )
            log_without_revocations = bool((found.fetchone() or (False,))[0])
            apply_migrations(self.direct_url, application_name=f"sessiond-{label}:boot")
            self.app = SessionsApplication(
                # The process's one pool: every query of every role of the process.
                env=eventsourcing_env(
                    self.database_url,
                    pool_size=1,
                    max_overflow=pool_max - 1,
                    cipher_key=self.settings.cipher_key,
                    application_name=f"sessiond-{label}:pool",
                ),
                policy=ReconnectPolicy(base=self.settings.retry_base, cap=self.settings.retry_cap),
                caps=SessionCaps(
                    keys=self.settings.max_keys_per_session,
                    webhooks=self.settings.max_webhooks_per_session,
                ),
                sending=self.settings.sending_defaults(),
            )
            # The views read here share the application's connection pool: PostgreSQL's
            # connections are counted across every process. Each is the active generation's
            # (with the tables its runner uses); API processes follow later switches.
            datastore = self.app.factory.datastore  # type: ignore[attr-defined]
            self.views = ActiveViews(datastore, {n: v for n, (_, v) in PROJECTIONS.items()})
            self.views.resolve()
            # Messages a session no longer remembers are looked up in the active view.
            self.app.message_index = ActiveMessagesView(self.views, MessagesProjection.name)
            if log_without_revocations:  # a log recorded before revocations were kept apart
                written = backfill(
                    self.recorder.revocations,
                    self.recorder,
                    datastore,
                    self.app.mapper.to_domain_event,
                )
                if written:
                    log.info("wrote the %d revocations recorded before this version", written)
        self.runner_env = self.env
        if self.roles & {"api", "projector"}:
            self.listener = ProcessListener(self.direct_url, f"sessiond-{label}:listener")
            self.recorder.listener = self.listener  # the log's reader listens there too
            self.listener.start()

    @property
    def recorder(self) -> PollingApplicationRecorder:
        recorder = self.app.recorder
        assert isinstance(recorder, PollingApplicationRecorder)
        return recorder

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

    # -- the audit chain ----------------------------------------------------------------

    @property
    def audit_store(self) -> AuditStore:
        return AuditStore(self.app.factory.datastore)  # type: ignore[attr-defined]

    def audit_key(self) -> AuditKey:
        """The configured audit key, or the stored one (generated and shown once)."""
        if self._audit_key is None:
            self._audit_key = load_audit_key(self.audit_store, self.settings.audit_signing_key)
        return self._audit_key

    def start_checkpoints(self) -> None:
        """Sign the chain's head periodically (in the projector role)."""
        self.checkpointer = Checkpointer(
            self.audit_store,
            self.audit_key(),
            every_events=self.settings.audit_checkpoint_events,
            interval=self.settings.audit_checkpoint_interval,
            tick=min(1.0, self.settings.audit_checkpoint_interval),
        )
        self.checkpointer.start()

    # -- roles --------------------------------------------------------------------------

    def start_projector(self) -> None:
        for projection, view in PROJECTIONS.values():
            supervisor = ProjectionSupervisor(
                projection,
                view,
                self.runner_env,
                self.direct_url,
                check_interval=self.settings.poll_interval,
                app=self.app,
                listener=self.listener,
            )
            supervisor.start()
            self.supervisors.append(supervisor)

    def start_worker(self) -> None:
        gateway = self._build_gateway()
        self.gateway = gateway
        timings = WorkerTimings(
            lease_ttl=self.settings.lease_ttl,
            tick=self.settings.worker_tick,
            deadline_tick=min(0.5, self.settings.worker_tick),
            send_interval=self.settings.send_interval,
            silence_after=self.settings.silence_after,
            silence_check_timeout=self.settings.silence_check_timeout,
            claim_batch=self.settings.restore_batch,
            move_batch=self.settings.move_batch,
        )

        # Key expiries are recorded by workers: the keys are refused from their expiry on
        # by every API process anyway (it compares the time), this records the fact.
        def due(now: datetime, limit: int) -> list[tuple[str, str]]:
            return self.views.of(PostgresApiKeyView).due_expiries(now, limit)  # active now

        expiry = KeyExpiry(self.app, due)
        # Alert rules are evaluated by workers (any number at once: each firing is saved at
        # its rule's next version, so a decision made twice is recorded once).
        datastore = self.app.factory.datastore  # type: ignore[attr-defined]
        alerts = AlertEvaluator(self.app, PostgresAlertSources(self.app, self.views, datastore))
        ticks = (
            (expiry.key_expiry_tick, timings.tick),
            (alerts.tick, self.settings.alerts_interval),
        )
        self.worker = GatewayWorker(self.app, gateway, self.direct_url, timings, ticks=ticks)
        self._build_dispatcher(self.worker)
        self.worker.start()
        assert self.dispatcher is not None
        self.dispatcher.start()

    def _build_dispatcher(self, worker: GatewayWorker) -> None:
        """Webhook delivery runs in the worker role (any number of workers share it); it
        listens on the worker's connection."""
        datastore = self.app.factory.datastore  # type: ignore[attr-defined]
        self.dispatcher = WebhookDispatcher(
            self.app,
            WebhookStore(datastore),
            self.database_url,
            DispatcherSettings(
                allow_private=self.settings.webhooks_allow_private,
                concurrency=self.settings.webhook_concurrency,
                max_share=self.settings.webhook_max_share,
                retry_scale=self.settings.webhook_retry_scale,
                hold=self.settings.webhook_claim_hold,
                read_timeout=self.settings.webhook_timeout,
                poll=min(0.5, self.settings.poll_interval),
            ),
            client_factory=lambda s: webhook_client(
                allow_private=s.allow_private,
                private_only=self.settings.webhooks_private_only,
                connect_timeout=s.connect_timeout,
                read_timeout=s.read_timeout,
                max_connections=s.concurrency,
            ),
            listen=worker.listen,
        )

    def _build_gateway(self) -> WhatsAppGateway:
        if self.settings.gateway == "neonize":
            # Imported here: only a worker with the real gateway loads the Go library.
            from infra.whatsapp.devicestore import (  # noqa: PLC0415
                DeviceStorePool,
                prepare_store,
                store_dsn_from_url,
            )
            from infra.whatsapp.neonize import NeonizeGateway  # noqa: PLC0415

            # The device store through a private PgBouncer: a fixed number of connections
            # however many clients (and Go pools) neonize opens.
            pool = DeviceStorePool(
                self.direct_url,  # not through a pooler of the operator's: it is one
                size=self.settings.device_store_connections,
                binary=self.settings.pgbouncer,
            )
            pool.start()
            try:
                store_dsn = store_dsn_from_url(pool.conninfo(), pooled=True)
                prepare_store(self.direct_url, store_dsn)  # once, before any client
            except BaseException:
                pool.close()
                raise
            # WhatsApp sets the real QR lifetimes (60 s, then 20 s): the QR settings are for
            # the simulator only, or the expiry shown would be wrong.
            return NeonizeGateway(store_dsn, pool=pool)
        datastore = self.app.factory.datastore  # type: ignore[attr-defined]
        return SimulatorGateway(
            first_timeout=self.settings.qr_first_timeout,
            next_timeout=self.settings.qr_next_timeout,
            max_codes=self.settings.qr_max_codes,
            devices=PostgresDeviceSet(datastore),
            phone_delay=self.settings.simulator_phone_delay,
        )

    def api_context(self, *, reader_processes_wanted: bool = False) -> ApiContext:
        """What the API needs; with `reader_processes_wanted` (a server process), its expensive
        reads run in reader processes (`infra.readers`), else on threads of this process."""
        self.read_models = CachedReadModels(
            self.direct_url,
            self.views,
            self.recorder.revocations,
            poll_interval=self.settings.poll_interval,
            stale_after=self.settings.stale_after,
            listener=self.listener,
        )
        audit_key = self.audit_key()
        storage = self.settings.redis_url or "memory://"
        limiter = SessionRateLimiter(storage)
        datastore = self.app.factory.datastore  # type: ignore[attr-defined]
        read_models = self.read_models
        told: list[int] = []

        async def readiness_warnings() -> list[str]:
            """Without Redis, rate limits and failure counts are this process's own: say so
            once several API processes share the database (and log it the first time)."""
            if self.settings.redis_url is not None:
                return []
            try:
                processes = await asyncio.to_thread(read_models.live_instances)
            except Exception:
                return []  # the database check says what is wrong
            if processes <= 1:
                return []
            warning = per_process_warning(processes)
            if not told:
                told.append(processes)
                log.warning("%s", warning)
            return [warning]

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
            gateway_calls=PostgresGatewayCalls(datastore, self.settings.gateway_call_timeout),
            simulator=self.settings.gateway == "simulator",
            uptime=ActiveUptimeView(self.views, UptimeProjection.name),
            messages=ActiveMessagesView(self.views, MessagesProjection.name),
            message_texts=self.message_texts,
            webhook_queries=WebhookStore(datastore),
            check_webhook_url=lambda url: registration_refusal(
                url, allow_private=self.settings.webhooks_allow_private
            ),
            projection_lags=self.projection_lags,
            readiness=readiness,
            readiness_warnings=readiness_warnings,
            failure_throttle=FailureThrottle(limiter, self.settings.auth_failure_limit),
            trusted_proxies=self.settings.trusted_proxies,
            status_snapshots=PostgresStatusSnapshots(datastore),
            replay_max_events=self.settings.replay_max_events,
            live_feed=PostgresLiveFeed(self.app, capacity=self.settings.stream_buffer),
            stream_heartbeat=self.settings.stream_heartbeat,
            silence_after=self.settings.silence_after,
            max_streams_per_session=self.settings.max_streams_per_session,
            expensive_reads=ExpensiveReads(
                self.settings.expensive_readers,
                self.settings.expensive_reads_per_session,
                reader_processes(self.settings, self.database_url, process_label(self.roles))
                if reader_processes_wanted
                else None,
                refusal_pause=self.settings.expensive_refusal_pause,
            ),
            view_position=lambda: read_models.position,
            dashboard_secret=self.settings.dashboard_secret,
            dashboard_secure_cookie=self.settings.dashboard_secure_cookie,
            audit_public_key=audit_key.public,
            audit_verify=lambda: verify_tail(self.audit_store, audit_key.public),
        )

    def projection_lags(self) -> dict[str, int]:
        """How many events each view has yet to process (by notification id)."""
        head = self.app.recorder.max_notification_id() or 0
        return {
            name: max(0, head - (self.views.get(name).max_tracking_id(self.app.name) or 0))
            for name in self.views.names()
        }

    def message_texts(self, session_id: UUID, versions: Collection[int]) -> dict[int, str]:
        """The texts of a session's messages, from the events that carry them."""
        recorder = self.app.recorder
        assert isinstance(recorder, PostgresApplicationRecorder)
        return event_texts(recorder, self.app.mapper.to_domain_event, session_id, versions)

    def start(self) -> None:
        if "projector" in self.roles:
            self.start_projector()
            self.start_checkpoints()
        if "worker" in self.roles:
            self.start_worker()

    def close(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every role of this process in `timeout` seconds at most, whatever the
        database does: each is asked to stop at once, then waited for in the time left; what
        still waits for a connection after that is cut short by closing the pool."""
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        if self.dispatcher is not None:
            self.dispatcher.request_stop(timeout / 2)
        if self.worker is not None:
            self.worker.request_stop()
        for supervisor in self.supervisors:
            supervisor.request_stop()
        if self.read_models is not None:
            self.read_models.request_stop()
        if self.checkpointer is not None:
            self.checkpointer.request_stop()
        if self.worker is not None:  # first: its clients stop, and its leases go to others
            self.worker.close(left())  # also closes the gateway
        if self.dispatcher is not None:
            self.dispatcher.close(left())
        for supervisor in self.supervisors:
            supervisor.stop(left())
        if self.read_models is not None:
            self.read_models.stop(left())
        if self.checkpointer is not None:
            self.checkpointer.stop(left())
        if self.listener is not None:  # after the supervisors: their locks go with it
            self.listener.stop(min(2.0, left()))
        datastore = self.app.factory.datastore  # type: ignore[attr-defined]
        datastore.pool.close(timeout=min(1.0, left()))  # fails every wait still going on
        self.app.close()

    def create_api(self, *, freeze_gc: bool = False) -> Litestar:
        """The API app; its lifespan starts the other roles of this process and the views.

        `freeze_gc` (for a server process, which has one app for its whole life) moves what
        start-up built out of the garbage collector's sight, so requests do not pay for it;
        such a process also runs its expensive reads in reader processes of their own.
        """
        self.start()
        if freeze_gc:  # a server process: its status reads must not queue behind busy threads
            keep_the_loop_responsive()
        ctx = self.api_context(reader_processes_wanted=freeze_gc)
        read_models = self.read_models
        assert read_models is not None

        @asynccontextmanager
        async def lifespan(_: Litestar) -> AsyncIterator[None]:
            await asyncio.to_thread(read_models.start)
            ctx.expensive_reads.start()  # reader processes get ready meanwhile
            await ctx.readiness_warnings()  # logs it at start-up when it applies
            if freeze_gc:
                gc.collect()
                gc.freeze()
            try:
                yield
            finally:
                await asyncio.to_thread(self.close)

        return create_app(ctx, lifespan=[lifespan])
