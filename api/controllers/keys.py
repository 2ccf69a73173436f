"""Routes of a session's API keys: create (shown once), list, revoke."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody

from api.auth import API_KEY_SECURITY, SessionAccess, provide_access
from api.controllers.common import call, context, problems, revoke_key, settle, utc_instant
from api.presenters import key_out
from api.problems import ProblemError
from api.schemas import CreateKeyIn, KeyCreatedOut, KeyListOut, ScopeValue
from domain.access import check_scopes
from domain.errors import InvalidValue


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
        request: Request[Any, Any, State],
        access: NamedDependency[SessionAccess],
        data: JSONBody[CreateKeyIn | None] = None,
    ) -> KeyCreatedOut:
        """Create a key for this session; the key itself is shown only in this answer.

        With `scopes` it may do only that (left out: everything); with `expiresAt` or
        `ttlSeconds` it stops working then (401 everywhere). A session key creates keys with
        no scope it lacks and no later expiry than its own (403 `key-exceeds-issuer`)."""
        ctx = context(request)
        data = data if data is not None else CreateKeyIn()
        scopes, expires_at = key_terms(data.scopes, data.expires_at, data.ttl_seconds)
        issued = await call(
            partial(ctx.app.issue_key, scopes=scopes, expires_at=expires_at),
            access.session.session_id,
            data.label,
            access.actor,
        )
        await settle(ctx, issued.position)
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
        self, request: Request[Any, Any, State], access: NamedDependency[SessionAccess]
    ) -> KeyListOut:
        """The session's keys: id, prefix, label, creation, last use; never the key."""
        ctx = context(request)
        rows = await call(ctx.read_models.keys_of, access.session.session_id)
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
        request: Request[Any, Any, State],
        access: NamedDependency[SessionAccess],
        key_id: FromPath[str],
    ) -> None:
        """Revoke a key; once this answers, no server accepts it. Revoking twice is harmless:
        a repeat answers like the first revocation (204 once it is in force everywhere)."""
        await revoke_key(context(request), access.session.session_id, key_id, access.actor)
