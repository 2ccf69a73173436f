"""Routes of a session's proxy: read (password masked), set, clear."""

from __future__ import annotations

from litestar import Controller, delete, get, put
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody

from api.auth import API_KEY_SECURITY, SessionAccess, provide_access
from api.context import Service
from api.controllers.common import problems
from api.schemas import ProxyIn, ProxyOut
from api.writes import Writes, call
from application.sessions import SessionsApplication


def _shown(app: SessionsApplication, session_id: str) -> str | None:
    """The session's proxy as recorded, its password masked (read from its events)."""
    return app.get_session(session_id).proxy_url


class ProxyController(Controller):
    path = "/sessions/{session_id:str}/proxy"
    tags = ["sessions"]  # noqa: RUF012
    security = API_KEY_SECURITY
    dependencies = {"access": Provide(provide_access)}  # noqa: RUF012

    @get("/", responses=problems(400, 401, 404, 429, 503), operation_id="getSessionProxy")
    async def get_proxy(
        self,
        access: NamedDependency[SessionAccess],
        *,
        sessions: Service[SessionsApplication],
    ) -> ProxyOut:
        """The proxy the session's WhatsApp connection dials through (its password masked),
        or null: directly."""
        session_id = access.session.session_id
        url = await call(_shown, sessions, session_id)
        return ProxyOut(session_id=session_id, url=url)

    @put(
        "/",
        responses=problems(400, 401, 404, 413, 422, 429, 503),
        operation_id="setSessionProxy",
    )
    async def set_proxy(
        self,
        access: NamedDependency[SessionAccess],
        data: JSONBody[ProxyIn],
        *,
        sessions: Service[SessionsApplication],
        writes: Service[Writes],
    ) -> ProxyOut:
        """Dial WhatsApp through this proxy (``socks5://user:password@host:port`` or
        ``http(s)://…``) from the session's next connect on (a reconnect, a retry, a restart;
        stop and reconnect to use it now). Setting the same proxy again records nothing."""
        session_id = access.session.session_id
        position = await call(sessions.set_proxy, session_id, data.url, access.actor)
        await writes.settle(position)
        url = await call(_shown, sessions, session_id)
        return ProxyOut(session_id=session_id, url=url)

    @delete(
        "/",
        status_code=204,
        responses=problems(400, 401, 404, 429, 503),
        operation_id="clearSessionProxy",
    )
    async def clear_proxy(
        self,
        access: NamedDependency[SessionAccess],
        *,
        sessions: Service[SessionsApplication],
        writes: Service[Writes],
    ) -> None:
        """Dial WhatsApp directly from the session's next connect on. Clearing a session
        that has no proxy is harmless."""
        position = await call(sessions.clear_proxy, access.session.session_id, access.actor)
        await writes.settle(position)
