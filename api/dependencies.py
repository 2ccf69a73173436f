"""What controllers receive, by parameter name: the app-level Litestar dependency providers,
each built once from what the composition root handed over (`ApiContext`).

A handler declares the services it uses as ``Service[...]`` parameters (`api.context`)
named as below. Each provider answers one value, built when the app is made and not
validated per request, so resolving one costs no work beyond Litestar's lookup; routes
that declare none, and the status fast path (answered before any handler), pay nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar.datastructures import State
from litestar.di import Provide

from api.context import ApiContext
from api.controllers.simulator import SimulatedPhone
from api.controllers.streams import EventStreams
from api.dashboard.bell import BELL_STATE, Bell
from api.expensive import LocalReads
from api.reads import OwnReaders


def services(ctx: ApiContext) -> dict[str, Any]:
    """Every service a controller can declare, by parameter name."""
    return {
        "sessions": ctx.app,
        "read_models": ctx.read_models,
        "writes": ctx.writes,
        "gateway_calls": ctx.gateway_calls,
        "messages": ctx.messages,
        "message_texts": ctx.message_texts,
        "webhook_queries": ctx.webhook_queries,
        "check_webhook_url": ctx.check_webhook_url,
        "expensive": LocalReads(
            ctx.expensive_reads,
            OwnReaders(
                app=ctx.app,
                uptime=ctx.uptime,
                webhook_queries=ctx.webhook_queries,
                status_snapshots=ctx.status_snapshots,
                replay_max_events=ctx.replay_max_events,
                default_requests_per_minute=ctx.default_requests_per_minute,
            ),
        ),
        "default_requests_per_minute": ctx.default_requests_per_minute,
        "readiness": ctx.readiness,
        "readiness_warnings": ctx.readiness_warnings,
        "projection_lags": ctx.projection_lags,
        "limiter": ctx.limiter,
        "streams": EventStreams.of(ctx),
        "phone": SimulatedPhone(ctx.gateway_calls, ctx.writes),
        "audit_public_key": ctx.audit_public_key,
        "audit_verify": ctx.audit_verify,
    }


def _constant(value: Any) -> Callable[[], Any]:
    def provide() -> Any:
        return value

    return provide


def constants(values: dict[str, Any]) -> dict[str, Provide]:
    """Providers that each answer one value built beforehand (cached)."""
    return {
        name: Provide(_constant(value), use_cache=True, sync_to_thread=False)
        for name, value in values.items()
    }


def _open_alerts(state: State) -> Bell | None:
    """The open alerts as the dashboard's bell last read them (never read on the way)."""
    bell = state.get(BELL_STATE)
    return bell if isinstance(bell, Bell) else None


def providers(ctx: ApiContext) -> dict[str, Provide]:
    """The app-level providers of `services` (each value built once, cached), and the open
    alerts of the app's state."""
    return {
        **constants(services(ctx)),
        "open_alerts": Provide(_open_alerts, sync_to_thread=False),
    }
