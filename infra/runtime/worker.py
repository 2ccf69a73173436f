"""The gateway worker: owns sessions through leases and keeps their clients as desired.

Each worker process has an identity, a connection named ``sessiond-worker:<id>``: while it
is open the worker is alive. Periodic ticks (APScheduler) do the rest:

- **leases**: renew what it holds (clients of sessions it no longer holds are stopped), and
  claim sessions meant to run that no live worker holds, up to its fair share
  (`application.placement.share`: even, within one) and at most `claim_batch` per tick, so
  that a restart of many sessions is staggered; a dead worker's sessions are taken whatever
  the share;
- **rebalance**: a worker above its share while another lacks sessions hands some over, at
  most `move_batch` per tick, fenced: it stops their clients, records each as disconnected
  (``handed_over``, by this worker), and only then gives the lease up for the other to claim.
  A worker asked to stop does the same with all it holds when another worker is live;
- **reconcile** (also woken at once by ``NOTIFY sessiond_gateway``): start what an operator
  (re)started or what was just taken over (decided from the session's events), stop what was
  stopped;
- **deadlines**: run due retries, expire QR codes the gateway never reported, log deleted
  sessions out — claimed with ``FOR UPDATE SKIP LOCKED``, so any number of workers is safe;
- **requests**: calls that must run where the client lives (pairing codes, the simulator),
  once the client is started here; those of a worker that died mid-call are run again by
  the session's next holder;
- **silence**: the watchdog (`domain.policy.SilencePolicy`) looks at each connected session
  it holds when its clock says it may be silent — judged first on the clock saved with the
  session's connection, then whenever the recorded events say nothing was heard for long
  enough — records it silent, makes the active check (`WhatsAppGateway.ping`) and recycles a
  connection that does not answer. The clock is the session's events (`Session.hearing`), so a
  restart or a takeover keeps it; a look costs one load of the session, about once per silence
  period (none when it connects).

Locks and the database: the worker's lock (`_lock`) guards what it runs (clients, generations,
holdings) and is never held while waiting for the database, so that losing the connection
(`_lose_everything`) and stopping (`close`) never wait behind a tick that waits for it; work
decided from the database is applied under the lock only if nothing was lost meanwhile (the
epoch). Every database wait is bounded (the pool's timeout), and `close` returns within its
time whatever the database does.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from apscheduler.schedulers.background import BackgroundScheduler
from psycopg.sql import SQL, Identifier

from application.errors import (
    ApplicationError,
    ConcurrentChange,
    GatewayError,
    GatewayFailed,
    NotConnected,
    SessionNotFound,
)
from application.gateway import RecordingGatewayEvents, plan_start
from application.placement import share, to_hand_over
from application.ports import (
    Disconnection,
    GatewayEvents,
    InboundMessage,
    PhoneSimulator,
    WhatsAppGateway,
)
from application.sessions import SessionsApplication
from domain.errors import DomainError
from domain.policy import Hearing, SilencePolicy, SilenceStep, deadline_rule, gives_up
from domain.values import DeadlineKind, DesiredState, Reason, Status
from infra.postgres.connect import connect, unreachable
from infra.postgres.gateway import (
    GATEWAY_CHANNEL,
    REQUESTS_CHANNEL,
    WORKER_APP_PREFIX,
    Answer,
    WorkStore,
)
from infra.runtime.sender import MessageSender
from projections.gateway import START_TIMEOUT, Deadline

log = logging.getLogger(__name__)
# Every tick would otherwise log two lines at INFO; and ticks that run late or overlap (a
# database that is slow or away) are expected: their failures are logged by `_guarded`.
logging.getLogger("apscheduler.executors.default").setLevel(logging.ERROR)
logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)


#: The longest a stopping worker waits to give its leases up (they expire anyway).
RELEASE_WAIT = 1.0
#: The longest a stopping worker waits for its listener (it looks every second).
LISTENER_WAIT = 1.5
#: Threads that plan and start sessions in a reconcile, and that record hand-overs: what
#: they record shares commits (a restart of thousands of sessions is not one save at a time).
PLAN_THREADS = 16
HAND_OVER_THREADS = 32
#: Reconciles read only the rows that changed (and the sessions just taken over); every
#: this many seconds, and whenever what it holds may have changed hands, all of them.
FULL_RECONCILE_EVERY = 30.0
#: How long a worker waits for a request to finish before it looks again (one cancelled by
#: `close` never finishes); how often, and how far apart, it tries to write a batch of answers.
ANSWER_WAIT = 0.5
ANSWER_TRIES = 3
ANSWER_RETRY_PAUSE = 0.5
#: How often the worker collects all its garbage and freezes what survives (`refreeze_gc`).
REFREEZE_GC_EVERY = 60.0


def refreeze_gc() -> None:
    """Collect all garbage, then move every object left into the collector's permanent
    generation: its sessions, clients and caches are long-lived, and each full collection
    would walk all of them again (in a storm of 5,000 sessions per worker, full collections
    took about 0.8 CPU-seconds of a worker's 10). Frozen objects that die since are freed by
    their reference counts, or, in a cycle, by the next call, which unfreezes first."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class WorkerTimings:
    lease_ttl: float = 30.0
    tick: float = 1.0  # leases and the reconcile safety net
    deadline_tick: float = 0.5
    claim_batch: int = 50
    move_batch: int = 10  # sessions handed to other workers per tick, at most
    deadline_hold: float = 30.0
    send_interval: float = 1.0  # at least this long between two messages of a session
    silence_after: float = 1800.0  # the silence watchdog's period (0: off)
    silence_check_timeout: float = 20.0  # the longest wait for the active check's answer


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

    def disconnected(self, session_id: UUID, disconnection: Disconnection) -> int | None:
        if not self._ours(session_id, "disconnected"):
            return None
        return self.events.disconnected(session_id, disconnection)

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
        *,
        ticks: tuple[tuple[Callable[[], object], float], ...] = (),
    ) -> None:
        """`ticks`: more periodic work of the worker role, (what to call, every how many
        seconds), run like the worker's own ticks (stopped with it, failures logged)."""
        self.app = app
        self._extra_ticks = ticks
        self.gateway = gateway
        # Reports about sessions this worker does not hold (any more) are not recorded: the
        # worker that holds them now speaks for them.
        gateway.bind(
            FencedGatewayEvents(
                RecordingGatewayEvents(app, lambda: self.worker_id, self._connected),
                self.holds,
            )
        )
        self.database_url = database_url
        self.timings = timings or WorkerTimings()
        after = self.timings.silence_after
        self.silence = SilencePolicy(
            timedelta(seconds=after) if after > 0 else None, self.timings.silence_check_timeout
        )
        # The silence watchdog: when to look at each session next, and the sessions being
        # looked at (checks may wait for WhatsApp: threads of their own). A lock of their own:
        # the gateway's reports note connections under it, and must never wait for `_lock`
        # (held while a client is stopped, which waits for the report being delivered).
        self._looks_lock = threading.Lock()
        self._looks: dict[UUID, datetime] = {}
        self._looking: set[UUID] = set()
        self._checkers = ThreadPoolExecutor(8, thread_name_prefix="worker-silence")
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
        self._pool = ThreadPoolExecutor(16, thread_name_prefix="worker-deadline")
        self._planners = ThreadPoolExecutor(PLAN_THREADS, thread_name_prefix="worker-plan")
        self.sender = MessageSender(app, gateway, self.holds, interval=self.timings.send_interval)
        self._dirty = threading.Event()
        self._wake = threading.Event()
        self._claim_wanted = threading.Event()
        self._requests_wanted = threading.Event()
        self._renew_wanted = threading.Event()
        # Bumped (under `_lock`) whenever a session this worker held may have changed hands
        # (lost, fenced, taken back): a plan made from the database before is not applied.
        self._epoch = 0
        # What the last reconcile saw: the epoch of its last full pass, when the next full
        # one is due, and the highest position of the rows it read since.
        self._reconciled_epoch = -1
        self._full_reconcile_at = 0.0
        self._reconciled_position = 0
        # What a claim reads on every tick, kept between them (each is a scan of every
        # session): the live workers last seen, when orphans are next looked for (at once
        # when a worker leaves the live set), and the count of sessions meant to run
        # (read again when a NOTIFY says the desired states changed).
        self._seen_live: set[str] = set()
        self._orphans_at = 0.0
        self._wanted: tuple[int, int] | None = None  # (count, the changes seen when read)
        self._wanted_at = 0.0
        self._desired_changes = 0
        self._reactor: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._fenced = threading.Event()
        self._stopping = threading.Event()
        self._identity: psycopg.Connection[Any] | None = None
        self._listener: threading.Thread | None = None
        # Other channels of this process, listened to on the identity connection (the
        # process's one listener): channel -> what to call with each NOTIFY (None: reconnected).
        self._channels: dict[str, Callable[[Any], None]] = {}
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
        self._scheduler.add_job(
            self._guarded(refreeze_gc), "interval", seconds=REFREEZE_GC_EVERY, id="gc"
        )
        for tick, seconds in self._extra_ticks:
            self._scheduler.add_job(self._guarded(tick), "interval", seconds=seconds)
        if self.silence.enabled:
            self._scheduler.add_job(
                self._guarded(self.silence_tick), "interval", seconds=t.tick, id="silence"
            )
        self._scheduler.start()
        self._listener = threading.Thread(target=self._listen, name="worker-listen", daemon=True)
        self._listener.start()
        self._reactor = threading.Thread(target=self._react, name="worker-react", daemon=True)
        self._reactor.start()
        self._watchdog = threading.Thread(target=self._watch, name="worker-watch", daemon=True)
        self._watchdog.start()
        self.lease_tick()  # hold something before the first reconcile
        self.poke(claim=True)

    def request_stop(self) -> None:
        """Start nothing more, and stop the ticks (without waiting: `close` waits)."""
        self._stopping.set()
        self._wake.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def close(self, timeout: float = 5.0) -> None:
        """Stop every client (devices stay linked) and give the sessions up for others, in
        `timeout` seconds at most: leases that could not be given up (the database is away)
        expire on their own, and a tick still waiting for the database ends with its wait."""
        deadline = time.monotonic() + timeout
        self.request_stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._planners.shutdown(wait=False, cancel_futures=True)
        self._checkers.shutdown(wait=False, cancel_futures=True)
        self.sender.close()
        with self._lock:  # never held across a database wait: taken at once
            self._epoch += 1
            self.gateway.stop_all()
            held, self._held = set(self._held), set()
        kept: set[UUID] = set()
        try:
            if held and self.store.live_workers() - {self.worker_id}:
                kept = self._record_hand_overs(held, _left(deadline) - RELEASE_WAIT)
        except Exception as error:
            log.warning("could not hand the sessions over (%s); others take them", error)
        try:
            if kept:  # not handed over in time: left to be taken over as lost
                self.store.release(sorted(held - kept), timeout=min(RELEASE_WAIT, _left(deadline)))
            else:
                self.store.release(timeout=min(RELEASE_WAIT, _left(deadline)))
        except Exception as error:
            log.warning("could not give the leases up (%s); they expire on their own", error)
        # The listener sees `_stopping` within a second and closes the identity connection
        # as it leaves; the reactor and the watchdog end by themselves (a tick may still wait
        # for the pool: closing it ends that wait).
        if self._listener is not None:
            self._listener.join(min(LISTENER_WAIT, _left(deadline)))
        if self._identity is not None:
            self._identity.close()  # the listener is stuck (connecting): others take over
        self.gateway.close()
        gc.unfreeze()  # what its sessions left behind is collected as usual again

    def listen(self, channel: str, callback: Callable[[Any], None]) -> None:
        """Call `callback` with each NOTIFY on `channel` (on the listener's thread: it must be
        quick), and with None once connected or reconnected. Before `start` only."""
        self._channels[channel] = callback

    def poke(self, *, claim: bool = False, requests: bool = False, renew: bool = False) -> None:
        """Reconcile (and claim, answer requests, renew the leases) soon: a NOTIFY came, or
        leases changed. Pokes coalesce: however many arrive while the reactor works, it runs
        once more."""
        self._dirty.set()
        if claim:
            self._desired_changes += 1  # sessions were created, started, stopped or deleted
            self._claim_wanted.set()
        if requests:
            self._requests_wanted.set()
        if renew:
            self._renew_wanted.set()
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
            if self._renew_wanted.is_set():
                self._renew_wanted.clear()
                self._guarded(self.lease_tick)()
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
            except Exception as error:
                name = getattr(tick, "__name__", tick)
                if self._stopping.is_set():  # its database wait was cut short by the stop
                    log.info("worker tick %s ended by the stop: %s", name, error)
                elif unreachable(error):
                    log.warning("worker tick %s failed: the database is away (%s)", name, error)
                else:
                    log.exception("worker tick %s failed", name)

        return run

    def _connect_identity(self) -> None:
        """(Re)open the connection that says this worker is alive, under a new id."""
        self.store.worker_id = uuid.uuid4().hex
        conn = connect(
            self.database_url,
            autocommit=True,
            application_name=WORKER_APP_PREFIX + self.store.worker_id,
        )
        try:
            conn.execute(f"LISTEN {GATEWAY_CHANNEL}")
            conn.execute(f"LISTEN {REQUESTS_CHANNEL}")
            for channel in self._channels:
                conn.execute(SQL("LISTEN {0}").format(Identifier(channel)))
        except BaseException:
            conn.close()
            raise
        self._identity = conn
        for callback in self._channels.values():  # whatever was sent before the LISTEN
            callback(None)
        log.info("gateway worker %s is up", self.worker_id)

    def _listen(self) -> None:
        """NOTIFYs wake the reactor. A lost identity connection means the sessions may be
        another worker's by now: every client stops at once, and the worker comes back under
        a new id (its leases renewed and its sessions claimed again by the reactor: this
        thread waits for no lock and no tick)."""
        try:
            self._listen_until_stopped()
        finally:
            if self._identity is not None:
                self._identity.close()  # this worker is gone: others take its sessions over

    def _listen_until_stopped(self) -> None:
        lost = False
        while not self._stopping.is_set():
            conn = self._identity
            try:
                if lost:
                    self._connect_identity()
                    lost = False
                    self._last_renewal = float("-inf")  # a new id: renew (heartbeat) at once
                    self.poke(renew=True, claim=True)
                    continue
                assert conn is not None
                for notify in conn.notifies(timeout=1.0):
                    other = self._channels.get(notify.channel)
                    if other is not None:
                        other(notify)
                    elif notify.channel == REQUESTS_CHANNEL:
                        self.poke(requests=True)
                    else:
                        self.poke(claim=True)
                conn.execute("SELECT 1")
            except Exception as error:
                if self._stopping.is_set():
                    return
                if lost:
                    log.warning("could not reconnect the worker: %s", error)
                else:
                    log.exception("the worker lost its database connection; stopping its clients")
                    lost = True
                    self._lose_everything()
                    if conn is not None:
                        conn.close()
                self._stopping.wait(1.0)

    def _lose_everything(self) -> None:
        """Stop every client: this worker may no longer hold its sessions."""
        with self._lock:
            self._epoch += 1
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
        """Renew the leases (every third of their time), claim sessions, hand some over."""
        with self._lease_lock:  # overlapping runs would see each other's claims as losses
            if time.monotonic() - self._last_renewal >= self.timings.lease_ttl / 3:
                self._renew()
            wanted, live = self._claim()
            self._rebalance(wanted, live)

    def _rebalance(self, wanted: int, live: set[str]) -> None:
        """Hand sessions above this worker's share to workers that lack theirs (fenced)."""
        if self._stopping.is_set() or not self._renewed_recently():
            return
        if len(self._held) <= share(self.worker_id, live, wanted):
            return  # the usual case: one cheap look, no count of everyone's leases
        counts = self.store.held_counts()
        n = to_hand_over(self.worker_id, len(self._held), counts, wanted, self.timings.move_batch)
        if n <= 0:
            return
        with self._lock:
            moving = set(sorted(self._held)[:n])
            self._epoch += 1  # plans made for them before are void
            for session_id in moving:
                self._held.discard(session_id)  # its reports are dropped from now on
                self.gateway.stop(session_id)
                self._generations.pop(session_id, None)
                self._started_at.pop(session_id, None)
                self._takeover.pop(session_id, None)
        kept = self._record_hand_overs(moving, self.timings.lease_ttl / 3)
        self.store.release(sorted(moving - kept))
        if kept:
            with self._lock:  # not recorded: still ours, started again by the reconcile
                self._held |= kept
            self.poke()
        log.info("handed %d sessions over to other workers", len(moving - kept))

    def _record_hand_overs(self, sessions: set[UUID], budget: float) -> set[UUID]:
        """Record, as this worker, that the (stopped) clients of `sessions` are disconnected
        because they are handed over — before their leases are given up, so that the next
        holder connects only after. Several at once (they share commits), within `budget`
        seconds; the sessions not recorded by then are returned (their leases must be kept).
        Daemon threads: one still waiting for the database never holds up an exit."""
        pending = list(sessions)
        done: set[UUID] = set()
        guard = threading.Lock()

        def record() -> None:
            while True:
                with guard:
                    if not pending:
                        return
                    session_id = pending.pop()
                try:  # a session not connected or connecting: nothing recorded, none needed
                    self.app.record_disconnected(
                        session_id,
                        Reason.HANDED_OVER.value,
                        "handed over to another worker",
                        worker=self.worker_id,
                    )
                except Exception as error:
                    log.warning("could not hand %s over: %s", session_id, error)
                    continue
                with guard:
                    done.add(session_id)

        threads = [
            threading.Thread(target=record, name="worker-hand-over", daemon=True)
            for _ in range(min(HAND_OVER_THREADS, len(sessions)))
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + max(0.0, budget)
        for thread in threads:
            thread.join(_left(deadline))
        with guard:
            pending.clear()  # the threads still running stop after their current one
            return sessions - done

    def claim_tick(self) -> None:
        """Claim sessions now (a session was created or restarted somewhere)."""
        with self._lease_lock:
            if self._renewed_recently():
                self._claim()

    def _renew(self) -> None:
        t = self.timings
        started = time.monotonic()  # the lease runs from the renewal's start, not its end
        worker_id = self.store.worker_id
        try:
            held = self.store.renew(t.lease_ttl)
        except Exception:
            if not self._renewed_recently() and not self._stopping.is_set():
                log.exception("could not renew the leases in time; stopping every client")
                self._lose_everything()
            raise
        if self.store.worker_id != worker_id:
            return  # the worker came back under a new id meanwhile: renewed under it next
        self._last_renewal = started
        with self._lock:
            lost = (self.gateway.running() | set(self._generations)) - held
            if self._fenced.is_set() or lost or self._held - held:  # plans made before: void
                self._epoch += 1
            if self._fenced.is_set():  # the watchdog stopped every client: start them again
                self._fenced.clear()
                self._generations.clear()
                self._started_at.clear()
            self._held = held
            for session_id in lost:
                log.warning("lost the lease of %s; stopping its client", session_id)
                self.gateway.stop(session_id)
                self._generations.pop(session_id, None)
                self._started_at.pop(session_id, None)

    def _claim(self) -> tuple[int, set[str]]:
        """Claim sessions; how many are wanted running, and the live workers."""
        t = self.timings
        held = self._held
        # Sessions whose worker died or stopped renewing are taken over whatever the share;
        # new ones only up to this worker's fair share of the sessions meant to run.
        now = time.monotonic()
        live = self.store.live_workers()
        claimed: list[tuple[UUID, bool]] = []
        # Orphans appear when a worker leaves the live set (it died, or stopped renewing):
        # looked for then, and every third of the lease time as a safety net.
        if self._seen_live - live or now >= self._orphans_at:
            claimed = self.store.claim(t.claim_batch, t.lease_ttl, orphans_only=True)
            if len(claimed) < t.claim_batch:  # else more are left: look again next tick
                self._orphans_at = now + t.lease_ttl / 3
                self._seen_live = live
        else:
            self._seen_live = live
        changes = self._desired_changes  # read before the count: a change after reads again
        if self._wanted is not None and self._wanted[1] == changes and now < self._wanted_at:
            wanted = self._wanted[0]
        else:
            wanted = self.store.wanted()
            self._wanted, self._wanted_at = (wanted, changes), now + t.lease_ttl / 3
        mine = share(self.worker_id, live, wanted)
        room = min(t.claim_batch - len(claimed), mine - len(held) - len(claimed))
        claimed += self.store.claim(room, t.lease_ttl, orphans_only=False)
        if claimed:
            with self._lock:
                if any(session_id in self._generations for session_id, _ in claimed):
                    self._epoch += 1  # taken back after a loss: what was planned before is void
                for session_id, had_owner in claimed:
                    self._held.add(session_id)
                    self._generations.pop(session_id, None)
                    self._takeover[session_id] = (
                        Reason.GATEWAY_LOST.value if had_owner else Reason.SERVICE_RESTARTED.value
                    )
            log.info("took over %d sessions", len(claimed))
            self.poke()
        return wanted, live

    def reconcile_tick(self) -> None:
        """Reconcile once (the safety net), then again for as long as something pokes."""
        self._dirty.clear()
        self.reconcile()
        while self._dirty.is_set() and not self._stopping.is_set():
            self._dirty.clear()
            self.reconcile()

    def reconcile(self) -> None:
        """Start and stop clients as the sessions this worker holds are meant to be. What is
        read from the database is read without the worker's lock, and applied under it only
        if nothing changed what this worker holds meanwhile (else a poke runs it again)."""
        if not self._renewed_recently():
            return
        with self._reconcile_lock:
            with self._lock:
                epoch = self._epoch
                taken_over = list(self._takeover)
            now = time.monotonic()
            full = epoch != self._reconciled_epoch or now >= self._full_reconcile_at
            since = None if full else self._reconciled_position
            rows = self.store.owned_rows(since, taken_over)
            running = [row for row in rows if row.desired == DesiredState.RUNNING]
            # Planned on several threads: what they record (a takeover) shares commits.
            for _ in self._planners.map(
                lambda row: self._reconcile_running(row.session_id, row.generation, epoch),
                running,
            ):
                pass
            for row in rows:
                if row.desired == DesiredState.STOPPED:
                    self._reconcile_stopped(row.session_id, epoch)
                # deleted: the logout deadline logs it out and releases it
            # Only once every row was handled (a start that raised reads them again).
            self._reconciled_position = max(
                [self._reconciled_position, *(row.position for row in rows)]
            )
            if full:
                self._reconciled_epoch = epoch
                self._full_reconcile_at = now + FULL_RECONCILE_EVERY

    def _current(self, epoch: int, session_id: UUID) -> bool:
        """Whether a plan made at `epoch` for `session_id` still applies (under `_lock`)."""
        if self._epoch != epoch or self._stopping.is_set():
            self.poke()  # what changed pokes too; this makes sure
            return False
        # Not held: claimed in the database a moment ago, but its takeover (and why) is not
        # noted yet (the claim pokes again once it is), or given up since.
        return session_id in self._held

    def _reconcile_running(self, session_id: UUID, generation: int, epoch: int) -> None:
        with self._lock:
            if not self._current(epoch, session_id):
                return
            if self._generations.get(session_id) == generation:
                return
            reason = self._takeover.get(session_id, Reason.SERVICE_RESTARTED.value)
        plan = plan_start(self.app, session_id, reason, self.worker_id)
        with self._lock:
            if not self._current(epoch, session_id):
                return
            if plan is not None:
                self._start(session_id, plan.device_jid, plan.proxy)
            # Only now: a start that raised is tried again on the next reconcile.
            self._generations[session_id] = generation
            self._takeover.pop(session_id, None)

    def _reconcile_stopped(self, session_id: UUID, epoch: int) -> None:
        with self._lock:
            if not self._current(epoch, session_id):
                return
            self.gateway.stop(session_id)
            self._generations.pop(session_id, None)
            self._started_at.pop(session_id, None)
        self.store.release([session_id])
        with self._lock:
            self._held.discard(session_id)

    def _start(self, session_id: UUID, device_jid: str | None, proxy: str | None) -> None:
        self.gateway.start(session_id, device_jid, proxy)
        self._started_at[session_id] = time.monotonic()

    def deadline_tick(self) -> None:
        """Run every due deadline, on several threads so their events share commits."""
        while not self._stopping.is_set() and self._renewed_recently():
            due = self.store.claim_deadlines(500, self.timings.deadline_hold)
            now = datetime.now(UTC)
            done = self._pool.map(self._run_deadline, due, [now] * len(due))
            # Removed together: one statement for the batch, not one transaction each.
            self.store.finish_deadlines([d for d, ok in zip(due, done, strict=True) if ok])
            if len(due) < 500:
                return

    def _run_deadline(self, deadline: Deadline, now: datetime) -> bool:
        """Run a deadline; whether it is done or no longer applies (to be removed). One that
        failed unexpectedly, or is not due yet after all, comes back after the hold (as
        does one left because the worker is stopping)."""
        if self._stopping.is_set():
            return False
        try:
            done = self._deadline(deadline, now)
        except (DomainError, SessionNotFound):
            log.info("deadline %s of %s no longer applies", deadline.kind, deadline.session_id)
            done = True
        except ConcurrentChange:  # lost every race with the session's other writers: later
            log.warning(
                "deadline %s of %s: the session kept changing; after the hold",
                deadline.kind,
                deadline.session_id,
            )
            done = False
        except Exception:
            log.exception("deadline %s of %s failed", deadline.kind, deadline.session_id)
            rule = deadline_rule(deadline.kind)
            done = rule is None or gives_up(rule, deadline.claims)
            if done:
                log.error(  # noqa: TRY400 - the traceback was just logged
                    "giving up deadline %s of %s", deadline.kind, deadline.session_id
                )
        return done

    def _deadline(self, deadline: Deadline, now: datetime) -> bool:
        session_id = deadline.session_id
        rule = deadline_rule(deadline.kind)
        if rule is None:
            log.error("unknown deadline kind %r", deadline.kind)
            return True
        if rule.holder_only and not self.holds(session_id):
            return False  # taken over meanwhile: its new worker runs it
        run = {
            DeadlineKind.LOGOUT: self._logout,
            DeadlineKind.RETRY: self._retry,
            DeadlineKind.QR_EXPIRY: lambda sid: self._expire_qr(sid, now),
            DeadlineKind.START_CHECK: self._check_start,
            DeadlineKind.SEND: self._send,
        }[DeadlineKind(deadline.kind)]
        return run(session_id)

    def _logout(self, session_id: UUID) -> bool:
        """The session was deleted: log its device out, wherever it was held."""
        jid = self.app.load(session_id).jid
        with self._lock:  # not started again from now on: it is not held
            self._epoch += 1
            self._generations.pop(session_id, None)
            self._started_at.pop(session_id, None)
            self._held.discard(session_id)
        self.gateway.logout(session_id, jid)  # may talk to WhatsApp: not under the lock
        self.store.release([session_id])
        return True

    def _expire_qr(self, session_id: UUID, now: datetime) -> bool:
        """The QR code's expiry was never reported: expire it, and stop that start."""
        with self._lock:
            generation = self._generations.get(session_id)
        if self.app.expire_stale_qr(session_id, now) is not None:
            with self._lock:
                if self._generations.get(session_id) == generation:  # no restart since
                    self.gateway.stop(session_id)
        return True

    def _retry(self, session_id: UUID) -> bool:
        """Connect again, as the reconnect policy planned (a start that fails is recorded)."""
        plan = self.app.retry(session_id)
        if plan is None:
            return True
        failed: Exception | None = None
        with self._lock:
            if self._stopping.is_set() or session_id not in self._held:
                return False  # stopping, or given up meanwhile: after the hold, or elsewhere
            try:
                self._start(session_id, plan.device_jid, plan.proxy)
            except Exception as error:
                log.exception("could not start %s", session_id)
                failed = error
        if failed is not None:  # recorded without the lock: it waits for the database
            self.app.record_disconnected(
                session_id, Reason.CONNECT_FAILURE.value, f"start failed: {failed}"
            )
        return True

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
        seconds = int(START_TIMEOUT.total_seconds())
        self.app.record_disconnected(
            session_id, Reason.CONNECT_FAILURE.value, f"no answer from WhatsApp in {seconds} s"
        )
        # Only once recorded: if that raised, the check comes back and records it then.
        with self._lock:
            if self._started_at.get(session_id) == started:  # not started again meanwhile
                del self._started_at[session_id]
        return True

    # -- the silence watchdog ---------------------------------------------------------------

    def _connected(self, session_id: UUID, hearing: Hearing) -> None:
        """The session's connection is recorded: the watchdog looks at it when its clock, as
        saved with the connection, says it may be silent (at its next tick if it may be now)."""
        if self.silence.enabled:
            now = datetime.now(UTC)
            verdict = self.silence.judge(hearing, now)
            due = verdict.step in (SilenceStep.SILENCE, SilenceStep.CHECK)
            self._look_at(session_id, now if due else verdict.look_again_at)

    def _look_at(self, session_id: UUID, when: datetime | None) -> None:
        if when is not None:
            with self._looks_lock:
                self._looks[session_id] = min(when, self._looks.get(session_id, when))

    def silence_tick(self) -> None:
        """Look at the sessions whose silence clock is due (each on a thread of the
        watchdog's: an active check may wait for WhatsApp)."""
        if not self._renewed_recently():
            return
        now = datetime.now(UTC)
        held = self._held  # read without `_lock`, as `holds` does: one membership test each
        with self._looks_lock:
            for session_id in [s for s in self._looks if s not in held]:
                del self._looks[session_id]  # not ours any more: its next holder looks
            due = [s for s, at in self._looks.items() if at <= now and s not in self._looking]
            for session_id in due:
                del self._looks[session_id]
                self._looking.add(session_id)
        for session_id in due:
            try:
                self._checkers.submit(self._watch_silence, session_id)
            except RuntimeError:  # stopping: the pool is shut down
                with self._looks_lock:
                    self._looking.discard(session_id)

    def _watch_silence(self, session_id: UUID) -> None:
        try:
            self._judge_silence(session_id)
        except Exception:
            log.exception("the silence watchdog failed for %s; looking again soon", session_id)
            self._look_at(session_id, datetime.now(UTC) + timedelta(seconds=5 * self.timings.tick))
        finally:
            with self._looks_lock:
                self._looking.discard(session_id)

    def _judge_silence(self, session_id: UUID) -> None:
        """Judge the session on its recorded events; if it is silent, record it so and make
        the active check: answered, the silence ends; not, the connection is recycled."""
        if not self.holds(session_id) or self._stopping.is_set():
            return
        now = datetime.now(UTC)
        verdict = self.silence.judge(self.app.hearing(session_id), now)
        if verdict.step not in (SilenceStep.SILENCE, SilenceStep.CHECK):
            self._look_at(session_id, verdict.look_again_at)
            return
        if not self.app.record_silent(session_id, self.silence, now):
            self._look_at(session_id, now)  # heard meanwhile: judged again
            return
        try:
            self.gateway.ping(session_id, self.silence.check_timeout)
        except NotConnected:
            if session_id not in self.gateway.running():  # stopped here, yet recorded up
                self._recycle(session_id, "the connection was already stopped")
            return  # else it is reconnecting: its next connection is looked at
        except GatewayError as error:
            self._recycle(session_id, str(error))
            return
        if self.holds(session_id):
            self.app.record_check_passed(session_id)
            self._look_at(session_id, now)

    def _recycle(self, session_id: UUID, why: str) -> None:
        """Stop the silent connection and record it disconnected (``silent``): the reconnect
        policy connects it again at once, and the new connection ends the silence."""
        with self._lock:
            if not self.holds(session_id) or self._stopping.is_set():
                return
            self.gateway.stop(session_id)
        after = self.silence.after.total_seconds() if self.silence.after is not None else 0
        log.warning("session %s is silent and did not answer the check: recycling", session_id)
        self.app.record_disconnected(
            session_id,
            Reason.SILENT.value,
            f"nothing heard for {after:g} s and no answer to the check: {why}",
            worker=self.worker_id,
        )

    def requests_tick(self) -> None:
        """Answer the requests for sessions whose client is started here (one just taken
        over waits for its start); a slow one does not hold up the others."""
        if not self._renewed_recently():
            return
        while not self._stopping.is_set():
            found = self.store.open_requests()
            with self._lock:
                ready = [rid for rid, sid in found if sid in self._generations]
            requests = self.store.claim_requests(ready)
            self._answer_all(requests)
            if len(found) < 500 or len(ready) < len(found):
                return

    def _answer_all(self, requests: list[dict[str, Any]]) -> None:
        """Run the requests on the pool and answer those done meanwhile together, in one
        statement, as soon as any is done: a slow one holds up no other's answer, and a
        storm's thousands of answers take a few statements, not a transaction each."""
        pending = {self._pool.submit(self._run_request, request) for request in requests}
        while pending:
            done, pending = wait(pending, timeout=ANSWER_WAIT, return_when=FIRST_COMPLETED)
            # One cancelled by `close` never counts as done: left claimed, it is run again
            # by the session's next holder once this worker is gone.
            pending = {f for f in pending if not f.cancelled()}
            answers = [f.result() for f in done if not f.cancelled()]
            if answers:
                self._write_answers(answers)

    def _write_answers(self, answers: list[Answer]) -> None:
        """Write answers, tried again a few times if the database fails: a batch lost
        leaves its callers to time out, as one lost answer did; later batches are still
        written."""
        for attempt in range(1, ANSWER_TRIES + 1):
            try:
                self.store.answer_requests(answers)
            except Exception as error:
                if attempt == ANSWER_TRIES or self._stopping.is_set():
                    log.warning(
                        "could not answer %d gateway requests (%s); their callers time out",
                        len(answers),
                        error,
                    )
                    return
                self._stopping.wait(ANSWER_RETRY_PAUSE)
            else:
                return

    def _run_request(self, request: dict[str, Any]) -> Answer:
        request_id = request["id"]
        try:
            result = self._execute(request["session_id"], request["action"], request["args"])
        except ApplicationError as error:
            return Answer(request_id, None, (error.code, str(error)))
        except Exception as error:
            log.exception("gateway request %s failed", request["action"])
            return Answer(request_id, None, (GatewayFailed.code, str(error)))
        return Answer(request_id, result)

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
            "outdated": lambda: simulator.outdated(session_id),
            "silent": lambda: simulator.silence(session_id, bool(args.get("answers_checks"))),
            "keepalive": lambda: simulator.keepalive(session_id, bool(args.get("healthy"))),
            "inbound": lambda: simulator.inbound(
                session_id, str(args["sender"]), str(args["text"])
            ),
            "ack": lambda: simulator.ack(session_id, str(args["whatsapp_id"]), str(args["status"])),
        }
        if action not in simulated:
            raise ApplicationError(f"unknown gateway action {action!r}")
        return {"position": simulated[action]()}


def _left(deadline: float) -> float:
    """Seconds left until `deadline` (a `time.monotonic()` time), never negative."""
    return max(0.0, deadline - time.monotonic())
