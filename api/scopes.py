"""Which scope each route of the API needs from a session key, in one table.

Every route that takes a key is listed here by its ``operationId``: with the scope a session
key must hold to call it (`domain.access.Scope`), or `ADMIN_ONLY` when no session key may. The
admin key holds every scope; a session key created without scopes holds every scope of its
session. The app refuses to start if a route that takes a key is missing here (its OpenAPI
document is built at start-up, `api.openapi`; a test checks that every name here is a
route), and that document shows each route's scope (`x-required-scope`, the security
requirement's list and the description).
"""

from __future__ import annotations

from typing import Any

from domain.access import Scope

#: The table's value for routes only the admin key may call.
ADMIN_ONLY = "admin"

ROUTE_SCOPES: dict[str, str] = {
    # sessions
    "createSession": ADMIN_ONLY,
    "listSessions": ADMIN_ONLY,
    "getSession": Scope.STATUS_READ,
    "getSessionStatus": Scope.STATUS_READ,
    "getSessionQr": Scope.STATUS_READ,
    "requestPairingCode": Scope.SESSION_CONTROL,
    "reconnectSession": Scope.SESSION_CONTROL,
    "stopSession": Scope.SESSION_CONTROL,
    "deleteSession": ADMIN_ONLY,
    "setSessionRateLimit": ADMIN_ONLY,
    "getSessionProxy": Scope.STATUS_READ,
    "setSessionProxy": Scope.SESSION_CONTROL,
    "clearSessionProxy": Scope.SESSION_CONTROL,
    "getSessionSending": Scope.STATUS_READ,
    "setSessionSending": ADMIN_ONLY,
    # history
    "listSessionEvents": Scope.STATUS_READ,
    "getSessionUptime": Scope.STATUS_READ,
    "streamSessionEvents": Scope.STATUS_READ,
    "listEvents": ADMIN_ONLY,
    "streamEvents": ADMIN_ONLY,
    # messages
    "sendMessage": Scope.MESSAGES_SEND,
    "getMessage": Scope.MESSAGES_READ,
    "listMessages": Scope.MESSAGES_READ,
    # keys
    "createSessionKey": Scope.KEYS_MANAGE,
    "listSessionKeys": Scope.KEYS_MANAGE,
    "revokeSessionKey": Scope.KEYS_MANAGE,
    # webhooks
    "createWebhook": Scope.WEBHOOKS_MANAGE,
    "listWebhooks": Scope.WEBHOOKS_MANAGE,
    "getWebhook": Scope.WEBHOOKS_MANAGE,
    "updateWebhook": Scope.WEBHOOKS_MANAGE,
    "deleteWebhook": Scope.WEBHOOKS_MANAGE,
    "rotateWebhookSecret": Scope.WEBHOOKS_MANAGE,
    "listWebhookDeliveries": Scope.WEBHOOKS_MANAGE,
    "retryWebhookDelivery": Scope.WEBHOOKS_MANAGE,
    "replayWebhook": Scope.WEBHOOKS_MANAGE,
    # alerts (a session key: its own session's rules and alerts)
    "createAlertRule": Scope.WEBHOOKS_MANAGE,
    "listAlertRules": Scope.STATUS_READ,
    "getAlertRule": Scope.STATUS_READ,
    "updateAlertRule": Scope.WEBHOOKS_MANAGE,
    "deleteAlertRule": Scope.WEBHOOKS_MANAGE,
    "listAlertRuleEvents": Scope.STATUS_READ,
    "listAlerts": Scope.STATUS_READ,
    # the simulator
    "simulateScan": ADMIN_ONLY,
    "simulateDrop": ADMIN_ONLY,
    "simulateLogout": ADMIN_ONLY,
    "simulateReplace": ADMIN_ONLY,
    "simulateBan": ADMIN_ONLY,
    "simulateOutdated": ADMIN_ONLY,
    "simulateSilence": ADMIN_ONLY,
    # the audit chain
    "verifyAuditChain": ADMIN_ONLY,
    "simulateKeepalive": ADMIN_ONLY,
    "simulateInbound": ADMIN_ONLY,
    "simulateAck": ADMIN_ONLY,
}


def required_scope(handler: Any) -> str:
    """The scope the route of `handler` needs from a session key (or `ADMIN_ONLY`)."""
    operation_id = getattr(handler, "operation_id", None)
    scope = ROUTE_SCOPES.get(operation_id) if isinstance(operation_id, str) else None
    if scope is None:  # `check_route_scopes` refuses such an app at start-up
        raise LookupError(f"the route {operation_id!r} has no scope in api/scopes.py")
    return str(scope)
