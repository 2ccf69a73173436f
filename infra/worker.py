"""The gateway worker: owns sessions through leases and keeps their clients as desired.

Each worker process has an identity, a connection named ``sessiond-worker:<id>``: while it
is open the worker is alive. Periodic ticks (APScheduler) do the rest:

- **leases**: renew what it holds (clients of sessions it no longer holds are stopped), and
  claim sessions meant to run that no live worker holds, up to its fair share
  (⌈running sessions / live workers⌉) and at most `claim_batch` per tick, so that a restart
  of many sessions is staggered;
- **reconcile** (also woken at once by ``NOTIFY sessiond_gateway``): start what an operator
  (re)started or what was just taken over (decided from the session's events), stop what was
  stopped;
- **deadlines**: run due retries, expire QR codes the gateway never reported, log deleted
  sessions out — claimed with ``FOR UPDATE SKIP LOCKED``, so any number of workers is safe;
- **requests**: calls that must run where the client lives (pairing codes, the simulator).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from apscheduler.schedulers.background import BackgroundScheduler

from application.errors import ApplicationError, GatewayFailed, SessionNotFound
from application.gateway import RecordingGatewayEvents, plan_start
from application.ports import GatewayEvents, InboundMessage, PhoneSimulator, WhatsAppGateway
from application.sessions import SessionsApplication
from domain.errors import DomainError
from domain.values import DesiredState, Reason, Status
from infra.pggateway import GATEWAY_CHANNEL, REQUESTS_CHANNEL, WORKER_APP_PREFIX, WorkStore
from infra.sender import MessageSender
from projections.gateway import (
    LOGOUT,
    QR_EXPIRY,
    RETRY,
    SEND,
    START_CHECK,
    START_TIMEOUT,
    Deadline,
)

log = logging.getLogger(__name__)
# Every tick would otherwise log two lines at INFO.
logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
logging.getLogger("apscheduler.scheduler").setLevel(logging.WARNING)


#: A deadline that keeps failing is given up after this many claims (logged as an error).
MAX_DEADLINE_CLAIMS = 20


@dataclass(frozen=True)
class WorkerTimings:
    lease_ttl: float = 30.0
    tick: float = 1.0  # leases and the reconcile safety net
    deadline_tick: float = 0.5
    claim_batch: int = 50
    deadline_hold: float = 30.0
    send_interval: float = 1.0  # at least this long between two messages of a session


class FencedGatewayEvents(GatewayEvents):
    """`GatewayEvents` that drop the reports of sessions `holds` says are not ours."""

    def __init__(self, events: GatewayEvents, holds: Callable[[UUID], bool]) -> None:
        self.events = events
        self.holds = holds

    def _ours(self, session_id: UUID, what: str) -> bool:
        if self.holds(session_id):
            return True
        log.info("dropped a %s report for %s: this worker does not hold it", what, session_id)
        return False

    def qr_issued(
        self, session_id: UUID, code: str, expires_at: datetime, attempt: int, max_attempts: int
    ) -> int | None:
        if not self._ours(session_id, "QR code"):
            return None
        return self.events.qr_issued(session_id, code, expires_at, attempt, max_attempts)

    def qr_exhausted(self, session_id: UUID) -> int | None:
        return self.events.qr_exhausted(session_id) if self._ours(session_id, "QR") else None

    def connected(self, session_id: UUID, jid: str, push_name: str) -> int | None:
        if not self._ours(session_id, "connected"):
            return None
        return self.events.connected(session_id, jid, push_name)

    def disconnected(
        self,
        session_id: UUID,
        reason: str,
        detail: str = "",
        not_before: datetime | None = None,
    ) -> int | None:
        if not self._ours(session_id, "disconnected"):
            return None
        return self.events.disconnected(session_id, reason, detail, not_before)

    def keepalive(self, session_id: UUID, healthy: bool) -> int | None:
        if not self._ours(session_id, "keepalive"):
            return None
        return self.events.keepalive(session_id, healthy)

    # Messages and receipts are facts whoever reports them (a client being fenced may still
    # get one): they are recorded, never dropped; a repeat is recognised by WhatsApp's id.

    def message_received(self, session_id: UUID, message: InboundMessage) -> int | None:
        return self.events.message_received(session_id, message)

    def message_status(
        self, session_id: UUID, whatsapp_ids: list[str], status: str, at: datetime
    ) -> int | None:
        return self.events.message_status(session_id, whatsapp_ids, status, at)


class GatewayWorker:
    def __init__(
        self,
        app: SessionsApplication,
        gateway: WhatsAppGateway,
        database_url: str,
        timings: WorkerTimings | None = None,
    ) -> None:
        self.app = app
        self.gateway = gateway
        # Reports about sessions this worker does not hold (any more) are not recorded: the
        # worker that holds them now speaks for them.
        gateway.bind(FencedGatewayEvents(RecordingGatewayEvents(app), self.holds))
        self.database_url = database_url
        self.timings = timings or WorkerTimings()
        datastore = app.factory.datastore  # type: ignore[attr-defined]
        self.store = WorkStore(datastore)
        self._generations: dict[UUID, int] = {}
        self._takeover: dict[UUID, str] = {}
        self._lock = threading.RLock()
        self._reconcile_lock = threading.Lock()
        self._lease_lock = threading.Lock()
        self._held: set[UUID] = set()
        self._last_renewal = float("-inf")
        self._started_at: dict[UUID, float] = {}
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="worker-deadline")
        self.sender = MessageSender(app, gateway, self.holds, interval=self.timings.send_interval)
        self._dirty = threading.Event()
        self._wake = threading.Event()
        self._claim_wanted = threading.Event()
        self._requests_wanted = threading.Event()
        self._reactor: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._fenced = threading.Event()
        self._stopping = threading.Event()
        self._identity: psycopg.Connection[Any] | None = None
        self._listener: threading.Thread | None = None
        self._scheduler = BackgroundScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "max_instances": 3}
        )

    @property
    def worker_id(self) -> str:
        return self.store.worker_id

    # -- life --------------------------------------------------------------------------------

    def start(self) -> None:
        self._connect_identity()
        t = self.timings
        self._scheduler.add_job(
            self._guarded(self.lease_tick), "interval", seconds=t.tick, id="leases"
        )
        self._scheduler.add_job(
            self._guarded(self.reconcile_tick), "interval", seconds=t.tick, id="reconcile"
        )
        self._scheduler.add_job(
            self._guarded(self.deadline_tick), "interval", seconds=t.deadline_tick
        )
        self._scheduler.add_job(
            self._guarded(self.requests_tick), "interval", seconds=t.tick, id="requests"
        )
        self._scheduler.add_job(self._guarded(self.store.purge_requests), "interval", minutes=10)
        self._scheduler.start()
        self._listener = threading.Thread(target=self._listen, name="worker-listen", daemon=True)
        self._listener.start()
        self._reactor = threading.Thread(target=self._react, name="worker-react", daemon=True)
        self._reactor.start()
        self._watchdog = threading.Thread(target=self._watch, name="worker-watch", daemon=True)
        self._watchdog.start()
        self.lease_tick()  # hold something before the first reconcile
        self.poke(claim=True)

    def close(self) -> None:
        """Stop every client (devices stay linked) and give the sessions up for others."""
        self._stopping.set()
        self._wake.set()
        if self._reactor is not None:
            self._reactor.join(10)
        self._scheduler.shutdown(wait=True)
        self._pool.shutdown(wait=True)
        self.sender.close()
        self.gateway.stop_all()
        try:
            self.store.release()
        except Exception:
            log.exception("could not release the leases; they expire on their own")
        if self._identity is not None:
            self._identity.close()
        if self._listener is not None:
            self._listener.join(5)
        self.gateway.close()

    def poke(self, *, claim: bool = False, requests: bool = False) -> None:
        """Reconcile (and claim, and answer requests) soon: a NOTIFY came, or leases changed.
        Pokes coalesce: however many arrive while the reactor works, it runs once more."""
        self._dirty.set()
        if claim:
            self._claim_wanted.set()
        if requests:
            self._requests_wanted.set()
        self._wake.set()

    def _watch(self) -> None:
        """Fencing that needs neither the database nor the worker's locks (either may hang):
        once the leases have not been renewed for most of their time, stop every client."""
        while not self._stopping.wait(min(1.0, self.timings.lease_ttl / 10)):
            if self._renewed_recently() or self._fenced.is_set():
                continue
            if self.gateway.running():
                log.error("the leases were not renewed in time; stopping every client")
                self.gateway.stop_all()
                self._fenced.set()

    def _react(self) -> None:
        """The reactor: what NOTIFYs ask for, at once (the periodic ticks are the safety net)."""
        while not self._stopping.is_set():
            self._wake.wait(self.timings.tick)
            self._wake.clear()
            if self._stopping.is_set():
                return
            if self._claim_wanted.is_set():
                self._claim_wanted.clear()
                self._guarded(self.claim_tick)()
            if self._requests_wanted.is_set():
                self._requests_wanted.clear()
                self._guarded(self.requests_tick)()
            if self._dirty.is_set():
                self._guarded(self.reconcile_tick)()

    def _guarded(self, tick: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            if self._stopping.is_set():
                return
            try:
                tick()
            except Exception:
                log.exception("worker tick %s failed", getattr(tick, "__name__", tick))

        return run

    def _connect_identity(self) -> None:
        """(Re)open the connection that says this worker is alive, under a new id."""
        self.store.worker_id = uuid.uuid4().hex
        conn = psycopg.connect(
            self.database_url,
            autocommit=True,
            application_name=WORKER_APP_PREFIX + self.store.worker_id,
        )
        conn.execute(f"LISTEN {GATEWAY_CHANNEL}")
        conn.execute(f"LISTEN {REQUESTS_CHANNEL}")
        self._identity = conn
        log.info("gateway worker %s is up", self.worker_id)

    def _listen(self) -> None:
        while not self._stopping.is_set():
            conn = self._identity
            try:
                assert conn is not None
                for notify in conn.notifies(timeout=1.0):
                    if notify.channel == REQUESTS_CHANNEL:
                        self.poke(requests=True)
                    else:
                        self.poke(claim=True)
                conn.execute("SELECT 1")
            except Exception:
                if self._stopping.is_set():
                    return
                log.exception("the worker lost its database connection; stopping its clients")
                self._lose_everything()
                self._stopping.wait(1.0)
                try:
                    self._connect_identity()
                    self._last_renewal = float("-inf")  # a new id: renew (heartbeat) at once
                    self.lease_tick()
                    self.poke()
                except Exception:
                    log.exception("could not reconnect the worker")

    def _lose_everything(self) -> None:
        """Stop every client: this worker may no longer hold its sessions."""
        with self._lock:
            self.gateway.stop_all()
            self._generations.clear()
            self._takeover.clear()
            self._started_at.clear()
            self._held = set()

    def holds(self, session_id: UUID) -> bool:
        """Whether this worker holds the session's lease, as of its last renewal (fencing:
        a worker that could not renew in time holds nothing and has stopped its clients)."""
        return session_id in self._held and self._renewed_recently()

    def _renewed_recently(self) -> bool:
        return time.monotonic() - self._last_renewal < self.timings.lease_ttl * 0.8

    # -- ticks --------------------------------------------------------------------------------

    def lease_tick(self) -> None:
        """Renew the leases (every third of their time) and claim sessions."""
        with self._lease_lock:  # overlapping runs would see each other's claims as losses
            if time.monotonic() - self._last_renewal >= self.timings.lease_ttl / 3:
                self._renew()
            self._claim()

    def claim_tick(self) -> None:
        """Claim sessions now (a session was created or restarted somewhere)."""
        with self._lease_lock:
            if self._renewed_recently():
                self._claim()

    def _renew(self) -> None:
        t = self.timings
        started = time.monotonic()  # the lease runs from the renewal's start, not its end
        try:
            held = self.store.renew(t.lease_ttl)
        except Exception:
            if not self._renewed_recently():
                log.exception("could not renew the leases in time; stopping every client")
                self._lose_everything()
            raise
        self._last_renewal = started
        with self._lock:
            if self._fenced.is_set():  # the watchdog stopped every client: start them again
                self._fenced.clear()
                self._generations.clear()
                self._started_at.clear()
            self._held = held
            lost = (self.gateway.running() | set(self._generations)) - held
            for session_id in lost:
                log.warning("lost the lease of %s; stopping its client", session_id)
                self.gateway.stop(session_id)
                self._generations.pop(session_id, None)
                self._started_at.pop(session_id, None)

    def _claim(self) -> None:
        t = self.timings
        held = self._held
        # Sessions whose worker died or stopped renewing are taken over whatever the share;
        # new ones only up to this worker's fair share of the sessions meant to run.
        claimed = self.store.claim(t.claim_batch, t.lease_ttl, orphans_only=True)
        live = max(1, len(self.store.live_workers()))
        share = math.ceil(self.store.wanted() / live)
        room = min(t.claim_batch - len(claimed), share - len(held) - len(claimed))
        claimed += self.store.claim(room, t.lease_ttl, orphans_only=False)
        if claimed:
            with self._lock:
                for session_id, had_owner in claimed:
                    self._held.add(session_id)
                    self._generations.pop(session_id, None)
                    self._takeover[session_id] = (
                        Reason.GATEWAY_LOST.value if had_owner else Reason.SERVICE_RESTARTED.value
                    )
            log.info("took over %d sessions", len(claimed))
            self.poke()

    def reconcile_tick(self) -> None:
        """Reconcile once (the safety net), then again for as long as something pokes."""
        self._dirty.clear()
        self.reconcile()
        while self._dirty.is_set() and not self._stopping.is_set():
            self._dirty.clear()
            self.reconcile()

    def reconcile(self) -> None:
        if not self._renewed_recently():
            return
        with self._reconcile_lock, self._lock:
            rows = self.store.owned_rows()
            for row in rows:
                session_id = row.session_id
                if session_id not in self._held:
                    # Claimed in the database a moment ago, but its takeover (and why) is not
                    # noted yet: the claim pokes again once it is.
                    continue
                if row.desired == DesiredState.RUNNING:
                    if self._generations.get(session_id) == row.generation:
                        continue
                    reason = self._takeover.get(session_id, Reason.SERVICE_RESTARTED.value)
                    plan = plan_start(self.app, session_id, reason)
                    if plan is not None:
                        self._start(session_id, plan.device_jid)
                    # Only now: a start that raised is tried again on the next reconcile.
                    self._generations[session_id] = row.generation
                    self._takeover.pop(session_id, None)
                elif row.desired == DesiredState.STOPPED:
                    self.gateway.stop(session_id)
                    self._generations.pop(session_id, None)
                    self._started_at.pop(session_id, None)
                    self.store.release([session_id])
                    self._held.discard(session_id)
                # deleted: the logout deadline logs it out and releases it

    def _start(self, session_id: UUID, device_jid: str | None) -> None:
        self.gateway.start(session_id, device_jid)
        self._started_at[session_id] = time.monotonic()

    def deadline_tick(self) -> None:
        """Run every due deadline, on several threads so their events share commits."""
        while not self._stopping.is_set() and self._renewed_recently():
            due = self.store.claim_deadlines(500, self.timings.deadline_hold)
            now = datetime.now(UTC)
            list(self._pool.map(self._run_deadline, due, [now] * len(due)))
            if len(due) < 500:
                return

    def _run_deadline(self, deadline: Deadline, now: datetime) -> None:
        """Run a deadline, and remove it when it is done or no longer applies. One that
        failed unexpectedly, or is not due yet after all, comes back after the hold."""
        try:
            done = self._deadline(deadline, now)
        except (DomainError, SessionNotFound):
            log.info("deadline %s of %s no longer applies", deadline.kind, deadline.session_id)
            done = True
        except Exception:
            log.exception("deadline %s of %s failed", deadline.kind, deadline.session_id)
            done = deadline.claims >= MAX_DEADLINE_CLAIMS
            if done:
                log.error(  # noqa: TRY400 - the traceback was just logged
                    "giving up deadline %s of %s", deadline.kind, deadline.session_id
                )
        if done:
            self.store.finish_deadline(deadline)

    def _deadline(self, deadline: Deadline, now: datetime) -> bool:
        session_id = deadline.session_id
        if deadline.kind == LOGOUT:
            jid = self.app.load(session_id).jid
            with self._lock:
                self.gateway.logout(session_id, jid)
                self._generations.pop(session_id, None)
                self._started_at.pop(session_id, None)
                self._held.discard(session_id)
            self.store.release([session_id])
            return True
        if not self.holds(session_id):
            return False  # taken over meanwhile: its new worker runs it
        if deadline.kind == RETRY:
            plan = self.app.retry(session_id)
            if plan is not None:
                with self._lock:
                    try:
                        self._start(session_id, plan.device_jid)
                    except Exception as error:
                        log.exception("could not start %s", session_id)
                        self.app.record_disconnected(
                            session_id, Reason.CONNECT_FAILURE.value, f"start failed: {error}"
                        )
            return True
        if deadline.kind == QR_EXPIRY:
            with self._lock:
                generation = self._generations.get(session_id)
            if self.app.expire_stale_qr(session_id, now) is not None:
                with self._lock:
                    if self._generations.get(session_id) == generation:  # no restart since
                        self.gateway.stop(session_id)
            return True
        other = {START_CHECK: self._check_start, SEND: self._send}.get(deadline.kind)
        if other is None:
            log.error("unknown deadline kind %r", deadline.kind)
            return True
        return other(session_id)

    def _send(self, session_id: UUID) -> bool:
        """Messages are waiting: drain the session's queue (if it is connected)."""
        self.sender.kick(session_id)
        return True

    def _check_start(self, session_id: UUID) -> bool:
        """A start with no news for too long (no QR code, no connection, no failure): stop
        it and record it as a failed connection, so that the reconnect policy tries again."""
        started = self._started_at.get(session_id)
        if started is None or time.monotonic() - started < START_TIMEOUT.total_seconds():
            return False  # not started here yet, or started recently: look again later
        session = self.app.load(session_id)
        if session.status != Status.CONNECTING or session.qr_code is not None:
            return True
        with self._lock:
            self.gateway.stop(session_id)
            self._started_at.pop(session_id, None)
        seconds = int(START_TIMEOUT.total_seconds())
        self.app.record_disconnected(
            session_id, Reason.CONNECT_FAILURE.value, f"no answer from WhatsApp in {seconds} s"
        )
        return True

    def requests_tick(self) -> None:
        if not self._renewed_recently():
            return
        while not self._stopping.is_set():
            requests = self.store.claim_requests(200)
            list(self._pool.map(self._answer, requests))  # a slow one does not hold up others
            if len(requests) < 200:
                return

    def _answer(self, request: dict[str, Any]) -> None:
        try:
            result = self._execute(request["session_id"], request["action"], request["args"])
        except ApplicationError as error:
            self.store.answer_request(request["id"], None, (error.code, str(error)))
        except Exception as error:
            log.exception("gateway request %s failed", request["action"])
            self.store.answer_request(request["id"], None, (GatewayFailed.code, str(error)))
        else:
            self.store.answer_request(request["id"], result)

    def _execute(self, session_id: UUID, action: str, args: dict[str, Any]) -> dict[str, Any]:
        if action == "pair_code":
            return {"code": self.gateway.pair_phone(session_id, str(args["phone"]))}
        simulator = self.gateway
        if not isinstance(simulator, PhoneSimulator):
            raise ApplicationError(f"the gateway cannot {action}")
        simulated: dict[str, Callable[[], int | None]] = {
            "scan": lambda: simulator.scan(session_id),
            "drop": lambda: simulator.drop(session_id),
            "logout": lambda: simulator.remote_logout(session_id),
            "replace": lambda: simulator.replace(session_id),
            "ban": lambda: simulator.ban(session_id, float(args.get("seconds", 60))),
            "keepalive": lambda: simulator.keepalive(session_id, bool(args.get("healthy"))),
            "inbound": lambda: simulator.inbound(
                session_id, str(args["sender"]), str(args["text"])
            ),
            "ack": lambda: simulator.ack(session_id, str(args["whatsapp_id"]), str(args["status"])),
        }
        if action not in simulated:
            raise ApplicationError(f"unknown gateway action {action!r}")
        return {"position": simulated[action]()}
