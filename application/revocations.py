"""Which events take keys out of service, as the recorder writes them beside the events.

A key stops working when `ApiKeyRevoked` or `KeysRevoked` names it, or when its session is
`Deleted`. Those events are handed to the recorder with their `Revocation`s (the keyword
argument `REVOCATIONS`), so a recorder that keeps revocations apart from the log writes them
in the very transaction that records the events: a key check that reads them never depends
on a projection having caught up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

from domain.session import Session
from domain.values import public_session_id

#: The keyword argument of `insert_events` that carries the revocations of a save.
REVOCATIONS = "revocations"
#: The stored topics of the events that revoke keys (a recorder refuses to record one of
#: them without its revocation).
REVOCATION_TOPICS = frozenset(
    get_topic(cls) for cls in (Session.ApiKeyRevoked, Session.KeysRevoked, Session.Deleted)
)


@dataclass(frozen=True)
class Revocation:
    """What one recorded event takes out of service: keys by id, or the whole session."""

    originator_id: UUID
    originator_version: int
    session_id: str  # the public id (sess_…)
    key_ids: tuple[str, ...] = ()
    session_deleted: bool = False


def revocations_in(events: Iterable[Any]) -> list[Revocation]:
    """The revocations among `events` (domain events about to be recorded), in order."""
    found = []
    for event in events:
        if isinstance(event, Session.ApiKeyRevoked):
            key_ids: tuple[str, ...] = (event.key_id,)
        elif isinstance(event, Session.KeysRevoked):
            key_ids = tuple(event.key_ids)
        elif isinstance(event, Session.Deleted):
            key_ids = ()
        else:
            continue
        found.append(
            Revocation(
                originator_id=event.originator_id,
                originator_version=event.originator_version,
                session_id=public_session_id(event.originator_id),
                key_ids=key_ids,
                session_deleted=isinstance(event, Session.Deleted),
            )
        )
    return found
