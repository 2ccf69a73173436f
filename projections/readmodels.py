"""What the API reads: the views as kept current in this process, and read-your-writes waits."""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime

from projections.keys import KeyRow
from projections.status import SessionRow


class ReadModels(ABC):
    """The session status and API-key views as this process sees them."""

    @abstractmethod
    def session(self, session_id: str) -> SessionRow | None:
        """The row of a session (deleted ones included), or None."""

    @abstractmethod
    def sessions(self) -> list[SessionRow]:
        """Every session row, deleted ones included."""

    @abstractmethod
    def key_by_hash(self, key_hash: str) -> KeyRow | None:
        """The key whose SHA-256 hash this is, or None."""

    @abstractmethod
    def accepted_key(self, key_hash: str) -> KeyRow | None:
        """The key whose hash this is if it may be accepted: active in the key view, not
        past its expiry now (the time is compared here, whether the expiry is recorded or
        not), and neither it nor its session revoked by a revocation this copy holds; else
        None."""

    @abstractmethod
    def session_deleted(self, session_id: str) -> bool:
        """Whether the session is deleted (or never was), as the status view or a revocation
        this copy holds says: a key refused because its session was deleted is known as
        such even before the status view has the deletion."""

    @abstractmethod
    def keys_of(self, session_id: str) -> list[KeyRow]:
        """Every key of a session, revoked ones included, with their last use."""

    @abstractmethod
    def note_key_use(self, key_id: str, at: datetime) -> None:
        """Remember that a key was used; written out in batches, never as an event."""

    @abstractmethod
    def is_fresh(self) -> bool:
        """False when this process's copy may be out of date (it must then refuse keys)."""

    @abstractmethod
    async def wait(self, position: int, timeout: float) -> bool:
        """Wait until this process's copy includes `position`; False on timeout."""

    @abstractmethod
    async def wait_everywhere(self, position: int, timeout: float) -> bool:
        """Wait until every live API process's copy includes `position`; False on timeout."""

    @abstractmethod
    async def wait_revoked_everywhere(self, position: int, timeout: float) -> bool:
        """Wait until every live API process holds every revocation up to `position` (or
        refuses session keys); False on timeout. Never waits for a projection."""
