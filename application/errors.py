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


class GatewayError(ApplicationError):
    """The gateway cannot do that for this session now."""

    code = "gateway-refused"


class NotConnected(GatewayError):
    """The session's client is not connected to WhatsApp."""

    code = "not-connected"


class RecipientRejected(GatewayError):
    """WhatsApp refuses to deliver to that recipient (not on WhatsApp, blocked): sending the
    message again will not help."""

    code = "recipient-rejected"


class NotPairing(GatewayError):
    """The session is not pairing (no QR code is being shown), so no pairing code can be made."""

    code = "not-pairing"


class GatewayUnavailable(ApplicationError):
    """No worker answered for the session in time (none running, or it is starting)."""

    code = "gateway-unavailable"


class GatewayFailed(ApplicationError):
    """The worker running the session failed unexpectedly while doing what was asked."""

    code = "gateway-failed"
