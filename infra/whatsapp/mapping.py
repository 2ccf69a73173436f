"""What neonize reports, in sessiond's words: failures of a start as reasons, errors of a
send, inbound messages and receipts."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from application.errors import (
    GatewayError,
    NotConnected,
    RecipientRejected,
)
from application.ports import InboundMessage
from domain.values import MessageStatus, Reason
from infra.whatsapp.loading import (
    Neonize,
)

#: Signs, in the text of the error a client start returns, that the device store failed and
#: not the link: neonize opens the store (whatsmeow's upgrade check), loads the device, and
#: only then dials. lib/pq's and database/sql's errors, whatsmeow's store errors, SQLite's,
#: and a Unix socket (the store's pooler: WhatsApp is dialled over TCP) that cannot be reached.
STORE_ERROR_SIGNS = (
    "failed to upgrade database",
    "pq: ",
    "sql: ",
    "driver: bad connection",
    "dial unix ",
    "failed to get device",
    "failed to scan",
    "database is locked",
    "unable to open database",
    "no such table",
)


log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


#: Go's words for a dial that failed at the proxy itself: ``proxyconnect tcp: ...`` (an HTTP
#: proxy that cannot be reached) and ``socks connect tcp <proxy>-><target>: ...`` (a SOCKS5
#: proxy that cannot be reached, breaks off, or refuses the credentials) ...
PROXY_ERROR_SIGNS = ("proxyconnect ", "socks connect ")


#: ... unless the SOCKS5 proxy answered that it could not reach the target itself
#: (x/net's ``unknown error <reply>``: general failure, host unreachable, refused...), which
#: is WhatsApp being unreachable from there; a proxy whose rules refuse it is its own failure.
SOCKS_REPLY_ERROR = "unknown error "


SOCKS_RULES_REFUSAL = "not allowed by ruleset"


def start_failure_reason(message: str, own_proxy: bool = False) -> Reason:
    """Why a client start that returned the error `message` failed: the device store, the
    session's own proxy (with `own_proxy`), or (any other error: the dial, the handshake, the
    environment's proxy) WhatsApp being unreachable."""
    if any(sign in message for sign in STORE_ERROR_SIGNS):
        return Reason.STORE_UNAVAILABLE
    if own_proxy and any(sign in message for sign in PROXY_ERROR_SIGNS):
        beyond = SOCKS_REPLY_ERROR in message and SOCKS_RULES_REFUSAL not in message
        return Reason.WHATSAPP_UNREACHABLE if beyond else Reason.PROXY_UNREACHABLE
    return Reason.WHATSAPP_UNREACHABLE


#: whatsmeow's `SendMessage` errors that refuse the recipient itself, so that sending again
#: cannot help. neonize passes on only their text (``SendMessageError(err.Error())``, with
#: whatsmeow's context around it), hence substrings; each is in 0.5.2's Go library.
RECIPIENT_REFUSALS = (
    # WhatsApp knows no account (no LID) for that phone number: not on WhatsApp, or the
    # number is written in a form it does not know; asking again gets the same answer
    "no LID found for",
    "can't send message to unknown server",  # ErrUnknownServer: not a user, group or channel
    "message recipient must be a user JID with no device part",  # ErrRecipientADJID
    "sending to non-status broadcast lists is not yet supported",  # ErrBroadcastListUnsupported
)


#: ... and those saying the client has no link: the socket dropped since `Connected` (whatsmeow
#: reconnects, and `connected` follows), or Go holds no client under its key any more.
NOT_CONNECTED_ERRORS = (
    "websocket not connected",  # ErrNotConnected
    "client is nil",  # ErrClientIsNil
)


#: Chats whose messages are not written to the account: status updates (``status@broadcast``)
#: and the posts of channels it follows (``…@newsletter``).
_NOT_CHATS = frozenset({"broadcast", "newsletter"})


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# neonize 0.5.2 encodes a message's time with Go's UnixMilli and a receipt's (and a send
# response's) with Unix: checked in its Go library, where EncodeMessageInfo multiplies by 1000
# and EncodeReceipts does not (objdump), as in neonize's source (goneonize/utils/encoder.go).
MESSAGE_TIME_UNIT = timedelta(milliseconds=1)


RECEIPT_TIME_UNIT = timedelta(seconds=1)


def send_error(message: str) -> GatewayError:
    """The port's error for whatsmeow's send error `message`: what is not known to refuse
    the recipient or to lack a link may pass (time-outs, ``server returned error <code>``,
    failed user look-ups), so it is a plain `GatewayError`."""
    if any(refusal in message for refusal in RECIPIENT_REFUSALS):
        return RecipientRejected(f"WhatsApp refused the recipient: {message}")
    if any(sign in message for sign in NOT_CONNECTED_ERRORS):
        return NotConnected(f"the session is not connected: {message}")
    return GatewayError(f"WhatsApp did not take the message: {message}")


def instant(timestamp: int, unit: timedelta, clock: Clock) -> datetime:
    """A neonize timestamp (a count of `unit` since the epoch) in UTC; unset: now."""
    return _EPOCH + timestamp * unit if timestamp > 0 else clock()


def _user_jid(nz: Neonize, jid: Any, alt: Any) -> str:
    """`jid` without its device part; a hidden user (``…@lid``) as the phone-number JID that
    WhatsApp gave beside it (`alt`), when it did, since that is what `send_text` takes."""
    if jid.Server == "lid" and alt.User and alt.Server == "s.whatsapp.net":
        jid = alt
    return nz.jid_to_string(nz.jid_to_non_ad(jid))


def inbound_message(nz: Neonize, event: Any, clock: Clock) -> InboundMessage | None:
    """The text message a `MessageEv` carries; None (logged) for anything else."""
    info = event.Info
    source = info.MessageSource
    text = ""
    if source.IsFromMe:
        why = "sent by this account (our own send echoed back, or sent from the phone)"
    elif source.Chat.Server in _NOT_CHATS:
        why = f"not a chat ({nz.jid_to_string(source.Chat)})"
    elif event.IsEdit:
        why = "an edit of an earlier message"
    elif not (text := nz.extract_text(event.Message)):
        why = "no text (media without caption, reaction, protocol message...)"
    if not text:
        log.debug("message %s skipped: %s", info.ID, why)
        return None
    sender = _user_jid(nz, source.Sender, source.SenderAlt)
    chat = nz.jid_to_string(source.Chat)
    if not source.IsGroup and source.Chat.User == source.Sender.User:
        chat = sender  # a one-to-one chat is the sender's: named the same way
    sent_at = instant(info.Timestamp, MESSAGE_TIME_UNIT, clock)
    return InboundMessage(info.ID, sender, chat, text, sent_at, info.Pushname)


def receipt_status(pb: Any, event: Any) -> str | None:
    """The status a `ReceiptEv` gives messages this session sent, or None."""
    # A receipt's MessageSource is its sender's (whatsmeow's parseReceipt reads it from the
    # receipt's "from"): IsFromMe means one of this account's own devices sent it, because the
    # phone read a message it received ("read", "read-self") or got one we sent ("sender"),
    # never a recipient acknowledging ours.
    if event.MessageSource.IsFromMe or not event.MessageIDs:
        return None
    if event.Type == pb.Receipt.DELIVERED:
        return MessageStatus.DELIVERED.value
    if event.Type == pb.Receipt.READ:
        return MessageStatus.READ.value
    # PLAYED is for view-once media and voice notes, never our texts; RETRY, SENDER, the
    # *_SELF types, SERVER_ERROR, INACTIVE, PEER_MSG and HISTORY_SYNC acknowledge nothing.
    return None


def enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)
