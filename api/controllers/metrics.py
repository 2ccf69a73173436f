"""Prometheus metrics (`GET /metrics`), read from this process's copy of the views at scrape
time, plus how far each view lags behind the log. Aggregates only: no session ids or names."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from litestar import MediaType, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.context import Service
from api.presenters import health, health_reason
from api.writes import call
from domain.policy import RESTRICTING_REASONS
from domain.values import Status
from projections.readmodels import ReadModels
from projections.status import SessionRow

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


class SessionsCollector(Collector):
    def __init__(self, rows: list[SessionRow], lags: dict[str, int]) -> None:
        self.rows = [row for row in rows if not row.is_deleted]
        self.lags = lags

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
        messages = CounterMetricFamily(
            "sessiond_messages",
            "Messages of live sessions that reached a status (a read message counts as sent "
            "and read, and as delivered once that ack came)",
            labels=["direction", "status"],
        )
        for direction, status, field in MESSAGE_COUNTERS:
            messages.add_metric([direction, status], sum(getattr(r, field) for r in self.rows))
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
            "Times the service tried to connect live sessions again after a failure",
            value=sum(row.reconnects for row in self.rows),
        )
        lag = GaugeMetricFamily(
            "sessiond_projection_lag_events",
            "Events recorded that a view has not processed yet",
            labels=["projection"],
        )
        for name, behind in sorted(self.lags.items()):
            lag.add_metric([name], behind)
        yield lag


@get("/metrics", tags=["health"], media_type=MediaType.TEXT, operation_id="getMetrics")
async def metrics(
    read_models: Service[ReadModels], projection_lags: Service[Callable[[], dict[str, int]]]
) -> Response[bytes]:
    """Prometheus exposition: sessions by status, health and restriction, messages by direction and
    status, queue depths, reconnects and how many events each view lags behind the log."""
    lags = await call(projection_lags)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SessionsCollector(read_models.sessions(), lags))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
