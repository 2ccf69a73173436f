"""The neonize gateway: the `WhatsAppGateway` port on neonize 0.5.2's sync `NewClient`.

neonize wraps whatsmeow (Go) in a shared library. The hazards this adapter is built around,
all verified on 0.5.2 (see ``research/neonize.md``):

- **Go panics abort the whole process.** `get_me()` on a client that is not connected, or
  resuming a JID the store does not hold, kills every session. So the adapter never calls Go
  for a client that has not reported `Connected` (send, logout), takes the device JID and push
  name from the `Device` event neonize delivers first (``client.me``), and looks the JID up in
  the store (our own SQL, not Go) before resuming it.
- **`connect()` blocks for the client's whole life**, so each client runs on a daemon thread
  of its own; it returns only after `stop()`. whatsmeow emits no Python event when the QR codes
  run out: the status arrives on neonize's private login-status callback, which the
  `SessionClient` subclass overrides (``_NewClient__onLoginStatus``, name-mangled: re-check on
  every upgrade). After a QR timeout, a logout, a replaced stream or a ban the client is
  useless and would block for ever, so the adapter stops it (from another thread: Go is
  calling us on its own thread then).
- **Handlers run on Go's thread and hold it up**: they only put a report on a queue; one
  dispatcher thread per gateway makes the `GatewayEvents` calls, so a slow recording never
  blocks whatsmeow. neonize holds bound methods *weakly* (they vanish silently when their
  object is collected), so handlers are closures. Handlers must be registered before
  `connect()`, which sends the subscribed event codes to Go.
- **One client per Go key.** A client's Go key is its `uuid`, and for a resumed device it is
  forced to the JID's user part (``user:device``), so a restart reuses it. Each `NewClient`
  registers a GC finalizer that calls Go's ``Stop(uuid)``: an old client collected after a
  new one with the same key started would stop the new one. The adapter stops old clients
  itself and detaches their finalizer. Every start gets a new generation; reports of an
  older generation (a stopped or restarted client) are dropped by the dispatcher.
- **Messages.** Only texts written to the account are reported (not our own sends echoed back,
  status updates, edits, media without a caption), and only the receipts a recipient's device
  sends for what we sent (delivered, read). whatsmeow's send errors reach Python as text only,
  so `send_text` tells a refused recipient from a failure that may pass by their wording
  (`RECIPIENT_REFUSALS`: re-check on every upgrade).
- **neonize's client maps have no lock.** Go keeps its clients, stop functions and event
  channels in plain maps, written when a client starts (`Neonize`) and stops (`Stop`): two
  starts at once abort the process ("concurrent map writes", seen with 20 clients starting
  together). `GoEntry` lets one client at a time into that phase.
- **Every start opens a store that is never closed** (a Go connection pool, one connection
  kept for ever): the store is reached through the worker's PgBouncer
  (`infra.whatsapp.devicestore`), and a session whose last start could not reach WhatsApp is started
  again in Go only once `LinkCheck` finds WhatsApp's first hop answering; until then each
  retry reports the check's answer. A start that failed in the store (lib/pq's or whatsmeow's
  store errors) is reported as `store_unavailable`, not as WhatsApp being unreachable.
- **Proxies.** whatsmeow dials through the proxy given to `connect()` (neonize's
  ``ProxySettings``; ``set_proxy_address`` needs a client Go already holds, which it does only
  once `connect()` runs). Without one, Go's HTTP transport takes ``HTTPS_PROXY`` from the
  environment, and with a SOCKS5 one it *still* does: it would dial the environment's proxy
  through the session's. So Go is loaded without the proxy variables (it copies the
  environment when the library loads) and every client gets its proxy explicitly: the
  session's own, else the environment's for WhatsApp's host (`LinkCheck.default_proxy`, Go's
  rules), else none. A start that fails to reach the session's own proxy is reported as
  ``proxy_unreachable``; messages never carry its password.
- **Importing neonize configures the root logger** (`logging.basicConfig` at INFO with a
  handler of its own): `import_neonize()` imports it lazily and puts the root logger back.
- **The store.** whatsmeow's tables live in a schema of the service's PostgreSQL database
  (``search_path=whatsmeow``; only one such schema per database works), reached through
  lib/pq with its own DSN syntax (`store_dsn_from_url`). Its schema upgrade races when run
  concurrently on a fresh store: `prepare_store` runs it once at boot, under an advisory
  lock. Devices are looked up and deleted with SQL (Go's listing opens a new connection pool
  per call and never closes it: the upgrade goes through the pooler too).

Known limit, read in neonize's Go source and not verifiable offline: once a pairing client's
QR loop ends without a scan (timeout, or a stop), neonize's Go call waits for a device ID
that never comes, so `connect()` may never return; it runs that call on a *non-daemon*
thread, which would then hold up interpreter exit (a worker should end with `os._exit`).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from application.errors import (
    ConcurrentChange,
    GatewayError,
    NotConnected,
    NotPairing,
    RecipientRejected,
)
from application.ports import GatewayEvents, InboundMessage, SentMessage, WhatsAppGateway
from domain.proxy import hide_password, parse_proxy_url
from domain.values import MessageStatus, Reason
from infra.whatsapp.devicestore import DeviceStorePool
from infra.whatsapp.link import LinkCheck

log = logging.getLogger(__name__)

STORE_SCHEMA = "whatsmeow"
DEVICE_TABLE = "whatsmeow_device"
#: How long `stop` waits for a report being delivered, so none arrives after it returns.
DELIVERY_BARRIER_SECONDS = 2.0

Spawn = Callable[[Callable[[], None], str], None]
ClientFactory = Callable[..., Any]
Clock = Callable[[], datetime]
Deliver = Callable[[GatewayEvents], object]
_Ending = tuple[Reason, str, datetime | None]  # reason, detail, not_before


# -- neonize, imported lazily ------------------------------------------------------------------


@dataclass(frozen=True)
class Neonize:
    """The parts of neonize the gateway uses (neonize is untyped: `Any` stops here)."""

    new_client: Any
    client_factory: Any
    events: Any  # the neonize.events module: the event classes and their codes
    pb: Any  # neonize.proto.Neonize_pb2
    message: Any  # waE2E Message
    jid_to_string: Callable[[Any], str]
    jid_to_non_ad: Callable[[Any], Any]  # a copy of the JID without its device part
    build_jid: Callable[..., Any]
    extract_text: Callable[[Any], str]  # a waE2E Message's text, or its media's caption
    client_name: Any
    neonize_error: type[Exception]
    send_message_error: type[Exception]  # what `send_message` raises (a `neonize_error`)
    session_client: Any  # `SessionClient`, defined once neonize is imported
    proxy_settings: Any  # `ProxySettings(proxy_address=...)`, what `connect()` takes


_neonize: Neonize | None = None
_import_lock = threading.Lock()
#: What Go's HTTP transport reads from the environment to choose a proxy (x/net/http/httpproxy).
GO_PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "REQUEST_METHOD",
)


@contextmanager
def _without_proxy_environment() -> Iterator[None]:
    """Hide the proxy variables while Go loads (it copies the environment then), so that
    whatsmeow never adds the environment's proxy behind a session's own; the adapter passes
    the environment's proxy to the clients that have none (see the module's docstring)."""
    saved = {name: os.environ.pop(name) for name in GO_PROXY_VARIABLES if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def import_neonize() -> Neonize:
    """Import neonize once and return what the gateway uses, leaving the root logger as it
    was (neonize's import calls `logging.basicConfig`, adding a handler and setting INFO)."""
    global _neonize  # noqa: PLW0603 - a process-wide, import-once cache
    with _import_lock:
        if _neonize is not None:
            return _neonize
        root = logging.getLogger()
        level, handlers = root.level, list(root.handlers)
        try:
            with _without_proxy_environment():
                import neonize.events  # noqa: PLC0415
                from neonize.client import ClientFactory as GoClientFactory  # noqa: PLC0415
                from neonize.client import NewClient, ProxySettings  # noqa: PLC0415
                from neonize.exc import NeonizeError, SendMessageError  # noqa: PLC0415
                from neonize.proto import Neonize_pb2  # noqa: PLC0415
                from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message  # noqa: PLC0415
                from neonize.utils.enum import ClientName  # noqa: PLC0415
                from neonize.utils.jid import Jid2String, JIDToNonAD, build_jid  # noqa: PLC0415
                from neonize.utils.message import extract_text  # noqa: PLC0415
        finally:
            root.setLevel(level)
            root.handlers[:] = handlers
        # sessiond sends text only: neonize's warning that ffmpeg (for media) is missing,
        # logged at every connect, would only confuse an operator.
        logging.getLogger("neonize.utils.ffmpeg").setLevel(logging.ERROR)
        _neonize = Neonize(
            new_client=NewClient,
            client_factory=GoClientFactory,
            events=neonize.events,
            pb=Neonize_pb2,
            message=Message,
            jid_to_string=Jid2String,
            jid_to_non_ad=JIDToNonAD,
            build_jid=build_jid,
            extract_text=extract_text,
            client_name=ClientName,
            neonize_error=NeonizeError,
            send_message_error=SendMessageError,
            session_client=_define_session_client(NewClient),
            proxy_settings=ProxySettings,
        )
        return _neonize


def _define_session_client(new_client: Any) -> Any:
    class SessionClient(new_client):  # type: ignore[misc]
        """A `NewClient` that hands whatsmeow's login status to `on_login_status`.

        neonize 0.5.2 passes the QR channel's end states (``success``, ``timeout``,
        ``err-client-outdated``, ``err-scanned-without-multidevice``, ``error``...) to the
        private ``__onLoginStatus``, which only prints a pointer. `connect()` looks the
        callback up as ``self._NewClient__onLoginStatus`` (name mangling), so this override
        receives them; it is the only way to learn that the QR codes ran out.
        """

        on_login_status: Callable[[str], None] | None = None

        def _NewClient__onLoginStatus(self, uuid: int | None, status: int | None) -> None:  # noqa: N802
            text = ctypes.string_at(status).decode("utf-8", "replace") if status else ""
            callback = self.on_login_status
            if callback is not None:
                callback(text)

    return SessionClient


def session_client_class() -> Any:
    """The `NewClient` subclass the gateway builds; a `client_factory` must return one."""
    return import_neonize().session_client


def _default_factory(
    store_dsn: str, *, jid: Any = None, uuid: str | None = None, new_device: bool = False
) -> Any:
    return session_client_class()(store_dsn, jid=jid, uuid=uuid, new_device=new_device)


def _spawn_daemon(target: Callable[[], None], name: str) -> None:
    threading.Thread(target=target, name=name, daemon=True).start()


# -- the store ---------------------------------------------------------------------------------

_LIBPQ_PASSTHROUGH = ("connect_timeout", "application_name", "sslcert", "sslkey", "sslrootcert")


def store_dsn_from_url(
    database_url: str, schema: str = STORE_SCHEMA, *, pooled: bool = False
) -> str:
    """The lib/pq DSN of the whatsmeow store in the database of `database_url`.

    `database_url` is anything libpq takes (``postgresql://...`` or ``key=value`` conninfo,
    possibly with a Unix-socket directory as host). lib/pq wants a ``postgres://`` URL; a
    socket directory goes in the query (``?host=/dir&port=5432``). lib/pq knows no
    ``prefer``/``allow`` SSL modes and defaults to ``require``: those and a missing mode
    become ``disable``. Other query parameters, ``search_path`` here, become server settings.
    `pooled`: the URL is a PgBouncer in transaction mode (`infra.whatsapp.devicestore`), so lib/pq
    must send each query in one round trip (``binary_parameters=yes``).
    """
    params = {k: str(v) for k, v in conninfo_to_dict(database_url).items() if v is not None}
    user = params.get("user", "")
    password = params.get("password", "")
    host = params.get("host", "localhost").split(",")[0]
    port = params.get("port", "5432").split(",")[0]
    dbname = params.get("dbname", user)
    userinfo = quote(user, safe="")
    if password:
        userinfo += ":" + quote(password, safe="")
    query: dict[str, str] = {}
    if host.startswith("/"):
        netloc = f"{userinfo}@"
        query.update(host=host, port=port)
    else:
        shown = f"[{host}]" if ":" in host else host
        netloc = f"{userinfo}@{shown}:{port}"
    sslmode = params.get("sslmode", "disable")
    query["sslmode"] = "disable" if sslmode in ("prefer", "allow") else sslmode
    query.update({key: params[key] for key in _LIBPQ_PASSTHROUGH if key in params})
    query["search_path"] = schema
    if pooled:
        query["binary_parameters"] = "yes"
    return f"postgres://{netloc}/{quote(dbname, safe='')}?{urlencode(query)}"


def is_postgres_dsn(store_dsn: str) -> bool:
    """neonize's rule: a store name starting with ``postgres`` is lib/pq, else a SQLite path."""
    return store_dsn.startswith("postgres")


def _pg_connect_args(store_dsn: str) -> tuple[dict[str, Any], str]:
    """psycopg keyword arguments and the schema for a lib/pq store DSN."""
    parts = urlsplit(store_dsn)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    schema = query.pop("search_path", "public").split(",")[0].strip() or "public"
    query.pop("binary_parameters", None)  # lib/pq's own
    args: dict[str, Any] = {"dbname": unquote(parts.path.lstrip("/"))}
    if parts.username:
        args["user"] = unquote(parts.username)
    if parts.password:
        args["password"] = unquote(parts.password)
    if parts.hostname:
        args["host"] = parts.hostname
    if parts.port:
        args["port"] = str(parts.port)
    args.update(query)  # host/port of a socket directory, sslmode, connect_timeout...
    args.setdefault("connect_timeout", "10")
    return args, schema


def _device_query(template: str, store_dsn: str, jid: str) -> bool:
    """Run `template` (``{table}`` placeholder, one ``%s``/``?`` for the JID) on the store;
    True if it matched a row. A store without the device table holds no device."""
    if is_postgres_dsn(store_dsn):
        args, schema = _pg_connect_args(store_dsn)
        statement = sql.SQL(template).format(table=sql.Identifier(schema, DEVICE_TABLE))
        with psycopg.connect(autocommit=True, **args) as conn:
            try:
                return conn.execute(statement, (jid,)).rowcount > 0
            except psycopg.errors.UndefinedTable:
                return False
    try:
        # mode=rw: never create a store file just to look into it
        lite = sqlite3.connect(f"file:{store_dsn}?mode=rw", uri=True)
    except sqlite3.OperationalError:
        return False
    try:
        lite.execute("PRAGMA foreign_keys = ON")  # whatsmeow's other tables cascade
        with lite:
            cursor = lite.execute(template.format(table=DEVICE_TABLE).replace("%s", "?"), (jid,))
            return cursor.rowcount > 0 or bool(cursor.fetchall())
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return False
        raise
    finally:
        lite.close()


def device_stored(store_dsn: str, jid: str) -> bool:
    """Whether the store holds device `jid` (``user:device@server``), by SQL, not Go."""
    return _device_query("SELECT 1 FROM {table} WHERE jid = %s", store_dsn, jid)


def delete_device(store_dsn: str, jid: str) -> bool:
    """Delete device `jid` from the store (its keys and sessions cascade); True if it was
    there. The device can never be resumed afterwards."""
    return _device_query("DELETE FROM {table} WHERE jid = %s", store_dsn, jid)


class StoreError(RuntimeError):
    """The whatsmeow store could not be opened or upgraded."""


def upgrade_store(store_dsn: str) -> set[str]:
    """Run whatsmeow's schema upgrade on `store_dsn` through Go, once, and return the JIDs of
    the stored devices (``user:device@server``, the form `start` takes)."""
    nz = import_neonize()
    try:
        devices = nz.client_factory.get_all_devices_from_db(store_dsn)
    except ValueError as exc:
        # Go answers "error: ..." and neonize fails to parse that as a device row.
        raise StoreError(
            "the whatsmeow store could not be opened or upgraded (neonize hides Go's "
            "message; check the DSN, the schema and the database's permissions)"
        ) from exc
    return {nz.jid_to_string(device.JID) for device in devices}


#: The advisory lock held while whatsmeow upgrades its schema (an arbitrary constant).
STORE_UPGRADE_LOCK = 0x5E5510D_0057


def prepare_store(database_url: str, store_dsn: str | None = None) -> set[str]:
    """Create the store's schema in the service's database and upgrade it; call once at boot,
    before any client starts. Returns the JIDs of the stored devices. Go reaches the store
    through `store_dsn` (the pooler's) when given: the pool it opens is never closed.

    whatsmeow's upgrade races with itself (``table ... already exists``): an advisory lock
    keeps workers booting together from running it at the same time.
    """
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (STORE_UPGRADE_LOCK,))
        try:
            schema = sql.Identifier(STORE_SCHEMA)
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
            return upgrade_store(store_dsn or store_dsn_from_url(database_url))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (STORE_UPGRADE_LOCK,))


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


