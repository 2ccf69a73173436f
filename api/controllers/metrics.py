"""Prometheus metrics (`GET /metrics`), read from this process's copy of the views at scrape
time, plus how far each view lags behind the log, the webhook endpoints counted in one
aggregate query, and this process's rate-limit counts. Aggregates only: no session ids or
names (the route needs no key), and a fixed number of series whatever the number of sessions.
The alerting rules built on them are `deploy/prometheus/alerts.yml`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from litestar import MediaType, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.context import Service
from api.dashboard.bell import Bell
from api.presenters import health, health_reason
from api.ratelimit import SessionRateLimiter
from api.writes import call
from domain.alerts import CONDITIONS
from domain.policy import RESTRICTING_REASONS
from domain.values import DesiredState, Status
from projections.readmodels import ReadModels
from projections.status import SessionRow
from projections.webhooks import EndpointHealth, WebhookQueries

STATUSES = tuple(Status)
RESTRICTION_KINDS = tuple(sorted(RESTRICTING_REASONS))
HEALTHS = ("healthy", "degraded", "starting", "unhealthy", "stopped")
HEALTH_REASONS = ("keepalive_failing", "silent")
MESSAGE_COUNTERS = (
    ("outbound", "sent", "messages_sent"),
    ("outbound", "delivered", "messages_delivered"),
    ("outbound", "read", "messages_read"),
    ("outbound", "failed", "messages_failed"),
    ("inbound", "received", "messages_received"),
)
#: The thresholds of `sessiond_sessions_down_longer_than` (minutes): a fixed set, so the
#: series do not grow with the sessions.
DOWN_MINUTES = (5, 15, 60, 360, 1440)


def down_seconds(row: SessionRow, now: datetime) -> float | None:
    """How long a session meant to run has not been connected since it lost its connection
    (None: it is connected, stopped, deleted, or was never connected and lost)."""
    if (
        row.down_since is None
        or row.status == Status.CONNECTED
        or row.desired != DesiredState.RUNNING
    ):
        return None
    return max(0.0, (now - row.down_since).total_seconds())


@dataclass(frozen=True)
class Scrape:
    """What a scrape reads besides the session rows."""

    now: datetime
    lags: dict[str, int]
    webhooks: EndpointHealth = field(default_factory=EndpointHealth)
    requests_limited: int = 0
    requests_near_limit: int = 0
    # The alert rules' open alerts by condition (as last read for the dashboard's bell).
    alerts_open: dict[str, int] = field(default_factory=dict)


class SessionsCollector(Collector):
    def __init__(
        self, rows: list[SessionRow], lags: dict[str, int], scrape: Scrape | None = None
    ) -> None:
        # The message and reconnect counters include deleted sessions, so that they never go
        # down (a drop would read as a counter reset and make `increase()` leap).
        self.every_row = rows
        self.rows = [row for row in rows if not row.is_deleted]
        self.lags = lags
        self.scrape = scrape or Scrape(now=datetime.now(UTC), lags=lags)

    def collect(self) -> Iterator[Metric]:
        by_status = Counter(row.status for row in self.rows)
        sessions = GaugeMetricFamily(
            "sessiond_sessions", "Sessions (not deleted) by status", labels=["status"]
        )
        for value in STATUSES:
            sessions.add_metric([value], by_status.get(value, 0))
        yield sessions
        by_health: Counter[str] = Counter(health(row) for row in self.rows)
        healths = GaugeMetricFamily(
            "sessiond_sessions_health", "Sessions (not deleted) by health", labels=["health"]
        )
        for name in HEALTHS:
            healths.add_metric([name], by_health.get(name, 0))
        yield healths
        by_reason: Counter[str | None] = Counter(health_reason(row) for row in self.rows)
        degraded = GaugeMetricFamily(
            "sessiond_sessions_degraded",
            "Connected sessions (not deleted) that are degraded, by reason: keepalives failing, "
            "or silent (nothing heard for the silence watchdog's period)",
            labels=["reason"],
        )
        for reason in HEALTH_REASONS:
            degraded.add_metric([reason], by_reason.get(reason, 0))
        yield degraded
        by_kind = Counter(r.restriction_kind for r in self.rows if r.restriction_kind is not None)
        restricted = GaugeMetricFamily(
            "sessiond_sessions_restricted",
            "Sessions (not deleted) that WhatsApp restricts (their queues paused), by kind",
            labels=["kind"],
        )
        for kind in RESTRICTION_KINDS:
            restricted.add_metric([kind], by_kind.get(kind, 0))
        yield restricted
        yield from self._down()
        messages = CounterMetricFamily(
            "sessiond_messages",
            "Messages that reached a status, deleted sessions' included (a read message counts "
            "as sent and read, and as delivered once that ack came)",
            labels=["direction", "status"],
        )
        for direction, status, counter in MESSAGE_COUNTERS:
            total = sum(getattr(r, counter) for r in self.every_row)
            messages.add_metric([direction, status], total)
        yield messages
        yield GaugeMetricFamily(
            "sessiond_message_queue_depth",
            "Outbound messages waiting to be sent, over all live sessions",
            value=sum(row.queue_depth for row in self.rows),
        )
        yield GaugeMetricFamily(
            "sessiond_message_queue_depth_max",
            "Outbound messages waiting in the longest queue of a live session",
            value=max((row.queue_depth for row in self.rows), default=0),
        )
        yield CounterMetricFamily(
            "sessiond_reconnects",
            "Times the service tried to connect sessions again after a failure (deleted "
            "sessions' included)",
            value=sum(row.reconnects for row in self.every_row),
        )
        lag = GaugeMetricFamily(
            "sessiond_projection_lag_events",
            "Events recorded that a view has not processed yet",
            labels=["projection"],
        )
        for name, behind in sorted(self.lags.items()):
            lag.add_metric([name], behind)
        yield lag
        yield from self._webhooks()
        yield from self._requests()
        alerts = GaugeMetricFamily(
            "sessiond_alerts_open",
            "Open alerts of sessiond's own alert rules (`/alerts/rules`), by condition, as last "
            "read (at most a few seconds old)",
            labels=["condition"],
        )
        for condition in CONDITIONS:
            alerts.add_metric([condition], self.scrape.alerts_open.get(condition, 0))
        yield alerts

    def _down(self) -> Iterator[Metric]:
        now = self.scrape.now
        # Most rows are not down: only those with a `down_since` are looked at further.
        maybe = (row for row in self.rows if row.down_since is not None)
        downs = [s for s in (down_seconds(row, now) for row in maybe) if s is not None]
        longer = GaugeMetricFamily(
            "sessiond_sessions_down_longer_than",
            "Sessions meant to run that have not been connected for longer than this many "
            "minutes since they lost their connection (retries included)",
            labels=["minutes"],
        )
        for minutes in DOWN_MINUTES:
            longer.add_metric([str(minutes)], sum(1 for s in downs if s > minutes * 60))
        yield longer
        yield GaugeMetricFamily(
            "sessiond_sessions_down_oldest_seconds",
            "How long the session down the longest has not been connected (0: none is down)",
            value=max(downs, default=0.0),
        )

    def _webhooks(self) -> Iterator[Metric]:
        health = self.scrape.webhooks
        endpoints = GaugeMetricFamily(
            "sessiond_webhook_endpoints",
            "Webhook endpoints, by state: enabled, or disabled (by a 410 Gone, three days of "
            "failures, or an operator)",
            labels=["state"],
        )
        endpoints.add_metric(["enabled"], health.enabled)
        endpoints.add_metric(["disabled"], health.disabled)
        yield endpoints
        yield GaugeMetricFamily(
            "sessiond_webhook_endpoints_failing",
            "Enabled webhook endpoints whose last delivery attempt failed",
            value=health.failing,
        )
        since = health.oldest_failing_since
        failing_for = 0.0 if since is None else (self.scrape.now - since).total_seconds()
        yield GaugeMetricFamily(
            "sessiond_webhook_endpoint_failing_seconds_max",
            "How long the enabled endpoint failing the longest has failed without a success "
            "(0: none fails)",
            value=max(0.0, failing_for),
        )

    def _requests(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "sessiond_session_requests_limited",
            "Requests of session keys refused (429) by their session's rate limit, counted "
            "by this API process",
            value=self.scrape.requests_limited,
        )
        yield CounterMetricFamily(
            "sessiond_session_requests_near_limit",
            "Requests of session keys let through with at most a tenth of their session's "
            "requests per minute left, counted by this API process",
            value=self.scrape.requests_near_limit,
        )


@get("/metrics", tags=["health"], media_type=MediaType.TEXT, operation_id="getMetrics")
async def metrics(
    read_models: Service[ReadModels],
    projection_lags: Service[Callable[[], dict[str, int]]],
    webhook_queries: Service[WebhookQueries],
    limiter: Service[SessionRateLimiter],
    open_alerts: Service[Bell | None],
) -> Response[bytes]:
    """Prometheus exposition: sessions by status, health and restriction, how long sessions
    are down, messages by direction and status, queue depths, reconnects, how many events each
    view lags behind the log, webhook endpoints disabled or failing, and requests limited."""
    lags = await call(projection_lags)
    scrape = Scrape(
        now=datetime.now(UTC),
        lags=lags,
        webhooks=await call(webhook_queries.endpoint_health),
        requests_limited=limiter.limited,
        requests_near_limit=limiter.near_limit,
        alerts_open=dict(
            Counter(alert.condition for alert in open_alerts.open()) if open_alerts else {}
        ),
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SessionsCollector(read_models.sessions(), lags, scrape))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
