"""What a session key may do: its scopes and its expiry, and the rule that a key never grants
more than it holds.

A key without scopes (``None``) has every scope of its session: keys issued before scopes
existed, and keys created without them, keep full access. A key without an expiry never
expires.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum

from domain.errors import DomainError, InvalidValue


class Scope(StrEnum):
    """One part of what a session's API allows."""

    STATUS_READ = "status:read"  # the session, its status, QR code, history, uptime, proxy
    MESSAGES_SEND = "messages:send"
    MESSAGES_READ = "messages:read"
    SESSION_CONTROL = "session:control"  # reconnect, stop, pairing code, proxy changes
    KEYS_MANAGE = "keys:manage"
    WEBHOOKS_MANAGE = "webhooks:manage"


SCOPES: tuple[str, ...] = tuple(scope.value for scope in Scope)


class ExceedsIssuer(DomainError):
    """A key asked to create a key with a scope it lacks, or one that outlives it."""

    code = "key-exceeds-issuer"


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes, known ones only, each once, in `SCOPES`' order; `InvalidValue` if one is
    unknown or none is given (leave scopes out for full access)."""
    wanted = list(scopes)
    unknown = sorted({s for s in wanted if s not in SCOPES})
    if unknown:
        raise InvalidValue(
            f"unknown scope{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"the scopes are {', '.join(SCOPES)}"
        )
    if not wanted:
        raise InvalidValue("give at least one scope, or leave scopes out for full access")
    return [scope for scope in SCOPES if scope in wanted]


def allows(scopes: Iterable[str] | None, scope: str) -> bool:
    """Whether a key with `scopes` (None: every scope) may do what `scope` covers."""
    return scopes is None or scope in scopes


def check_grant(
    issuer_scopes: list[str] | None,
    issuer_expires_at: datetime | None,
    scopes: list[str] | None,
    expires_at: datetime | None,
) -> None:
    """Raise `ExceedsIssuer` unless a key with `scopes` and `expires_at` gives no more than
    its issuer holds: no scope the issuer lacks, and no expiry later than the issuer's."""
    if issuer_scopes is not None:
        if scopes is None:
            raise ExceedsIssuer(
                f"this key has only the scopes {', '.join(issuer_scopes)}: it cannot create a "
                "key with full access; give scopes among its own"
            )
        missing = [scope for scope in scopes if scope not in issuer_scopes]
        if missing:
            raise ExceedsIssuer(
                f"this key lacks the scope{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)}: it cannot give {'them' if len(missing) > 1 else 'it'}"
            )
    if issuer_expires_at is not None:
        if expires_at is None:
            raise ExceedsIssuer(
                f"this key expires at {issuer_expires_at.isoformat()}: it cannot create a key "
                "that never expires; give an expiry at or before its own"
            )
        if expires_at > issuer_expires_at:
            raise ExceedsIssuer(
                f"this key expires at {issuer_expires_at.isoformat()}: it cannot create a key "
                f"that expires later ({expires_at.isoformat()})"
            )
