"""Delivers webhooks: claims due deliveries, signs them (Standard Webhooks, with the
`standardwebhooks` library) and POSTs them, many at once, on an asyncio loop of its own.

- The same event keeps the same ``webhook-id`` (``evt_<position>``) on every try and replay.
- What an attempt's answer leads to (delivered, tried again when, dead, the endpoint
  disabled) is `domain.policy.DeliveryPolicy`'s decision; 3xx counts as a failure (redirects
  are not followed), and so do a time-out, a refused connection, an address refused as
  private.
- After a secret rotation, both signatures are sent until the old secret's grace period ends.
- Every attempt is logged: status, duration, error, the start of the answer.

Round trips are shared: a claim fetches its batch's events in one more query, and the
attempts that finish while the previous ones are being written are written together, in one
transaction (each delivery's slot is held until its attempt is recorded, as before). The POSTs go
through one client (`infra.webhooks.client`: httpx on aiohttp's pool), `concurrency` at most in
flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from uuid import UUID

import httpx
from eventsourcing.persistence import Notification
from standardwebhooks.webhooks import Webhook

from application.fairness import Load, cap, fair_share
from application.sessions import SessionsApplication
from application.webhooks import Webhooks, webhook_uuid
from domain.policy import DeliveryOutcome, DeliveryPolicy
from domain.webhook import WebhookEndpoint
from infra.postgres.connect import connect, log_failure
from infra.postgres.webhooks import WEBHOOKS_CHANNEL, Attempt, Claimed, WebhookStore
from infra.webhooks.client import webhook_client
from projections.webhooks import webhook_body

log = logging.getLogger(__name__)
RESPONSE_EXCERPT = 1024
#: How often the listener looks whether it should stop (the longest `close` waits for it).
STOP_CHECK = 0.2
#: The tenant of the admin's endpoints (every session's events), for the fair shares.
GLOBAL_TENANT = "*global*"


@dataclass(frozen=True)
class DispatcherSettings:
    allow_private: bool = False
    concurrency: int = 64
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    retry_scale: float = 1.0  # multiplies the policy's RETRY_DELAYS (tests shrink them)
    hold: float = 60.0  # a claimed delivery comes back after this if its worker died
    poll: float = 0.5
    disable_after: timedelta = timedelta(days=3)
    max_share: float = 0.25  # of the slots, the most one endpoint or tenant holds


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


class _Signer:
    """The endpoint's secrets, by aggregate version (reloaded when the endpoint changes)."""

    def __init__(self, webhooks: Webhooks) -> None:
        self.webhooks = webhooks
        self._cache: dict[str, tuple[int, WebhookEndpoint]] = {}
        self._signers: dict[str, Webhook] = {}
        self._lock = threading.Lock()

    def endpoint(self, webhook_id: str, version: int) -> WebhookEndpoint:
        with self._lock:
            cached = self._cache.get(webhook_id)
        if cached is not None and cached[0] >= version:
            return cached[1]
        endpoint = self.webhooks.load(webhook_id)
        with self._lock:
            self._cache[webhook_id] = (endpoint.version, endpoint)
        return endpoint

    def signature(self, endpoint: WebhookEndpoint, event_id: str, at: datetime, body: str) -> str:
        signatures = [self._signer(endpoint.secret).sign(event_id, at, body)]
        previous, until = endpoint.previous_secret, endpoint.previous_valid_until
        if previous and until is not None and at < until:
            signatures.append(self._signer(previous).sign(event_id, at, body))
        return " ".join(signatures)

    def _signer(self, secret: str) -> Webhook:
        signer = self._signers.get(secret)
        if signer is None:
            if len(self._signers) > 1000:  # secrets rotated away: start again
                self._signers.clear()
            signer = self._signers[secret] = Webhook(secret)
        return signer


@dataclass
class _Recording:
    """An attempt waiting to be written, and the future its delivery waits on."""

    attempt: Attempt
    done: asyncio.Future[None] = field(repr=False)