#: The longest a client start keeps the others out of Go (its map writes take milliseconds,
#: then it may wait on the network).
GO_ENTRY_HOLD = 0.25


class GoEntry:
    """One neonize client at a time in the phase where Go writes its unsynchronised maps.

    `enter` waits until the previous entrant has passed that phase (it sets its event when Go
    answers: the call returned, or a first callback came, or at most `hold` seconds), then
    returns the caller's own event, to set in turn.
    """

    def __init__(self, hold: float = GO_ENTRY_HOLD) -> None:
        self.hold = hold
        self._lock = threading.Lock()
        self._current: threading.Event | None = None

    def enter(self) -> threading.Event:
        with self._lock:
            previous = self._current
            if previous is not None:
                previous.wait(self.hold)
            self._current = threading.Event()
            return self._current

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Run a short Go call that writes the maps (``Stop``) alone."""
        passed = self.enter()
        try:
            yield
        finally:
            passed.set()


#: Go's maps are the process's: every gateway of the process shares the entry.
GO_ENTRY = GoEntry()


# -- messages ----------------------------------------------------------------------------------

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
_MESSAGE_TIME_UNIT = timedelta(milliseconds=1)
_RECEIPT_TIME_UNIT = timedelta(seconds=1)


def _send_error(message: str) -> GatewayError:
    """The port's error for whatsmeow's send error `message`: what is not known to refuse
    the recipient or to lack a link may pass (time-outs, ``server returned error <code>``,
    failed user look-ups), so it is a plain `GatewayError`."""
    if any(refusal in message for refusal in RECIPIENT_REFUSALS):
        return RecipientRejected(f"WhatsApp refused the recipient: {message}")
    if any(sign in message for sign in NOT_CONNECTED_ERRORS):
        return NotConnected(f"the session is not connected: {message}")
    return GatewayError(f"WhatsApp did not take the message: {message}")


def _instant(timestamp: int, unit: timedelta, clock: Clock) -> datetime:
    """A neonize timestamp (a count of `unit` since the epoch) in UTC; unset: now."""
    return _EPOCH + timestamp * unit if timestamp > 0 else clock()


def _user_jid(nz: Neonize, jid: Any, alt: Any) -> str:
    """`jid` without its device part; a hidden user (``…@lid``) as the phone-number JID that
    WhatsApp gave beside it (`alt`), when it did, since that is what `send_text` takes."""
    if jid.Server == "lid" and alt.User and alt.Server == "s.whatsapp.net":
        jid = alt
    return nz.jid_to_string(nz.jid_to_non_ad(jid))


def _inbound(nz: Neonize, event: Any, clock: Clock) -> InboundMessage | None:
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
    sent_at = _instant(info.Timestamp, _MESSAGE_TIME_UNIT, clock)
    return InboundMessage(info.ID, sender, chat, text, sent_at, info.Pushname)


def _receipt_status(pb: Any, event: Any) -> str | None:
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


# -- the gateway -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Link:
    """One client of one session, from `start` until it is stopped or replaced."""

    session_id: UUID
    generation: int
    client: Any
    device_jid: str | None
    pairing: bool  # a new device: shows QR codes until scanned
    qr_count: int = 0
    connected: bool = False
    ended: bool = False  # final report made or stop requested: report nothing more
    stopped: bool = False  # client.stop() called (or skipped for good)
    entered: bool = False  # the client's start was handed to Go
    passed: threading.Event | None = None  # set once Go has answered the start
    proxy: str | None = None  # the session's own proxy (full URL), if it has one

    @property
    def proxy_password(self) -> str:
        return parse_proxy_url(self.proxy).password if self.proxy else ""


@dataclass(frozen=True)
class _Report:
    session_id: UUID
    generation: int
    deliver: Deliver
    # A message or a receipt: whatsmeow has already acknowledged it to WhatsApp, so it is
    # recorded whichever client (even one stopped or replaced since) reported it, and a
    # recording that fails is tried again (a repeat is recognised by WhatsApp's id).
    fact: bool = False


#: Pauses before recording a message or receipt again after a failure (then it is logged).
FACT_RETRY_PAUSES = (0.2, 1.0, 3.0)


class NeonizeGateway(WhatsAppGateway):
    """WhatsApp through neonize: one `NewClient` (and one thread) per running session."""

    def __init__(
        self,
        store_dsn: str,
        *,
        client_factory: ClientFactory | None = None,
        spawn: Spawn | None = None,
        clock: Clock | None = None,
        first_timeout: float = 60.0,
        next_timeout: float = 20.0,
        max_codes: int = 6,
        link_check: LinkCheck | None = None,
        pool: DeviceStorePool | None = None,
    ) -> None:
        self.store_dsn = store_dsn
        self.first_timeout = first_timeout
        self.next_timeout = next_timeout
        self.max_codes = max_codes
        self._factory: ClientFactory = client_factory or _default_factory
        self._spawn: Spawn = spawn or _spawn_daemon
        self._clock: Clock = clock or (lambda: datetime.now(UTC))
        self._events: GatewayEvents | None = None
        self._links: dict[UUID, _Link] = {}
        self._generations = itertools.count(1)
        # _control serialises start/stop/logout; _lock guards _links and the links' flags and
        # is never held while calling Go or the events; neonize's handlers take only _lock.
        self._control = threading.RLock()
        self._lock = threading.RLock()
        self._delivery = threading.RLock()  # held while a report is delivered
        self._queue: queue.Queue[_Report | threading.Event | None] = queue.Queue()
        self._dispatcher: threading.Thread | None = None
        self._link_check = link_check or LinkCheck()
        self._pool = pool  # closed with the gateway
        self._entry = GO_ENTRY
        # Sessions whose last start in Go could not reach WhatsApp: checked before the next.
        self._unreachable: set[UUID] = set()

    # -- the port ----------------------------------------------------------------------------

    def bind(self, events: GatewayEvents) -> None:
        self._events = events
        with self._lock:
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(
                    target=self._dispatch, name="neonize-dispatcher", daemon=True
                )
                self._dispatcher.start()

    def start(self, session_id: UUID, device_jid: str | None, proxy: str | None = None) -> None:
        if self._events is None:
            raise RuntimeError("bind() the gateway before starting sessions")
        with self._control:
            self._stop_link(self._detach(session_id))  # starting a running session restarts it
            if device_jid:
                client = self._resumable_client(session_id, device_jid)
                if client is None:
                    return
            generation = next(self._generations)
            if not device_jid:  # a fresh Go key per pairing: no old finalizer can hit it
                client = self._factory(
                    self.store_dsn, uuid=f"{session_id.hex}-{generation}", new_device=True
                )
            link = _Link(session_id, generation, client, device_jid, pairing=not device_jid)
            link.proxy = proxy
            self._attach(link)
            with self._lock:
                self._links[session_id] = link
            self._spawn(lambda: self._run(link), f"neonize-{session_id.hex[:12]}")

    def _resumable_client(self, session_id: UUID, device_jid: str) -> Any | None:
        """A client resuming `device_jid`, or None (reported) when the store lacks it: Go
        would abort the whole process on a JID it cannot find."""
        try:
            stored = device_stored(self.store_dsn, device_jid)
        except Exception as exc:  # the store is down: retry later, keep the device
            log.warning("cannot look device %s up in the store: %s", device_jid, exc)
            detail = f"the device store failed: {exc}"
            self._report_ended(session_id, Reason.STORE_UNAVAILABLE, detail)
            return None
        if not stored:
            detail = f"device {device_jid} is not in the store (unlinked or logged out)"
            self._report_ended(session_id, Reason.DEVICE_UNLINKED, detail)
            return None
        # neonize's own form (as it lists stored devices): "user:device" in JID.User; Go's
        # GetDevice finds it, and the client's Go key becomes "user:device".
        user, _, server = device_jid.rpartition("@")
        return self._factory(self.store_dsn, jid=import_neonize().build_jid(user, server))

    def stop(self, session_id: UUID) -> None:
        with self._control:
            self._stop_link(self._detach(session_id))

    def logout(self, session_id: UUID, device_jid: str | None) -> None:
        self._unreachable.discard(session_id)
        with self._control:
            link = self._detach(session_id)
            jid = device_jid
            if link is not None:
                jid = jid or link.device_jid
                if link.connected:
                    try:
                        link.client.logout()  # Go: only ever for a connected client
                    except Exception as exc:  # unlink it anyway: drop it from the store
                        log.warning("logout of session %s failed: %s", session_id, exc)
                    else:
                        jid = None  # whatsmeow deleted the device from its store itself
                self._stop_link(link)
            if jid:
                try:
                    delete_device(self.store_dsn, jid)
                except Exception:
                    log.exception("cannot delete device %s from the store", jid)

    def pair_phone(self, session_id: UUID, phone: str) -> str:
        with self._lock:
            link = self._links.get(session_id)
            pairing = link is not None and not link.ended and link.pairing and link.qr_count > 0
        if link is None or not pairing:
            raise NotPairing("the session is not showing QR codes")
        try:
            code = link.client.PairPhone(phone, True, import_neonize().client_name.LINUX)
        except Exception as exc:
            log.warning("WhatsApp refused the pairing code of %s: %s", session_id, exc)
            raise GatewayError("WhatsApp refused the pairing code; try again") from exc
        return str(code)

    def send_text(self, session_id: UUID, to: str, text: str) -> SentMessage:
        with self._lock:
            link = self._links.get(session_id)
            connected = link is not None and not link.ended and link.connected
        if link is None or not connected:
            raise NotConnected("the session is not connected")
        nz = import_neonize()
        user, at, server = to.rpartition("@")
        recipient = nz.build_jid(user, server) if at else nz.build_jid(to.lstrip("+"))
        try:
            # A Message, not a str: neonize would scan a str for @mentions, and for each
            # "@...@g.us" token make a network call.
            response = link.client.send_message(recipient, nz.message(conversation=text))
        except nz.neonize_error as exc:
            raise _send_error(str(exc)) from exc
        except Exception as exc:
            raise GatewayError(f"WhatsApp did not take the message: {exc}") from exc
        timestamp = (
            datetime.fromtimestamp(response.Timestamp, UTC) if response.Timestamp else self._clock()
        )
        return SentMessage(message_id=str(response.ID), timestamp=timestamp)

    def running(self) -> set[UUID]:
        with self._lock:
            return {sid for sid, link in self._links.items() if not link.ended}

    def stop_all(self) -> None:
        with self._control:
            with self._lock:
                links = list(self._links.values())
                self._links.clear()
                for link in links:
                    link.ended = True
            self._barrier()
            for link in links:
                self._stop_client(link)

    def close(self) -> None:
        self.stop_all()
        with self._lock:
            dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            self._queue.put(None)
            if dispatcher is not threading.current_thread():
                dispatcher.join(timeout=5)
        if self._pool is not None:
            self._pool.close()

    # -- for tests and diagnostics ------------------------------------------------------------

    def client_of(self, session_id: UUID) -> Any | None:
        """The neonize client of the session's current link, if any."""
        with self._lock:
            link = self._links.get(session_id)
            return link.client if link is not None else None

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every report queued so far has been delivered; False on timeout."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    # -- the client's thread ----------------------------------------------------------------

    def _run(self, link: _Link) -> None:
        """Run the client's blocking `connect()`; report why it ended if we did not end it.
        A session whose last start could not reach WhatsApp goes to Go only once the link
        check passes (each start leaves a store behind in Go)."""
        sid = link.session_id
        try:
            if sid in self._unreachable:
                why = self._link_check.diagnose(link.proxy)
                if why is not None:
                    own = link.proxy is not None and why.at_proxy
                    reason = Reason.PROXY_UNREACHABLE if own else Reason.WHATSAPP_UNREACHABLE
                    self._final(link, reason, hide_password(why.detail, link.proxy_password))
                    return
            passed = self._entry.enter()
            with self._lock:
                go = not link.ended
                link.entered, link.passed = go, passed
            if not go:
                passed.set()  # stopped while waiting: never handed to Go
                return
            try:
                link.client.connect(self._proxy_settings(link))
            finally:
                passed.set()
        except Exception as exc:
            # e.g. "failed to dial whatsapp web websocket: ... network is unreachable", or
            # "failed to upgrade database: ... pq: sorry, too many clients already"
            detail = hide_password(str(exc) or type(exc).__name__, link.proxy_password)
            reason = start_failure_reason(detail, own_proxy=link.proxy is not None)
            if reason in (Reason.WHATSAPP_UNREACHABLE, Reason.PROXY_UNREACHABLE):
                self._unreachable.add(sid)
            else:
                self._unreachable.discard(sid)
            self._final(link, reason, detail)
        else:
            self._final(link, Reason.CONNECTION_LOST, "the client stopped by itself")
        finally:
            link.connected = False
            self._stop_client(link)

    def _proxy_settings(self, link: _Link) -> Any | None:
        """What `connect()` is given: the session's proxy, else the environment's (Go was
        loaded without it: see the module's docstring), else None (a direct dial)."""
        address = link.proxy or self._link_check.default_proxy()
        if address is None:
            return None
        return import_neonize().proxy_settings(proxy_address=address)

    # -- neonize's callbacks (on Go's thread: enqueue only) ---------------------------------

    def _attach(self, link: _Link) -> None:
        """Register the handlers of `link`'s client (closures: neonize holds methods weakly)."""
        client = link.client
        client.event.qr(_answered(link, self._qr_handler(link)))
        on_status = self._login_status_handler(link)

        def on_login_status(status: str) -> None:
            if link.passed is not None:
                link.passed.set()
            on_status(status)

        client.on_login_status = on_login_status
        handlers = (
            self._link_handlers(link) | self._ending_handlers(link) | self._message_handlers(link)
        )
        for event_type, handler in handlers.items():
            client.event(event_type)(_answered(link, handler))

    def _qr_handler(self, link: _Link) -> Callable[[Any, bytes], None]:
        sid = link.session_id

        def on_qr(_client: Any, data: bytes) -> None:
            if link.ended or not link.pairing:
                return
            link.qr_count += 1
            attempt = link.qr_count
            # whatsmeow does not pass the codes' lifetime: 60 s for the first, then 20 s
            lifetime = self.first_timeout if attempt == 1 else self.next_timeout
            expires_at = self._clock() + timedelta(seconds=lifetime)
            code = data.decode("utf-8", "replace")
            top = max(self.max_codes, attempt)  # the server chooses how many codes it sends
            self._report(link, lambda e: e.qr_issued(sid, code, expires_at, attempt, top))

        return on_qr

    def _login_status_handler(self, link: _Link) -> Callable[[str], None]:
        sid = link.session_id

        def on_login_status(status: str) -> None:
            if status == "success":
                link.pairing = False  # PairSuccess: the Device and Connected events follow
            elif status == "timeout":  # the codes ran out (or the link dropped while pairing)
                if self._end(link):
                    self._report(link, lambda e: e.qr_exhausted(sid))
                    self._stop_later(link)  # else connect() blocks for ever
            elif status == "err-client-outdated":
                self._final(link, Reason.CLIENT_OUTDATED, status, stop=True)
            elif status:  # "err-scanned-without-multidevice", "err-unexpected-state", "error"
                self._final(link, Reason.PAIRING_FAILED, status, stop=True)

        return on_login_status

    def _link_handlers(self, link: _Link) -> dict[Any, Callable[[Any, Any], None]]:
        nz = import_neonize()
        ev, pb = nz.events, nz.pb
        sid = link.session_id

        def on_pair_status(_client: Any, event: Any) -> None:
            if event.Status == pb.PairStatus.ERROR:
                self._final(link, Reason.PAIRING_FAILED, event.Error or "pairing failed", stop=True)
            elif event.HasField("ID") and event.ID.User:
                link.pairing = False
                link.device_jid = nz.jid_to_string(event.ID)

        def on_connected(client: Any, _event: Any) -> None:
            # ConnectedEv has no JID: neonize delivers a Device event (code 0) first, which it
            # keeps as `client.me`. Never get_me(): Go aborts the process on some paths.
            me = client.me
            jid = link.device_jid or ""
            push_name = ""
            if me is not None:
                push_name = me.PushName
                if me.HasField("JID") and me.JID.User:
                    jid = nz.jid_to_string(me.JID)
            link.device_jid = jid or link.device_jid
            link.pairing = False
            link.connected = True
            self._unreachable.discard(sid)
            if not link.ended:
                self._report(link, lambda e: e.connected(sid, jid, push_name))

        def lost(reason: Reason, describe: Callable[[Any], str]) -> Callable[[Any, Any], None]:
            def handler(_client: Any, event: Any) -> None:
                link.connected = False
                if not link.ended:
                    detail = describe(event)
                    self._report(link, lambda e: e.disconnected(sid, reason.value, detail))

            return handler

        def keepalive(healthy: bool) -> Callable[[Any, Any], None]:
            def handler(_client: Any, _event: Any) -> None:
                if not link.ended:
                    self._report(link, lambda e: e.keepalive(sid, healthy))

            return handler

        return {
            ev.PairStatusEv: on_pair_status,
            ev.ConnectedEv: on_connected,
            # only when the server closes the socket; whatsmeow reconnects by itself
            ev.DisconnectedEv: lost(Reason.CONNECTION_LOST, lambda _: "the server closed it"),
            # unknown failure reasons only (the known ones come as LoggedOut or TemporaryBan)
            ev.ConnectFailureEv: lost(
                Reason.CONNECT_FAILURE,
                lambda e: f"{_enum_name(pb.ConnectFailureReason, e.Reason)}: {e.Message}",
            ),
            ev.KeepAliveTimeoutEv: keepalive(False),
            ev.KeepAliveRestoredEv: keepalive(True),
        }

    def _message_handlers(self, link: _Link) -> dict[Any, Callable[[Any, Any], None]]:
        """Texts received and receipts of what was sent. The event is mapped by the
        dispatcher (Go's thread only enqueues it), which logs a mapping that fails."""
        nz = import_neonize()
        ev, pb = nz.events, nz.pb
        sid = link.session_id

        def on_message(_client: Any, event: Any) -> None:
            def deliver(events: GatewayEvents) -> None:
                message = _inbound(nz, event, self._clock)
                if message is not None:
                    events.message_received(sid, message)

            self._report(link, deliver, fact=True)

        def on_receipt(_client: Any, event: Any) -> None:
            def deliver(events: GatewayEvents) -> None:
                status = _receipt_status(pb, event)
                if status is not None:
                    at = _instant(event.Timestamp, _RECEIPT_TIME_UNIT, self._clock)
                    events.message_status(sid, list(event.MessageIDs), status, at)

            self._report(link, deliver, fact=True)

        return {ev.MessageEv: on_message, ev.ReceiptEv: on_receipt}

    def _ending_handlers(self, link: _Link) -> dict[Any, Callable[[Any, Any], None]]:
        """Events after which the client is useless: report, then stop it."""
        nz = import_neonize()
        ev, pb = nz.events, nz.pb

        def banned(event: Any) -> _Ending:
            until = self._clock() + timedelta(seconds=max(event.Expire, 0))
            return (
                Reason.TEMPORARILY_BANNED,
                _enum_name(pb.TemporaryBan.TempBanReason, event.Code),
                until,
            )

        endings: dict[Any, Callable[[Any], _Ending]] = {
            ev.LoggedOutEv: lambda e: (
                Reason.LOGGED_OUT,
                _enum_name(pb.ConnectFailureReason, e.Reason),
                None,
            ),
            ev.StreamReplacedEv: lambda _: (Reason.STREAM_REPLACED, "connected elsewhere", None),
            ev.TemporaryBanEv: banned,
            ev.ClientOutdatedEv: lambda _: (Reason.CLIENT_OUTDATED, "client too old", None),
        }

        def ending(describe: Callable[[Any], _Ending]) -> Callable[[Any, Any], None]:
            def handler(_client: Any, event: Any) -> None:
                reason, detail, not_before = describe(event)
                self._final(link, reason, detail, not_before, stop=True)

            return handler

        return {event_type: ending(describe) for event_type, describe in endings.items()}

    # -- reports -------------------------------------------------------------------------------

    def _report(self, link: _Link, deliver: Deliver, *, fact: bool = False) -> None:
        self._queue.put(_Report(link.session_id, link.generation, deliver, fact))

    def _end(self, link: _Link) -> bool:
        """Mark `link` ended; True for the one caller that ended it."""
        with self._lock:
            if link.ended:
                return False
            link.ended = True
            return True

    def _final(
        self,
        link: _Link,
        reason: Reason,
        detail: str,
        not_before: datetime | None = None,
        *,
        stop: bool = False,
    ) -> None:
        """Report the link's last word (once), and stop its client if `stop`."""
        if not self._end(link):
            return
        link.connected = False
        sid = link.session_id
        self._report(link, lambda e: e.disconnected(sid, reason.value, detail, not_before))
        if stop:
            self._stop_later(link)

    def _report_ended(self, session_id: UUID, reason: Reason, detail: str) -> None:
        """Report that a session could not start at all (it then has no client)."""
        link = _Link(session_id, next(self._generations), None, None, pairing=False, ended=True)
        link.stopped = True
        with self._lock:
            self._links[session_id] = link  # so that the report is current
        self._report(link, lambda e: e.disconnected(session_id, reason.value, detail))

    def _dispatch(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            with self._delivery:
                events = self._events
                if events is None or not (item.fact or self._is_current(item)):
                    continue  # from a client that was stopped or replaced since
                self._deliver(item, events)

    def _deliver(self, item: _Report, events: GatewayEvents) -> None:
        """Record a report. A message or receipt is tried again after any failure; a report
        about the link only after losing a race with another writer of the session, and
        only while its link is still the session's current one."""
        for pause in (*FACT_RETRY_PAUSES, None):
            try:
                item.deliver(events)
            except ConcurrentChange:
                if pause is None or not (item.fact or self._is_current(item)):
                    log.exception("recording a gateway report for %s failed", item.session_id)
                    return
                log.warning("the session %s changed meanwhile; trying again", item.session_id)
                time.sleep(pause)
            except Exception:
                if pause is None or not item.fact:
                    log.exception("recording a gateway report for %s failed", item.session_id)
                    return
                log.warning("recording a message of %s failed; trying again", item.session_id)
                time.sleep(pause)
            else:
                return

    def _is_current(self, item: _Report) -> bool:
        with self._lock:
            link = self._links.get(item.session_id)
            return link is not None and link.generation == item.generation

    def _barrier(self) -> None:
        """Wait (briefly) for a report being delivered, so none arrives after we return."""
        if self._delivery.acquire(timeout=DELIVERY_BARRIER_SECONDS):
            self._delivery.release()
        else:
            log.warning("a gateway report is taking more than %ss", DELIVERY_BARRIER_SECONDS)

    # -- stopping -----------------------------------------------------------------------------

    def _detach(self, session_id: UUID) -> _Link | None:
        """Take the session's link out (nothing more of it is reported) and end it."""
        with self._lock:
            link = self._links.pop(session_id, None)
            if link is not None:
                link.ended = True
            return link

    def _stop_link(self, link: _Link | None) -> None:
        if link is not None:
            self._barrier()
            self._stop_client(link)

    def _stop_later(self, link: _Link) -> None:
        # We are on Go's thread, inside its callback: stop from another thread.
        self._spawn(lambda: self._stop_client(link), f"neonize-stop-{link.session_id.hex[:12]}")

    def _stop_client(self, link: _Link) -> None:
        """Stop `link`'s client once (Go's Stop is safe on a client that never connected)."""
        with self._lock:
            if link.stopped or link.client is None:
                return
            link.stopped = True
            entered = link.entered
            key = link.client.uuid
            # Go knows clients by key only: never stop a newer client that reuses it.
            reused = any(
                other is not link
                and not other.stopped
                and other.client is not None
                and other.client.uuid == key
                for other in self._links.values()
            )
        try:
            if entered and not reused:  # Go never saw a client that was not entered
                with self._entry.exclusive():
                    link.client.stop()
        except Exception:
            log.exception("stopping the client of session %s failed", link.session_id)
        finalizer = getattr(link.client, "_stop_finalizer", None)
        if finalizer is not None:
            finalizer.detach()  # its Stop(uuid) at GC time could hit a newer client


def _answered(link: _Link, handler: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """`handler`, which first notes that Go has answered the link's start (its maps are
    written once it calls back)."""

    def wrapped(client: Any, event: Any) -> None:
        if link.passed is not None:
            link.passed.set()
        handler(client, event)

    return wrapped


def _enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)
