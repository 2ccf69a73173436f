"""Routes of a session's API keys: create (shown once), list, revoke."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import cast

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody

from api.auth import API_KEY_SECURITY, SessionAccess, provide_access
from api.context import Service
from api.controllers.common import problems, utc_instant
from api.presenters import key_out
from api.problems import ProblemError
from api.schemas import CreateKeyIn, KeyCreatedOut, KeyListOut, ScopeValue
from api.writes import Writes, call
from application.sessions import SessionsApplication
from domain.access import check_scopes
from domain.errors import InvalidValue
from projections.readmodels import ReadModels


def key_terms(
    scopes: Sequence[str] | None, expires_at: datetime | None, ttl_seconds: int | None
) -> tuple[list[str] | None, datetime | None]:
    """A new key's scopes (None: full access) and expiry (None: never), from what a client
    asked for: 422 for an unknown or empty list of scopes, or both an expiry and a time to
    live (an expiry in the past is refused when the key is issued)."""
    if expires_at is not None and ttl_seconds is not None:
        raise ProblemError(422, "invalid-request", "give `expiresAt` or `ttlSeconds`, not both")
    try:
        checked = None if scopes is None else check_scopes(scopes)
    except InvalidValue as error:
        raise ProblemError(422, "invalid-request", f"scopes: {error}") from None
    if ttl_seconds is not None:
        return checked, datetime.now(UTC) + timedelta(seconds=ttl_seconds)
    if expires_at is not None:
        return checked, utc_instant(expires_at, "expiresAt", 422)
    return checked, None


class KeysController(Controller):
    path = "/sessions/{session_id:str}/keys"
    tags = ["keys"]  # noqa: RUF012
    security = API_KEY_SECURITY
    dependencies = {"access": Provide(provide_access)}  # noqa: RUF012

    @post(
        "/",
        status_code=201,
        responses=problems(400, 401, 403, 404, 409, 413, 422, 429, 503),
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
        """Create a key for this session; the key itself is shown only in this answer.

        With `scopes` it may do only that (left out: everything); with `expiresAt` or
        `ttlSeconds` it stops working then (401 everywhere). A session key creates keys with
        no scope it lacks and no later expiry than its own (403 `key-exceeds-issuer`)."""
        data = data if data is not None else CreateKeyIn()
        scopes, expires_at = key_terms(data.scopes, data.expires_at, data.ttl_seconds)
        issued = await call(
            partial(sessions.issue_key, scopes=scopes, expires_at=expires_at),
            access.session.session_id,
            data.label,
            access.actor,
        )
        await writes.settle(issued.position)
        return KeyCreatedOut(
            key_id=issued.key_id,
            key=issued.key,
            prefix=issued.prefix,
            label=issued.label,
            scopes=cast("list[ScopeValue] | None", issued.scopes),
            expires_at=issued.expires_at,
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
        now = datetime.now(UTC)
        return KeyListOut(items=[key_out(row, now) for row in rows], count=len(rows))

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
