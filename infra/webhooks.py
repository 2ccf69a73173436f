"""Delivers webhooks: claims due deliveries, signs them (Standard Webhooks, with the
`standardwebhooks` library) and POSTs them, many at once, on an asyncio loop of its own.

- The same event keeps the same ``webhook-id`` (``evt_<position>``) on every try and replay.
- 2xx is delivered. Anything else (3xx included: redirects are not followed, a time-out, a
  refused connection, an address refused as private) is tried again with exponential backoff
  and jitter over about a day (`RETRY_DELAYS`), waiting at least what ``Retry-After`` asks;
  after the last try the delivery is dead-lettered. ``410 Gone`` disables the endpoint. An
  endpoint failing without a single success for `disable_after` is disabled and reported.
- After a secret rotation, both signatures are sent until the old secret's grace period ends.
- Every attempt is logged: status, duration, error, the start of the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from uuid import UUID

import httpx
import psycopg
from standardwebhooks.webhooks import Webhook

from application.sessions import SessionsApplication
from application.webhooks import Webhooks, webhook_uuid
from domain.webhook import WebhookEndpoint
from infra.pgwebhooks import WEBHOOKS_CHANNEL, Claimed, WebhookStore
from projections.webhooks import webhook_body

log = logging.getLogger(__name__)
#: Pauses before the 2nd, 3rd… tries (seconds): 11 tries over about 24 hours.
RETRY_DELAYS = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 28800)
RESPONSE_EXCERPT = 1024
MAX_RETRY_AFTER = 86_400.0


@dataclass(frozen=True)
class DispatcherSettings:
    allow_private: bool = False
    concurrency: int = 64
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    retry_scale: float = 1.0  # multiplies RETRY_DELAYS (tests shrink them)
    hold: float = 60.0  # a claimed delivery comes back after this if its worker died
    poll: float = 0.5
    disable_after: timedelta = timedelta(days=3)


def next_delay(attempts: int, scale: float, retry_after: float | None) -> float | None:
    """Seconds before the next try after `attempts` failed ones; None when none is left."""
    if attempts > len(RETRY_DELAYS):
        return None
    base = RETRY_DELAYS[attempts - 1] * scale * random.uniform(0.8, 1.2)  # noqa: S311 - jitter
    if retry_after is not None:
        base = max(base, min(retry_after, MAX_RETRY_AFTER))
    return base


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
        signatures = [Webhook(endpoint.secret).sign(event_id, at, body)]
        previous, until = endpoint.previous_secret, endpoint.previous_valid_until
        if previous and until is not None and at < until:
            signatures.append(Webhook(previous).sign(event_id, at, body))
        return " ".join(signatures)


class WebhookDispatcher:
    def __init__(
        self,
        app: SessionsApplication,
        store: WebhookStore,
        database_url: str,
        settings: DispatcherSettings,
        client_factory: Callable[[DispatcherSettings], httpx.AsyncClient] | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.database_url = database_url
        self.settings = settings
        self.webhooks = Webhooks(app)
        self.signer = _Signer(self.webhooks)
        self._client_factory = client_factory or _default_client
        self._stopping = threading.Event()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._listener = threading.Thread(target=self._listen, name="webhooks-listen", daemon=True)
        self.delivered = 0

    def start(self) -> None:
        self._thread.start()
        self._listener.start()

    def close(self) -> None:
        self._stopping.set()
        self._poke()
        self._thread.join(15)
        self._listener.join(5)

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.database_url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {WEBHOOKS_CHANNEL}")
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self._poke()
            except Exception:
                log.exception("the webhook listener failed; reconnecting")
                self._stopping.wait(1.0)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        limit = asyncio.Semaphore(self.settings.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        async with self._client_factory(self.settings) as client:
            while not self._stopping.is_set():
                free = self.settings.concurrency - len(tasks)
                claimed: list[Claimed] = []
                if free > 0:
                    try:
                        claimed = await asyncio.to_thread(
                            self.store.claim, free, self.settings.hold
                        )
                    except Exception:
                        log.exception("could not claim webhook deliveries")
                for item in claimed:
                    task = asyncio.create_task(self._deliver(client, limit, item))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if len(claimed) < free:  # nothing more due now: wait for news or the poll
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.settings.poll)
                else:
                    await asyncio.sleep(0)
            if tasks:
                await asyncio.wait(tasks, timeout=10)

    async def _deliver(
        self, client: httpx.AsyncClient, limit: asyncio.Semaphore, item: Claimed
    ) -> None:
        async with limit:
            try:
                await self._attempt(client, item)
            except Exception:
                log.exception("delivering %s failed unexpectedly", item.delivery_id)

    async def _attempt(self, client: httpx.AsyncClient, item: Claimed) -> None:
        prepared = await asyncio.to_thread(self._prepare, item)
        if prepared is None:
            return
        endpoint, body = prepared
        at = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": "sessiond-webhooks/1",
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
        duration_ms = (time.monotonic() - started) * 1000
        await asyncio.to_thread(
            self._record, item, at, status, duration_ms, error, excerpt, retry_after
        )

    def _prepare(self, item: Claimed) -> tuple[WebhookEndpoint, str] | None:
        """The endpoint (with its secrets) and the body, built from the event itself."""
        endpoint = self.signer.endpoint(item.webhook_id, item.version)
        notifications = self.app.recorder.select_notifications(start=item.position, limit=1)
        if not notifications or notifications[0].id != item.position:
            raise LookupError(f"no event at position {item.position}")
        event = self.app.mapper.to_domain_event(notifications[0])
        body = webhook_body(event)
        if body is None:
            raise LookupError(f"the event at {item.position} is not a webhook")
        return endpoint, json.dumps(body, separators=(",", ":"), ensure_ascii=False)

    def _record(  # noqa: PLR0917 - one attempt's facts
        self,
        item: Claimed,
        at: datetime,
        status: int | None,
        duration_ms: float,
        error: str | None,
        excerpt: str | None,
        retry_after: float | None,
    ) -> None:
        delivered = status is not None and 200 <= status < 300
        gone = status == 410
        delay = (
            None
            if delivered or gone
            else next_delay(item.attempts + 1, self.settings.retry_scale, retry_after)
        )
        outcome = "delivered" if delivered else ("retry" if delay is not None else "dead")
        self.store.record_attempt(
            item,
            at=at,
            status_code=status,
            duration_ms=duration_ms,
            error=error,
            response=excerpt,
            outcome=outcome,
            next_attempt_at=None if delay is None else at + timedelta(seconds=delay),
        )
        if delivered:
            self.delivered += 1
            return
        if gone:
            self._disable(item.webhook_id, "the endpoint answered 410 Gone")
            return
        since = self.store.failing_since(item.webhook_id)
        if since is not None and at - since >= self.settings.disable_after:
            days = (at - since).total_seconds() / 86_400
            self._disable(item.webhook_id, f"failing without a success for {days:.1f} days")

    def _disable(self, webhook_id: str, reason: str) -> None:
        log.warning("disabling webhook %s: %s", webhook_id, reason)
        uuid: UUID = webhook_uuid(webhook_id)
        self.webhooks.disable(uuid, reason)
        self.store.kill_pending(webhook_id, f"the webhook was disabled: {reason}")


async def _start_of(response: httpx.Response) -> str:
    """The first `RESPONSE_EXCERPT` bytes of the answer, as text."""
    data = b""
    async for chunk in response.aiter_raw():
        data += chunk
        if len(data) >= RESPONSE_EXCERPT:
            break
    return data[:RESPONSE_EXCERPT].decode("utf-8", errors="replace")


def _default_client(settings: DispatcherSettings) -> httpx.AsyncClient:
    from infra.webhook_http import webhook_client  # noqa: PLC0415

    return webhook_client(
        allow_private=settings.allow_private,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_connections=settings.concurrency,
    )


__all__ = ["DispatcherSettings", "WebhookDispatcher", "next_delay", "retry_after_seconds"]
