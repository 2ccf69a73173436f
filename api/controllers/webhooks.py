"""Webhook endpoints: register (the secret is shown once), read, change, delete, rotate the
secret, and the deliveries: list them with every attempt, send one again, replay a time range.

The admin manages every endpoint (global ones, or any session's); a session key manages its
own session's endpoints only (another's answer 404, as for sessions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter

from api import reads
from api.auth import API_KEY_SECURITY, Principal, provide_caller
from api.context import Service, UrlCheck
from api.controllers.common import problems, target_session, utc_instant
from api.expensive import LocalReads
from api.fastpath import EXPENSIVE_REPLAY
from api.problems import ProblemError
from api.schemas import (
    DeliveryOut,
    DeliveryPageOut,
    ReplayIn,
    ReplayOut,
    RotatedSecretOut,
    RotateSecretIn,
    WebhookChangeIn,
    WebhookCreatedOut,
    WebhookIn,
    WebhookListOut,
    WebhookOut,
)
from api.writes import Writes, call
from application.sessions import SessionsApplication
from application.webhooks import Webhooks
from projections.readmodels import ReadModels
from projections.replay import InvalidCursor
from projections.webhooks import WebhookQueries

WEBHOOK = "/webhooks/{webhook_id:str}"
#: Whose expensive reads the admin's endpoints (every session's events) count as.
GLOBAL_ENDPOINTS = "*global-endpoints*"


def _out(row: dict[str, Any]) -> WebhookOut:
    return WebhookOut.from_row(row, events=list(row["events"]))


async def _visible(writes: Writes, webhook_queries: WebhookQueries, position: int) -> None:
    """Wait (bounded) until the webhook projection has `position` (read-your-writes)."""
    if not await writes.reached(webhook_queries.position, position):
        raise ProblemError(
            503,
            "views-lagging",
            f"the change was recorded (position {position}) but the webhook view has not "
            "caught up yet; read it again shortly",
            {"Retry-After": "1"},
        )


def _reachable(principal: Principal, row: dict[str, Any] | None, webhook_id: str) -> dict[str, Any]:
    if row is None or not (principal.is_admin or row["session_id"] == principal.session_id):
        raise ProblemError(404, "webhook-not-found", f"no webhook {webhook_id}")
    return row


class WebhooksController(Controller):
    tags = ["webhooks"]  # noqa: RUF012 - Litestar reads it as a class attribute
    security = API_KEY_SECURITY
    dependencies = {"caller": Provide(provide_caller)}  # noqa: RUF012

    @staticmethod
    async def _row(
        webhook_queries: WebhookQueries, caller: Principal, webhook_id: str
    ) -> dict[str, Any]:
        return _reachable(caller, await call(webhook_queries.endpoint, webhook_id), webhook_id)

    @post(
        "/webhooks",
        status_code=201,
        responses=problems(400, 401, 404, 409, 413, 422, 429, 503),
        operation_id="createWebhook",
    )
    async def create_webhook(
        self,
        caller: NamedDependency[Principal],
        data: JSONBody[WebhookIn],
        *,
        sessions: Service[SessionsApplication],
        read_models: Service[ReadModels],
        writes: Service[Writes],
        webhook_queries: Service[WebhookQueries],
        check_webhook_url: Service[UrlCheck],
    ) -> WebhookCreatedOut:
        """Register an endpoint; the answer holds its signing secret, shown this once. Without
        `sessionId` the admin's endpoint receives every session's events; a session key's
        endpoint is always its own session's."""
        session_id = target_session(caller, data.session_id, read_models)
        reason = check_webhook_url(data.url)
        if reason is not None:
            raise ProblemError(422, "invalid-url", reason)
        existing = (
            0 if session_id is None else len(await call(webhook_queries.endpoints_of, session_id))
        )
        registered = await call(
            Webhooks(sessions).register,
            data.url,
            list(data.events),
            session_id,
            caller.actor,
            existing,
        )
        await _visible(writes, webhook_queries, registered.position)
        row = await self._row(webhook_queries, caller, registered.webhook_id)
        return WebhookCreatedOut.from_row(row, events=list(row["events"]), secret=registered.secret)

    @get("/webhooks", responses=problems(400, 401, 429, 503), operation_id="listWebhooks")
    async def list_webhooks(
        self,
        caller: NamedDependency[Principal],
        *,
        webhook_queries: Service[WebhookQueries],
    ) -> WebhookListOut:
        """The endpoints the caller manages (the admin: all of them)."""
        rows = await call(
            webhook_queries.endpoints_of, None if caller.is_admin else caller.session_id
        )
        items = [_out(row) for row in rows]
        return WebhookListOut(items=items, count=len(items))

    @get(WEBHOOK, responses=problems(400, 401, 404, 429, 503), operation_id="getWebhook")
    async def get_webhook(
        self,
        caller: NamedDependency[Principal],
        webhook_id: FromPath[str],
        *,
        webhook_queries: Service[WebhookQueries],
    ) -> WebhookOut:
        """One endpoint (never its secret)."""
        return _out(await self._row(webhook_queries, caller, webhook_id))

    @patch(
        WEBHOOK, responses=problems(400, 401, 404, 413, 422, 429, 503), operation_id="updateWebhook"
    )
    async def change_webhook(
        self,
        caller: NamedDependency[Principal],
        webhook_id: FromPath[str],
        data: JSONBody[WebhookChangeIn],
        *,
        sessions: Service[SessionsApplication],
        writes: Service[Writes],
        webhook_queries: Service[WebhookQueries],
        check_webhook_url: Service[UrlCheck],
    ) -> WebhookOut:
        """Change its URL or events, or enable it again (or disable it)."""
        await self._row(webhook_queries, caller, webhook_id)
        if data.url is not None:
            reason = check_webhook_url(data.url)
            if reason is not None:
                raise ProblemError(422, "invalid-url", reason)
        events = [str(e) for e in data.events] if data.events is not None else None
        position = await call(
            lambda: Webhooks(sessions).change(
                webhook_id, caller.actor, url=data.url, events=events, enabled=data.enabled
            )
        )
        if position is not None:
            await _visible(writes, webhook_queries, position)
        return _out(await self._row(webhook_queries, caller, webhook_id))

    @delete(
        WEBHOOK,
        status_code=204,
        responses=problems(400, 401, 404, 429, 503),
        operation_id="deleteWebhook",
    )
    async def delete_webhook(
        self,
        caller: NamedDependency[Principal],
        webhook_id: FromPath[str],
        *,
        sessions: Service[SessionsApplication],
        writes: Service[Writes],
        webhook_queries: Service[WebhookQueries],
        expensive: Service[LocalReads],
    ) -> None:
        """Delete it: nothing more is delivered, pending deliveries are cancelled."""
        await self._row(webhook_queries, caller, webhook_id)
        position = await call(Webhooks(sessions).delete, webhook_id, caller.actor)
        expensive.pool.forget_tenant(webhook_id)
        await _visible(writes, webhook_queries, position)

    @post(
        WEBHOOK + "/rotate-secret",
        status_code=200,
        responses=problems(400, 401, 404, 413, 422, 429, 503),
        operation_id="rotateWebhookSecret",
    )
    async def rotate_secret(
        self,
        caller: NamedDependency[Principal],
        webhook_id: FromPath[str],
        *,
        sessions: Service[SessionsApplication],
        webhook_queries: Service[WebhookQueries],
        data: JSONBody[RotateSecretIn | None] = None,
    ) -> RotatedSecretOut:
        """A new secret, shown this once; deliveries carry both signatures until the old
        secret's grace period ends (default 24 hours)."""
        await self._row(webhook_queries, caller, webhook_id)
        grace = timedelta(seconds=data.grace_seconds if data is not None else 86_400)
        secret, _ = await call(Webhooks(sessions).rotate_secret, webhook_id, caller.actor, grace)
        return RotatedSecretOut(
            webhook_id=webhook_id,
            secret=secret,
            previous_secret_valid_until=datetime.now(UTC) + grace,
        )

    @get(
        WEBHOOK + "/deliveries",
        responses=problems(400, 401, 404, 429, 503),
        operation_id="listWebhookDeliveries",
    )
    async def list_deliveries(
        self,
        caller: NamedDependency[Principal],
        webhook_id: FromPath[str],
        *,
        webhook_queries: Service[WebhookQueries],
        status: Annotated[
            str | None,
            QueryParameter(
                description="pending, delivered, dead or cancelled",
                pattern="^(pending|delivered|dead|cancelled)$",
            ),
        ] = None,
        before: Annotated[
            str | None, QueryParameter(description="A page's `next`", max_length=64)
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    ) -> DeliveryPageOut:
        """Its deliveries, newest first, each with every attempt (status, duration, error,
        the start of the answer)."""
        await self._row(webhook_queries, caller, webhook_id)
        rows = await call(
            lambda: webhook_queries.deliveries(
                webhook_id, status=status, before=before, limit=limit
            )
        )
        items = [DeliveryOut.from_row(row) for row in rows]
        return DeliveryPageOut(
            items=items, next=rows[-1]["delivery_id"] if len(rows) == limit else None
        )

    @post(
        WEBHOOK + "/deliveries/{delivery_id:str}/retry",
        status_code=202,
        responses=problems(400, 401, 404, 429, 503),
        operation_id="retryWebhookDelivery",
    )
    async def retry_delivery(
        self,
        caller: NamedDependency[Principal],
        webhook_id: FromPath[str],
        delivery_id: FromPath[str],
        *,
        webhook_queries: Service[WebhookQueries],
    ) -> dict[str, str]:
        """Send this delivery again now (its event keeps its `webhook-id`)."""
        await self._row(webhook_queries, caller, webhook_id)
        if not await call(webhook_queries.retry, webhook_id, delivery_id):
            raise ProblemError(404, "delivery-not-found", f"no delivery {delivery_id}")
        return {"deliveryId": delivery_id, "status": "pending"}

    @post(
        WEBHOOK + "/replay",
        status_code=202,
        responses=problems(400, 401, 404, 409, 413, 422, 429, 503),
        operation_id="replayWebhook",
        opt={EXPENSIVE_REPLAY: True},  # refused early beyond its tenant's cap (`api.fastpath`)
    )
    async def replay(
        self,
        caller: NamedDependency[Principal],
        webhook_id: FromPath[str],
        data: JSONBody[ReplayIn],
        *,
        expensive: Service[LocalReads],
        webhook_queries: Service[WebhookQueries],
    ) -> ReplayOut:
        """Send again the events of `[from, to)` this endpoint subscribes to (each with its
        own `webhook-id`, so receivers can tell a replay from a new event). One call reads at
        most SESSIOND_REPLAY_MAX_EVENTS events (a session's endpoint: that session's only);
        when the window goes on, `next` is where to continue (send it as `after` with the same
        window). One replay of an endpoint runs at a time (409 `replay-in-progress`)."""
        row = await self._row(webhook_queries, caller, webhook_id)
        start, end = utc_instant(data.from_, "from", 422), utc_instant(data.to, "to", 422)
        if end <= start:
            raise ProblemError(422, "invalid-window", "`to` must come after `from`")
        tenant = row["session_id"] or GLOBAL_ENDPOINTS
        # The next replays of this endpoint beyond the tenant's cap are refused before their
        # body is read and their endpoint looked up (`api.fastpath.expensive_refusal`).
        expensive.pool.remember_tenant(webhook_id, tenant)
        try:
            enqueued, after = await expensive.run(
                tenant, reads.replay, row, (start, end), data.after
            )
        except InvalidCursor as error:
            raise ProblemError(422, "invalid-cursor", str(error)) from None
        except reads.ReplayInProgress:
            raise ProblemError(
                409,
                "replay-in-progress",
                f"a replay of {webhook_id} is running; send this one when it has answered",
                {"Retry-After": "1"},
            ) from None
        return ReplayOut(webhook_id=webhook_id, enqueued=enqueued, next=after)
