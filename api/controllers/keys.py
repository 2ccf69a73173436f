"""Routes of a session's API keys: create (shown once), list, revoke."""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody

from api.auth import API_KEY_SECURITY, SessionAccess, provide_access
from api.context import Service
from api.controllers.common import problems
from api.presenters import key_out
from api.schemas import CreateKeyIn, KeyCreatedOut, KeyListOut
from api.writes import Writes, call
from application.sessions import SessionsApplication
from projections.readmodels import ReadModels


class KeysController(Controller):
    path = "/sessions/{session_id:str}/keys"
    tags = ["keys"]  # noqa: RUF012
    security = API_KEY_SECURITY
    dependencies = {"access": Provide(provide_access)}  # noqa: RUF012

    @post(
        "/",
        status_code=201,
        responses=problems(400, 401, 404, 409, 413, 422, 429, 503),
        operation_id="createSessionKey",
    )
    async def create_key(
        self,
        access: NamedDependency[SessionAccess],
        *,
        sessions: Service[SessionsApplication],
        writes: Service[Writes],
        data: JSONBody[CreateKeyIn | None] = None,
    ) -> KeyCreatedOut:
        """Create a key for this session; the key itself is shown only in this answer."""
        label = data.label if data is not None else "default"
        issued = await call(sessions.issue_key, access.session.session_id, label, access.actor)
        await writes.settle(issued.position)
        return KeyCreatedOut(
            key_id=issued.key_id, key=issued.key, prefix=issued.prefix, label=issued.label
        )

    @get("/", responses=problems(400, 401, 404, 429, 503), operation_id="listSessionKeys")
    async def list_keys(
        self,
        access: NamedDependency[SessionAccess],
        *,
        read_models: Service[ReadModels],
    ) -> KeyListOut:
        """The session's keys: id, prefix, label, creation, last use; never the key."""
        rows = await call(read_models.keys_of, access.session.session_id)
        rows.sort(key=lambda row: (row.created_at, row.key_id))
        return KeyListOut(items=[key_out(row) for row in rows], count=len(rows))

    @delete(
        "/{key_id:str}",
        status_code=204,
        responses=problems(400, 401, 404, 409, 429, 503),
        operation_id="revokeSessionKey",
    )
    async def revoke_key(
        self,
        access: NamedDependency[SessionAccess],
        key_id: FromPath[str],
        *,
        writes: Service[Writes],
    ) -> None:
        """Revoke a key; once this answers, no server accepts it. Revoking twice is harmless:
        a repeat answers like the first revocation (204 once it is in force everywhere)."""
        await writes.revoke_key(access.session.session_id, key_id, access.actor)
