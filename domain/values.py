"""Value objects of the domain: statuses, reasons, actors and public identifiers."""

from __future__ import annotations

import re
from enum import StrEnum
from uuid import UUID, uuid4

from domain.errors import InvalidValue

MAX_REQUESTS_PER_MINUTE = 100_000
SESSION_ID_PREFIX = "sess_"
_SESSION_ID = re.compile(r"^sess_[0-9a-f]{32}$")


class Status(StrEnum):
    """What a client sees of a session's link to WhatsApp."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    EXPIRED = "expired"


class DesiredState(StrEnum):
    """What the operator wants the session to be."""

    RUNNING = "running"
    STOPPED = "stopped"
    DELETED = "deleted"


class DeadlineKind(StrEnum):
    """What a deadline of a session asks its worker to do when it is due."""

    RETRY = "retry"  # connect again, as the reconnect policy planned
    QR_EXPIRY = "qr_expiry"  # the QR code's expiry was never reported: expire it
    LOGOUT = "logout"  # the session was deleted: log its device out
    START_CHECK = "start_check"  # a start with no news for too long: record it failed
    SEND = "send"  # the session has messages waiting: send them if it is connected


class Reason(StrEnum):
    """Why a session is not (or no longer) connected; carried into the status.

    The reconnect policy (`domain.policy`) decides from the reason whether and when the
    service tries again.
    """

    STOPPED = "stopped"  # the operator stopped it
    DELETED = "deleted"  # the operator deleted it
    QR_EXPIRED = "qr_expired"  # every QR code expired without a scan: needs a reconnect
    CONNECTION_LOST = "connection_lost"  # the link dropped: retried with backoff
    WHATSAPP_UNREACHABLE = "whatsapp_unreachable"  # no connection could be made: retried
    PROXY_UNREACHABLE = "proxy_unreachable"  # the session's own proxy failed: retried
    CONNECT_FAILURE = "connect_failure"  # WhatsApp refused the connection: retried
    STORE_UNAVAILABLE = "store_unavailable"  # the device store (its database) failed: retried
    LOGGED_OUT = "logged_out"  # unlinked from the phone: needs a new QR code
    DEVICE_UNLINKED = "device_unlinked"  # the stored device is gone: needs a new QR code
    STREAM_REPLACED = "stream_replaced"  # another client took the device over: not fought
    TEMPORARILY_BANNED = "temporarily_banned"  # retried when the ban ends
    CLIENT_OUTDATED = "client_outdated"  # WhatsApp refuses this client version: not retried
    PAIRING_FAILED = "pairing_failed"  # the phone could not complete the pairing
    SERVICE_RESTARTED = "service_restarted"  # the gateway restarted; resumed at once
    GATEWAY_LOST = "gateway_lost"  # the worker that held the session died; taken over
    HANDED_OVER = "handed_over"  # its worker handed it to another (rebalance, stop): resumed
    EXPORTED = "exported"  # moved to another deployment (`sessiond session export`): never resumed
    SILENT = "silent"  # connected, but nothing came and the active check failed: recycled


ADMIN_ACTOR = "admin"
GATEWAY_ACTOR = "gateway"


def key_actor(key_id: str) -> str:
    """The actor recorded for an event that a request made with a session key caused."""
    return f"key:{key_id}"


def key_id_of(actor: str) -> str | None:
    """The key id of an actor that is a session key (`key_actor`), else None."""
    kind, sep, key_id = actor.partition(":")
    return key_id if sep and kind == "key" else None


def public_session_id(session_uuid: UUID) -> str:
    return SESSION_ID_PREFIX + session_uuid.hex


def session_uuid(public_id: str) -> UUID:
    """Parse a public session id (``sess_<32 hex>``); raise `InvalidValue` if malformed."""
    if not _SESSION_ID.fullmatch(public_id):
        raise InvalidValue(f"{public_id!r} is not a session id (sess_ followed by 32 hex digits)")
    return UUID(hex=public_id[len(SESSION_ID_PREFIX) :])


def is_session_id(public_id: str) -> bool:
    return bool(_SESSION_ID.fullmatch(public_id))


def prefixed_uuid(public_id: str, prefix: str) -> UUID | None:
    """The UUID of a public id made of `prefix` and 32 hex digits, or None if it is not one."""
    hexpart = public_id.removeprefix(prefix)
    if not public_id.startswith(prefix) or len(hexpart) != 32:
        return None
    try:
        return UUID(hex=hexpart)
    except ValueError:
        return None


MAX_NAME_LENGTH = 100
MAX_LABELS = 16
_LABEL_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def clean_name(name: str) -> str:
    """A session name trimmed of surrounding space; raise `InvalidValue` if unusable."""
    cleaned = name.strip()
    if not cleaned:
        raise InvalidValue("name must not be empty")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise InvalidValue(f"name must be at most {MAX_NAME_LENGTH} characters")
    if any(not c.isprintable() for c in cleaned):
        raise InvalidValue("name must not contain control characters")
    return cleaned


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Labels as given, if each key and value is a short token; else raise `InvalidValue`."""
    if len(labels) > MAX_LABELS:
        raise InvalidValue(f"a session has at most {MAX_LABELS} labels")
    for key, value in labels.items():
        for part in (key, value):
            if not _LABEL_PART.fullmatch(part):
                raise InvalidValue(
                    f"label {key!r}: keys and values are 1-63 letters, digits, '_', '.' or '-'"
                )
    return dict(labels)


