"""Recording key expiries: `ApiKeyExpired` for each active key whose time has come.

A key is refused from its expiry on by every API process, which compares the time itself
(`projections.keys.KeyRow.is_usable_at`): nothing here decides access. This records the fact
for the history and the key lists, from the worker role (any number of workers may run it at
once: a key whose expiry is already recorded records nothing again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from application.errors import ApplicationError
from application.sessions import SessionsApplication

log = logging.getLogger(__name__)
#: Keys looked at per tick, at most (the rest wait for the next tick).
BATCH = 500

#: (now, limit) -> (session id, key id) of active keys due to expire, the earliest first.
DueExpiries = Callable[[datetime, int], list[tuple[str, str]]]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class KeyExpiry:
    def __init__(
        self, app: SessionsApplication, due: DueExpiries, clock: Callable[[], datetime] = _utc_now
    ) -> None:
        self.app = app
        self.due = due
        self.clock = clock

    def key_expiry_tick(self) -> int:
        """Record the expiries that have come; how many sessions recorded one."""
        now = self.clock()
        sessions = sorted({session_id for session_id, _ in self.due(now, BATCH)})
        recorded = 0
        for session_id in sessions:
            try:
                if self.app.expire_keys(session_id, now) is not None:
                    recorded += 1
            except ApplicationError as error:  # e.g. it kept changing: the next tick retries
                log.warning("could not record the key expiries of %s: %s", session_id, error)
        return recorded
