"""Errors of the application layer (the domain's own errors pass through unchanged)."""


class ApplicationError(Exception):
    """Base class of the application's errors."""

    code = "application-error"


class SessionNotFound(ApplicationError):
    """No session has that id (or it has been deleted)."""

    code = "session-not-found"


class ConcurrentChange(ApplicationError):
    """The session kept changing under the command; the client may retry."""

    code = "concurrent-change"


class SimulatorError(ApplicationError):
    """The simulated phone cannot do that now (e.g. scan when no QR code is shown)."""

    code = "simulator-refused"