class MessageStatus(StrEnum):
    """Where an outbound message is: queued → sent → delivered → read, or failed.

    Inbound messages are ``received``.
    """

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    RECEIVED = "received"


class FailureReason(StrEnum):
    """Why an outbound message was not sent."""

    REJECTED = "rejected"  # WhatsApp refused the recipient (not on WhatsApp, blocked)
    SEND_FAILED = "send_failed"  # every try failed (timeouts, server errors)
    SESSION_DELETED = "session_deleted"  # the session was deleted with it still queued
    SESSION_EXPORTED = "session_exported"  # the session was exported with it still queued


MESSAGE_ID_PREFIX = "msg_"
_MESSAGE_ID = re.compile(r"^msg_[0-9a-f]{32}$")
#: The longest text sessiond sends (WhatsApp's own limit is higher; long texts are rarely
#: delivered well and make the queue heavy).
MAX_TEXT_LENGTH = 4096
#: Outbound messages a session keeps waiting at most; more are refused until it drains.
MAX_QUEUED_MESSAGES = 1000
#: Chats that may receive a message: a user (``<digits>@s.whatsapp.net``) or a group
#: (``<digits>-<digits>@g.us`` or ``<digits>@g.us``).
_RECIPIENT = re.compile(r"^(?:\d{5,20}@s\.whatsapp\.net|\d{5,20}(?:-\d{5,20})?@g\.us)$")


def new_message_id() -> str:
    return MESSAGE_ID_PREFIX + uuid4().hex


def is_message_id(public_id: str) -> bool:
    return bool(_MESSAGE_ID.fullmatch(public_id))


def check_recipient(to: str) -> str:
    """A chat JID that a message can go to; raise `InvalidValue` if it is not one."""
    if not _RECIPIENT.fullmatch(to):
        raise InvalidValue(
            f"{to!r} is not a recipient: give a phone number in international format, "
            "a user JID (<digits>@s.whatsapp.net) or a group JID (<id>@g.us)"
        )
    return to


def check_text(text: str) -> str:
    """A text that can be sent; raise `InvalidValue` if it is empty or too long."""
    if not text.strip():
        raise InvalidValue("text must not be empty")
    if len(text) > MAX_TEXT_LENGTH:
        raise InvalidValue(f"text must be at most {MAX_TEXT_LENGTH} characters (got {len(text)})")
    if "\x00" in text:
        raise InvalidValue("text must not contain NUL characters")
    return text
