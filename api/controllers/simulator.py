"""Simulator controls (only with ``SESSIOND_GATEWAY=simulator``): what a phone and a network
do to a session. They run on the worker that holds the session, wherever it is."""

from __future__ import annotations

from typing import Any

from litestar import Controller, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody

from api.auth import API_KEY_SECURITY, SessionAccess, provide_admin_access
from api.context import GatewayCalls, Service
from api.controllers.common import current_row, problems
from api.presenters import status_out
from api.problems import ProblemError
from api.schemas import AckIn, BanIn, InboundIn, KeepAliveIn, SilentIn, StatusOut
from api.writes import Writes, call
from application.errors import SimulatorError
from application.phones import InvalidPhone, normalize_recipient
from domain.values import session_uuid
from projections.messages import MessagesView

_RESPONSES = problems(400, 401, 403, 404, 409, 502, 503)


class SimulatedPhone:
    """What a phone and a network do to a session, run on the worker that holds it; each
    answers the session's status once the views have what it recorded."""

    def __init__(self, gateway_calls: GatewayCalls, writes: Writes) -> None:
        self.gateway_calls = gateway_calls
        self.writes = writes

    async def act(
        self,
        access: SessionAccess,
        action: str,
        args: dict[str, Any] | None = None,
    ) -> StatusOut:
        session_id = access.session.session_id
        if access.session.desired != "running":
            # No worker runs a stopped session's client: nothing there for a phone to act on.
            raise SimulatorError(f"the session is {access.session.desired}: no client runs it")
        result = await self.gateway_calls.call(session_uuid(session_id), action, args or {})
        position = result.get("position")
        await self.writes.settle(position if isinstance(position, int) else None)
        return status_out(current_row(self.writes.read_models, session_id))


class SimulatorController(Controller):
    path = "/simulator/sessions/{session_id:str}"
    tags = ["simulator"]  # noqa: RUF012
    security = API_KEY_SECURITY
    dependencies = {"admin_access": Provide(provide_admin_access)}  # noqa: RUF012

    @post("/scan", status_code=200, responses=_RESPONSES, operation_id="simulateScan")
    async def scan(
        self,
        admin_access: NamedDependency[SessionAccess],
        phone: Service[SimulatedPhone],
    ) -> StatusOut:
        """The phone scans the QR code being shown."""
        return await phone.act(admin_access, "scan")

    @post("/drop", status_code=200, responses=_RESPONSES, operation_id="simulateDrop")
    async def drop(
        self,
        admin_access: NamedDependency[SessionAccess],
        phone: Service[SimulatedPhone],
    ) -> StatusOut:
        """The network drops the connection (the service retries with backoff)."""
        return await phone.act(admin_access, "drop")

    @post("/logout", status_code=200, responses=_RESPONSES, operation_id="simulateLogout")
    async def logout(
        self,
        admin_access: NamedDependency[SessionAccess],
        phone: Service[SimulatedPhone],
    ) -> StatusOut:
        """The user unlinks the device from the phone (a new QR code is needed)."""
        return await phone.act(admin_access, "logout")

    @post("/replace", status_code=200, responses=_RESPONSES, operation_id="simulateReplace")
    async def replace(
        self,
        admin_access: NamedDependency[SessionAccess],
        phone: Service[SimulatedPhone],
    ) -> StatusOut:
        """The device connects from somewhere else (not fought: reported)."""
        return await phone.act(admin_access, "replace")

    @post("/outdated", status_code=200, responses=_RESPONSES, operation_id="simulateOutdated")
    async def outdated(
        self,
        admin_access: NamedDependency[SessionAccess],
        phone: Service[SimulatedPhone],
    ) -> StatusOut:
        """WhatsApp refuses the client's version (a person upgrades, then reconnects)."""
        return await phone.act(admin_access, "outdated")

    @post(
        "/ban",
        status_code=200,
        responses=problems(400, 401, 403, 404, 409, 413, 422, 502, 503),
        operation_id="simulateBan",
    )
    async def ban(
        self,
        admin_access: NamedDependency[SessionAccess],
        phone: Service[SimulatedPhone],
        data: JSONBody[BanIn],
    ) -> StatusOut:
        """WhatsApp bans the account for a while (retried when the ban ends)."""
        return await phone.act(admin_access, "ban", {"seconds": data.seconds})

    @post(
        "/keepalive",
        status_code=200,
        responses=problems(400, 401, 403, 404, 409, 413, 422, 502, 503),
        operation_id="simulateKeepalive",
    )
    async def keepalive(
        self,
        admin_access: NamedDependency[SessionAccess],
        phone: Service[SimulatedPhone],
        data: JSONBody[KeepAliveIn],
    ) -> StatusOut:
        """Keepalive pings fail (`healthy: false`: the session is degraded) or work again."""
        return await phone.act(admin_access, "keepalive", {"healthy": data.healthy})

    @post(
        "/silent",
        status_code=200,
        responses=problems(400, 401, 403, 404, 409, 413, 422, 502, 503),
        operation_id="simulateSilence",
    )
    async def silent(
        self,
        admin_access: NamedDependency[SessionAccess],
        phone: Service[SimulatedPhone],
        data: JSONBody[SilentIn],
    ) -> StatusOut:
        """The link goes silent: it stays connected, but nothing reaches it (texts and receipts
        are lost) until its next connection; the watchdog's active check is answered only
        with `answersChecks: true`."""
        return await phone.act(admin_access, "silent", {"answers_checks": data.answers_checks})

    @post(
        "/inbound",
        status_code=200,
        responses=problems(400, 401, 403, 404, 409, 413, 422, 502, 503),
        operation_id="simulateInbound",
    )
    async def inbound(
        self,
        admin_access: NamedDependency[SessionAccess],
        phone: Service[SimulatedPhone],
        data: JSONBody[InboundIn],
    ) -> StatusOut:
        """Someone sends the session's account a text (`sender`: a phone number or JID)."""
        try:
            sender = normalize_recipient(data.sender)
        except InvalidPhone as error:
            raise ProblemError(422, "invalid-sender", str(error)) from None
        args = {"sender": sender, "text": data.text}
        return await phone.act(admin_access, "inbound", args)

    @post(
        "/ack",
        status_code=200,
        responses=problems(400, 401, 403, 404, 409, 413, 422, 502, 503),
        operation_id="simulateAck",
    )
    async def ack(
        self,
        admin_access: NamedDependency[SessionAccess],
        phone: Service[SimulatedPhone],
        data: JSONBody[AckIn],
        *,
        messages: Service[MessagesView],
    ) -> StatusOut:
        """The recipient's phone acknowledges a sent message: `delivered` or `read`."""
        row = await call(messages.get_message, data.message_id)
        if row is None or row.session_id != admin_access.session.session_id:
            raise ProblemError(
                404, "message-not-found", f"the session has no message {data.message_id}"
            )
        if row.direction != "outbound" or row.whatsapp_id is None:
            raise ProblemError(
                409, "not-sent", f"message {data.message_id} is {row.status}: nothing to ack yet"
            )
        args = {"whatsapp_id": row.whatsapp_id, "status": data.status}
        return await phone.act(admin_access, "ack", args)
