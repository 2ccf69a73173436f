"""Simulator controls (only with ``SESSIOND_GATEWAY=simulator``): scan, drop, log out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from litestar import Controller, Request, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from api.auth import API_KEY_SECURITY, SessionAccess, provide_admin_access
from api.controllers.common import call, context, current_row, problems, settle
from api.presenters import status_out
from api.problems import ProblemError
from api.schemas import StatusOut
from domain.values import session_uuid


class SimulatorController(Controller):
    path = "/simulator/sessions/{session_id:str}"
    tags = ["simulator"]  # noqa: RUF012
    security = API_KEY_SECURITY
    dependencies = {"admin_access": Provide(provide_admin_access)}  # noqa: RUF012

    async def _act(
        self, request: Request[Any, Any, State], access: NamedDependency[SessionAccess], action: str
    ) -> StatusOut:
        ctx = context(request)
        if ctx.simulator is None:  # pragma: no cover - the routes exist only with it
            raise ProblemError(404, "not-found", "the simulator is not running")
        actions: dict[str, Callable[[UUID], int | None]] = {
            "scan": ctx.simulator.scan,
            "drop": ctx.simulator.drop,
            "logout": ctx.simulator.remote_logout,
        }
        session_id = access.session.session_id
        position = await call(actions[action], session_uuid(session_id))
        await settle(ctx, position)
        return status_out(current_row(ctx, session_id))

    @post("/scan", status_code=200, responses=problems(400, 401, 403, 404, 409, 503))
    async def scan(
        self, request: Request[Any, Any, State], admin_access: NamedDependency[SessionAccess]
    ) -> StatusOut:
        """The phone scans the QR code being shown."""
        return await self._act(request, admin_access, "scan")

    @post("/drop", status_code=200, responses=problems(400, 401, 403, 404, 409, 503))
    async def drop(
        self, request: Request[Any, Any, State], admin_access: NamedDependency[SessionAccess]
    ) -> StatusOut:
        """The network drops the connection."""
        return await self._act(request, admin_access, "drop")

    @post("/logout", status_code=200, responses=problems(400, 401, 403, 404, 409, 503))
    async def logout(
        self, request: Request[Any, Any, State], admin_access: NamedDependency[SessionAccess]
    ) -> StatusOut:
        """The user unlinks the device from the phone."""
        return await self._act(request, admin_access, "logout")
