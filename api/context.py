"""What the API needs, handed over by the composition root (the API never builds adapters)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeAlias, TypeVar
from uuid import UUID

from litestar.di import Dependency
from litestar.params import SkipValidationMarker

from api.expensive import ExpensiveReads
from api.ratelimit import FailureThrottle, Network, SessionRateLimiter
from api.writes import Writes
from application.audit import Break, Verified
from application.sessions import SessionsApplication
from projections.history import StatusSnapshots
from projections.livefeed import LiveFeed
from projections.messages import MessagesView
from projections.readmodels import ReadModels
from projections.uptime import UptimeView
from projections.webhooks import WebhookQueries

T = TypeVar("T")
#: A service a handler receives, by its parameter's name, from the app's providers
#: (`api.dependencies`); built once by the composition root, so not validated per request.
Service: TypeAlias = Annotated[T, Dependency(kind="named"), SkipValidationMarker()]
#: The texts of a session's messages, by the version of the event that carries each.
MessageTexts = Callable[[UUID, Collection[int]], dict[int, str]]
#: Why a webhook URL can never be a target (a literal private address), or None.
UrlCheck = Callable[[str], str | None]


class GatewayCalls(ABC):
    """Calls that run where the session's client lives (a worker process, maybe another one).

    `call` answers the action's result, or raises the `ApplicationError` the worker gave
    (`NotPairing`, `SimulatorError`…), or `GatewayUnavailable` when no worker answered in time.
    """

    @abstractmethod
    async def call(self, session_id: UUID, action: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run `action` for the session on its worker and return what it answered."""


@dataclass
class ApiContext:
    app: SessionsApplication
    read_models: ReadModels
    limiter: SessionRateLimiter
    admin_key_hash: str
    default_requests_per_minute: int
    write_wait_timeout: float
    max_body_bytes: int
    gateway_calls: GatewayCalls
    simulator: bool
    readiness: Callable[[], Awaitable[dict[str, str]]]
    uptime: UptimeView
    messages: MessagesView
    message_texts: MessageTexts
    projection_lags: Callable[[], dict[str, int]]
    webhook_queries: WebhookQueries
    check_webhook_url: UrlCheck
    #: How far this process's copy of the views has got (a notification id): the dashboard's
    #: live pages wait on it to learn that something changed.
    view_position: Callable[[], int]
    #: Failed authentications counted per client address (in the rate limits' storage).
    failure_throttle: FailureThrottle
    #: What `/health/ready` reports beside its checks, without failing them (e.g. that rate
    #: limits and failure counts are per process while several share the database).
    readiness_warnings: Callable[[], Awaitable[list[str]]]
    #: The dashboard's cookie-signing secret (SESSIOND_DASHBOARD_SECRET), or None to derive
    #: it from the admin key; and whether its cookie is sent over HTTPS only.
    dashboard_secret: str | None = None
    dashboard_secure_cookie: bool = False
    #: Proxies whose ``X-Forwarded-For`` is believed (SESSIOND_TRUSTED_PROXIES).
    trusted_proxies: tuple[Network, ...] = ()
    #: Where past states of sessions start from (None: from their first event).
    status_snapshots: StatusSnapshots | None = None
    #: The pool and per-session cap of expensive reads (past states, series, history, replay).
    expensive_reads: ExpensiveReads = field(default_factory=ExpensiveReads)
    #: The most events one webhook replay reads (SESSIOND_REPLAY_MAX_EVENTS).
    replay_max_events: int = 1000
    #: The feed of new events for the live event streams (None: no streams).
    live_feed: LiveFeed | None = None
    #: Seconds between an idle stream's heartbeats (SESSIOND_STREAM_HEARTBEAT).
    stream_heartbeat: float = 15.0
    #: Streams one session may hold open in a process (SESSIOND_MAX_STREAMS_PER_SESSION).
    max_streams_per_session: int = 10
    #: The silence watchdog's period in seconds (SESSIOND_SILENCE_AFTER; 0: off), shown.
    silence_after: float = 1800.0
    #: The audit key's public half (Ed25519, raw 32 bytes), and the verification of the audit
    #: chain's tail since its last checkpoint (None: not served).
    audit_public_key: bytes | None = None
    audit_verify: Callable[[], Break | Verified] | None = None
    #: The read-your-writes waits of this app (`write_wait_timeout` each).
    writes: Writes = field(init=False)

    def __post_init__(self) -> None:
        self.writes = Writes(self.app, self.read_models, self.write_wait_timeout)
