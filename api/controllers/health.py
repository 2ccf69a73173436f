"""Liveness and readiness probes (no key needed)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from litestar import Controller, Response, get
from litestar.openapi.datastructures import ResponseSpec

from api.context import Service
from api.schemas import HealthOut


class HealthController(Controller):
    path = "/health"
    tags = ["health"]  # noqa: RUF012
    security = []  # noqa: RUF012 - no key needed

    @get("/live", operation_id="getLiveness")
    async def live(self) -> HealthOut:
        """The process is up."""
        return HealthOut(status="ok", checks={})

    @get(
        "/ready",
        responses={
            503: ResponseSpec(
                data_container=HealthOut,
                description="Something this server needs does not answer; see `checks`",
            )
        },
        operation_id="getReadiness",
    )
    async def ready(
        self,
        readiness: Service[Callable[[], Awaitable[dict[str, str]]]],
        readiness_warnings: Service[Callable[[], Awaitable[list[str]]]],
    ) -> Response[HealthOut]:
        """The database, the views and the rate-limit storage answer; `warnings` says what
        an operator should know that does not make the server unready."""
        checks = await readiness()
        ok = all(value == "ok" for value in checks.values())
        return Response(
            HealthOut(
                status="ok" if ok else "unavailable",
                checks=checks,
                warnings=await readiness_warnings(),
            ),
            status_code=200 if ok else 503,
        )