class WebhookDispatcher:
    def __init__(
        self,
        app: SessionsApplication,
        store: WebhookStore,
        database_url: str,
        settings: DispatcherSettings,
        client_factory: Callable[[DispatcherSettings], httpx.AsyncClient] | None = None,
        *,
        listen: Callable[[str, Callable[[Any], None]], None] | None = None,
    ) -> None:
        """`listen(channel, callback)`: the process's listener (the worker's), else the
        dispatcher listens on a connection of its own."""
        self.app = app
        self.store = store
        self.database_url = database_url
        self.settings = settings
        self.policy = DeliveryPolicy(settings.retry_scale, settings.disable_after)
        self.webhooks = Webhooks(app)
        self.signer = _Signer(self.webhooks)
        self._client_factory = client_factory or _default_client
        self._stopping = threading.Event()
        self._stop_by = float("inf")
        self._wake: asyncio.Event | None = None
        self._freed: asyncio.Event | None = None  # a delivery ended: its slot is free
        self._recordings: list[_Recording] = []
        self._to_record: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tenants: dict[str, str] = {}  # endpoint -> its session (or the admin's)
        self._ends = 0  # deliveries ended so far
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._listener: threading.Thread | None = None
        if listen is None:
            self._listener = threading.Thread(
                target=self._listen, name="webhooks-listen", daemon=True
            )
        else:
            listen(WEBHOOKS_CHANNEL, lambda _: self._poke())
        self.delivered = 0

    def start(self) -> None:
        self._thread.start()
        if self._listener is not None:
            self._listener.start()

    def request_stop(self, timeout: float = 10.0) -> None:
        """Claim nothing more; deliveries in flight get `timeout` seconds to end and be
        recorded (`close` waits). One cut short is delivered again after its hold."""
        if not self._stopping.is_set():
            self._stop_by = time.monotonic() + timeout
        self._stopping.set()
        self._poke()
        loop, freed = self._loop, self._freed
        if loop is not None and freed is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(freed.set)

    def close(self, timeout: float = 10.0) -> None:
        """Stop, in `timeout` seconds at most."""
        deadline = time.monotonic() + timeout
        self.request_stop(timeout)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.join(max(0.0, deadline - time.monotonic()))

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(wake.set)

    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                with connect(self.database_url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {WEBHOOKS_CHANNEL}")
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=STOP_CHECK, stop_after=1):
                            self._poke()
            except Exception as error:
                log_failure(log, error, "the webhook listener failed", then="reconnecting")
                self._stopping.wait(1.0)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = wake = asyncio.Event()
        self._freed = freed = asyncio.Event()
        self._to_record = asyncio.Event()
        concurrency = self.settings.concurrency
        # With more due than slots, claim again once a quarter of the slots are free, not one
        # by one as each delivery ends.
        batch = max(1, concurrency // 4)
        tasks: set[asyncio.Task[None]] = set()
        in_flight: dict[str, int] = {}  # by endpoint
        # Work held back by the shares is claimed again once a quarter of a share has ended.
        step = max(1, cap(concurrency, self.settings.max_share) // 4)

        def started(webhook_id: str) -> Callable[[asyncio.Task[None]], None]:
            in_flight[webhook_id] = in_flight.get(webhook_id, 0) + 1

            def ended(task: asyncio.Task[None]) -> None:
                tasks.discard(task)
                left = in_flight.pop(webhook_id, 1) - 1
                if left:
                    in_flight[webhook_id] = left
                self._ends += 1
                freed.set()

            return ended

        # Built in a thread: the client loads the CA certificates (a fraction of a second).
        client = await asyncio.to_thread(self._client_factory, self.settings)
        async with client:
            recorder = asyncio.create_task(self._record_loop())
            while not self._stopping.is_set():
                free = concurrency - len(tasks)
                claimed: list[tuple[Claimed, WebhookEndpoint, str]] = []
                withheld = False  # due deliveries left for later by the shares
                wake.clear()  # news from now on is seen by the wait below
                if free > 0:
                    try:
                        claimed, withheld = await asyncio.to_thread(self._claim, dict(in_flight))
                    except Exception as error:
                        log_failure(log, error, "could not claim webhook deliveries")
                for item, endpoint, body in claimed:
                    task = asyncio.create_task(self._deliver(client, item, endpoint, body))
                    tasks.add(task)
                    task.add_done_callback(started(item.webhook_id))
                if free > 0 and withheld:  # the shares are full for now
                    await self._until_shares_move(wake, freed, step)
                elif free > 0 and len(claimed) < free:  # nothing more due: news or the poll
                    await _first(wake, wake, self.settings.poll)
                else:  # more may be due: claim again when enough slots are free
                    while concurrency - len(tasks) < batch and not self._stopping.is_set():
                        freed.clear()
                        await freed.wait()
            if tasks:
                await asyncio.wait(tasks, timeout=max(0.0, self._stop_by - time.monotonic()))
            recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recorder

    async def _until_shares_move(
        self, wake: asyncio.Event, freed: asyncio.Event, step: int
    ) -> None:
        """Wait for news (maybe another tenant's events), for `step` deliveries to end (their
        endpoints' shares go on), or for the poll."""
        mark = self._ends
        deadline = time.monotonic() + self.settings.poll
        while self._ends - mark < step and not wake.is_set() and not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            freed.clear()
            await _first(wake, freed, left)

    def _claim(
        self, in_flight: Mapping[str, int]
    ) -> tuple[list[tuple[Claimed, WebhookEndpoint, str]], bool]:
        """Claim due deliveries, each endpoint its fair share of the free slots (see
        `application.fairness`), with each one's endpoint (with its secrets) and body, built
        from the event itself; the events of the batch are read in one query. One that cannot
        be prepared is logged and left claimed: it is tried again when the claim expires.
        Also says whether the shares left due deliveries for later."""
        concurrency, share = self.settings.concurrency, self.settings.max_share
        loads: dict[str, Load] = {}
        # Counted up to one past a share: more than the share means some are left for later.
        most = cap(concurrency, share) + 1
        for webhook_id, session_id, waiting in self.store.due_by_endpoint(most):
            tenant = self._tenants[webhook_id] = session_id or GLOBAL_TENANT
            loads[webhook_id] = Load(tenant, in_flight.get(webhook_id, 0), waiting)
        for webhook_id, held in in_flight.items():
            if webhook_id not in loads:
                loads[webhook_id] = Load(self._tenants.get(webhook_id, webhook_id), held, 0)
        grants = fair_share(concurrency, loads, share)
        withheld = any(load.waiting > grants.get(key, 0) for key, load in loads.items())
        claimed = self.store.claim_shares(grants, self.settings.hold)
        if not claimed:
            return [], withheld
        events = self.store.stored_events([item.position for item in claimed])
        prepared = []
        for item in claimed:
            try:
                endpoint, body = self._prepare(item, events.get(item.position))
            except Exception:
                log.exception("delivering %s failed unexpectedly", item.delivery_id)
                continue
            prepared.append((item, endpoint, body))
        return prepared, withheld

    def _prepare(
        self, item: Claimed, notification: Notification | None
    ) -> tuple[WebhookEndpoint, str]:
        """The endpoint (with its secrets) and the body, built from the event itself."""
        endpoint = self.signer.endpoint(item.webhook_id, item.version)
        if notification is None:
            raise LookupError(f"no event at position {item.position}")
        body = webhook_body(self.app.mapper.to_domain_event(notification))
        if body is None:
            raise LookupError(f"the event at {item.position} is not a webhook")
        return endpoint, json.dumps(body, separators=(",", ":"), ensure_ascii=False)

    async def _deliver(
        self, client: httpx.AsyncClient, item: Claimed, endpoint: WebhookEndpoint, body: str
    ) -> None:
        try:
            recording = await self._attempt(client, item, endpoint, body)
            self._recordings.append(recording)
            assert self._to_record is not None
            self._to_record.set()
            await recording.done  # the slot stays taken until the attempt is recorded
        except Exception:
            log.exception("delivering %s failed unexpectedly", item.delivery_id)

    async def _attempt(
        self, client: httpx.AsyncClient, item: Claimed, endpoint: WebhookEndpoint, body: str
    ) -> _Recording:
        at = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": "sessiond-webhooks/1",
            "accept-encoding": "identity",  # the answer's start is logged as it came
            "webhook-id": item.event_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": self.signer.signature(endpoint, item.event_id, at, body),
        }
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        excerpt: str | None = None
        retry_after: float | None = None
        # One deadline for the whole attempt: a receiver that trickles its answer a byte at a
        # time never trips the read time-out alone. Only the start of the answer is read.
        deadline = self.settings.connect_timeout + self.settings.read_timeout
        try:
            async with asyncio.timeout(deadline):
                request = client.build_request(
                    "POST", endpoint.url, content=body.encode(), headers=headers
                )
                response = await client.send(request, stream=True)
                try:
                    status = response.status_code
                    excerpt = await _start_of(response)
                finally:
                    await response.aclose()
            retry_after = retry_after_seconds(response.headers.get("retry-after"), at)
            if 300 <= status < 400:
                error = f"redirect to {response.headers.get('location', '?')} (not followed)"
            elif status >= 400:
                error = f"HTTP {status}"
        except (httpx.HTTPError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500] if str(exc) else type(exc).__name__
        except Exception as exc:  # a failed attempt all the same: recorded, tried again later
            log.warning("delivering %s: unexpected %r", item.delivery_id, exc, exc_info=True)
            error = f"unexpected {type(exc).__name__}: {exc}"[:500]
        duration_ms = (time.monotonic() - started) * 1000
        outcome, delay = self.policy.outcome(status, item.attempts + 1, retry_after)
        attempt = Attempt(
            item,
            at=at,
            status_code=status,
            duration_ms=duration_ms,
            error=error,
            response=excerpt,
            outcome=outcome,
            next_attempt_at=None if delay is None else at + timedelta(seconds=delay),
        )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        return _Recording(attempt, done)

    async def _record_loop(self) -> None:
        """Write the attempts that ended, together: those that end meanwhile go next."""
        assert self._to_record is not None
        while True:
            await self._to_record.wait()
            self._to_record.clear()
            batch, self._recordings = self._recordings, []
            if not batch:
                continue
            try:
                errors = await asyncio.to_thread(self._record, batch)
            except Exception as error:  # a single attempt that could not be recorded
                errors = [error] * len(batch)
            for recording, failed in zip(batch, errors, strict=True):
                if recording.done.done():
                    continue
                if failed is None:
                    recording.done.set_result(None)
                else:
                    recording.done.set_exception(failed)

    def _record(self, batch: Sequence[_Recording]) -> list[BaseException | None]:
        """Record the attempts in one transaction (one by one if that fails, so that one bad
        attempt does not hold the others back), then act on each outcome, in order."""
        errors: list[BaseException | None] = [None] * len(batch)
        try:
            self.store.record_attempts([r.attempt for r in batch])
        except Exception:
            if len(batch) == 1:
                raise
            log.warning("recording %d webhook attempts together failed; one by one", len(batch))
            for n, recording in enumerate(batch):
                try:
                    self.store.record_attempts([recording.attempt])
                except Exception as error:
                    errors[n] = error
        for n, recording in enumerate(batch):
            if errors[n] is None:
                try:
                    self._after(recording.attempt)
                except Exception as error:
                    errors[n] = error
        return errors

    def _after(self, attempt: Attempt) -> None:
        """What a recorded outcome leads to: the policy may disable the endpoint."""
        item = attempt.claimed
        if attempt.outcome == DeliveryOutcome.DELIVERED:
            self.delivered += 1
            return
        since = None if attempt.status_code == 410 else self.store.failing_since(item.webhook_id)
        reason = self.policy.disabling(attempt.status_code, since, attempt.at)
        if reason is not None:
            self._disable(item.webhook_id, reason)

    def _disable(self, webhook_id: str, reason: str) -> None:
        log.warning("disabling webhook %s: %s", webhook_id, reason)
        uuid: UUID = webhook_uuid(webhook_id)
        self.webhooks.disable(uuid, reason)
        self.store.kill_pending(webhook_id, f"the webhook was disabled: {reason}")


async def _first(one: asyncio.Event, other: asyncio.Event, timeout: float) -> None:
    """Wait until either event is set, or `timeout` seconds."""
    waits = [asyncio.ensure_future(one.wait()), asyncio.ensure_future(other.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def _start_of(response: httpx.Response) -> str:
    """The first `RESPONSE_EXCERPT` bytes of the answer, as text."""
    data = b""
    async for chunk in response.aiter_raw():
        data += chunk
        if len(data) >= RESPONSE_EXCERPT:
            break
    return data[:RESPONSE_EXCERPT].decode("utf-8", errors="replace")


def _default_client(settings: DispatcherSettings) -> httpx.AsyncClient:
    return webhook_client(
        allow_private=settings.allow_private,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_connections=settings.concurrency,
    )


__all__ = ["DispatcherSettings", "WebhookDispatcher", "retry_after_seconds"]
