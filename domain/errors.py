"""Errors raised by the domain when a command would break an invariant."""


class DomainError(Exception):
    """Base class of every error the domain raises."""

    code = "domain-error"


class SessionIsDeleted(DomainError):
    """The session has been deleted: nothing more can happen to it."""

    code = "session-deleted"


class InvalidTransition(DomainError):
    """The command does not apply to the session's current status."""

    code = "invalid-transition"


class AlreadyStopped(InvalidTransition):
    """The session is already stopped."""

    code = "already-stopped"


class SessionWasExported(InvalidTransition):
    """The session was exported (`sessiond session export`): its device runs where the file is
    imported, so it is never started here again."""

    code = "session-exported"


class UnknownApiKey(DomainError):
    """The session holds no API key with that id."""

    code = "unknown-api-key"


class InvalidValue(DomainError):
    """A value given to the domain is out of its allowed range."""

    code = "invalid-value"


class QueueFull(DomainError):
    """The session already has as many outbound messages waiting as it may keep."""

    code = "queue-full"


class IdempotencyKeyReused(DomainError):
    """An idempotency key already used for a different message."""

    code = "idempotency-key-reused"


class CapReached(DomainError):
    """A session already holds as many of something (API keys, webhook endpoints) as its cap
    allows; `code` names which cap."""

    code = "cap-reached"

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class InvalidProxy(InvalidValue):
    """A proxy URL that is not one sessiond can dial through."""

    code = "invalid-proxy"
