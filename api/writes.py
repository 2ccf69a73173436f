"""Read-your-writes: the answer to a command waits until what it recorded is in the views
that every API process reads, so that the client's next request sees it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from api.problems import ProblemError
from application.sessions import SessionsApplication
from domain.errors import SessionIsDeleted
from projections.readmodels import ReadModels

log = logging.getLogger(__name__)
T = TypeVar("T")


async def call(function: Callable[..., T], *args: Any) -> T:
    """Run a blocking application command in a worker thread."""
    return await asyncio.to_thread(function, *args)


class Writes:
    """Answers to commands that read their own writes: each waits, within `timeout` seconds,
    until what the command recorded is in the views every API process reads."""

    def __init__(self, app: SessionsApplication, read_models: ReadModels, timeout: float) -> None:
        self.app = app
        self.read_models = read_models
        self.timeout = timeout

    async def settle(self, position: int | None, *, revocation: bool = False) -> None:
        """Wait until the views this client reads next include `position` (read-your-writes).

        The client's next request may reach any API process behind a load balancer, so this
        waits until every live API process has the change. For a `revocation` it first waits
        until every live API process has the revocation in force (it refuses the key, or every
        session key): that never depends on a projection, and no 2xx is answered before it
        holds.
        """
        if position is None:
            return
        deadline = time.monotonic() + self.timeout
        if revocation and not await self.read_models.wait_revoked_everywhere(
            position, self.timeout
        ):
            log.warning(
                "a revocation (position %s) was not in force everywhere within %ss",
                position,
                self.timeout,
            )
            raise ProblemError(
                503,
                "views-lagging",
                f"the revocation was recorded (position {position}) but not every server has "
                f"it in force within {self.timeout} s; send the same request again",
                {"Retry-After": "1"},
            )
        left = max(0.0, deadline - time.monotonic())
        if not await self.read_models.wait_everywhere(position, left):
            log.warning("views did not reach position %s within %ss", position, self.timeout)
            in_force = "; the revocation is in force on every server" if revocation else ""
            raise ProblemError(
                503,
                "views-lagging",
                f"the change was recorded (position {position}) but the views have not caught "
                f"up within {self.timeout} s{in_force}; read it again shortly",
                {"Retry-After": "1"},
            )

    async def revoke_key(self, session_id: str, key_id: str, actor: str) -> None:
        """Revoke a key and answer once it is in force everywhere. A key revoked before (a
        retry) records nothing, and waits for the revocation recorded then, as the first try
        did."""
        position = await call(self.app.revoke_key, session_id, key_id, actor)
        if position is None:
            position = await call(self.app.recorded_revocation, session_id, key_id)
        await self.settle(position, revocation=True)

    async def delete_session(self, session_id: str, actor: str) -> None:
        """Delete a session (its keys are revoked in the same save) and answer once that is in
        force everywhere. A session deleted before (a retry) waits for that deletion instead."""
        try:
            position = await call(self.app.delete, session_id, actor)
        except SessionIsDeleted:
            position = await call(self.app.recorded_revocation, session_id, None)
        await self.settle(position, revocation=True)

    async def reached(self, view_position: Callable[[], int], position: int) -> bool:
        """Wait, within the write wait, until a view read from PostgreSQL (not copied in this
        process) has processed `position`; False if it has not in time."""
        deadline = time.monotonic() + self.timeout
        pause = 0.002
        while await call(view_position) < position:
            if time.monotonic() > deadline:
                log.warning("a view did not reach position %s in time", position)
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
        return True
