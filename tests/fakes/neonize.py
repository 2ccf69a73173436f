"""Fakes of neonize for offline tests: real neonize objects, no network.

Hand-built `Neonize_pb2` events pushed through neonize's own Go→Python entry points
(`feed`, `show_qr`, `login_status`), message and receipt builders, `ScriptedClient` (a real
`NewClient` whose `connect()` is a script that talks to no one) and `Recorder` (the
`GatewayEvents` a test watches). Used by the mapping, contract and device-store tests.
"""

from __future__ import annotations

import ctypes
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from application.ports import Disconnection, GatewayEvents, InboundMessage
from infra.whatsapp.devicestore import delete_device
from infra.whatsapp.link import LinkCheck
from infra.whatsapp.loading import import_neonize, session_client_class
from infra.whatsapp.neonize import NeonizeGateway

NZ = import_neonize()
PB = NZ.pb
EVENT_TO_INT: dict[Any, int] = NZ.events.EVENT_TO_INT
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
WAIT = 30.0  # upper bound of every wait below; they return as soon as the condition holds
PHONE_JID = "15551234567:12@s.whatsapp.net"
SENT_AT = int(time.time())  # WhatsApp's timestamp of what a scripted client sends
ALICE = "15557654321@s.whatsapp.net"
#: neonize's times: a message's in milliseconds, a receipt's in seconds (UnixMilli / Unix)
MESSAGE_MS = int(NOW.timestamp()) * 1000 + 123
RECEIPT_S = int(NOW.timestamp()) + 5


# -- feeding neonize --------------------------------------------------------------------------


def fill_required(message: Any) -> Any:
    """`message` with every unset proto2 ``required`` field set to its default (recursively):
    neonize's `FromString` refuses messages with missing required fields."""
    for fd in message.DESCRIPTOR.fields:
        if fd.message_type is not None:
            if fd.is_repeated:
                for item in getattr(message, fd.name):
                    fill_required(item)
            elif fd.is_required or message.HasField(fd.name):
                fill_required(getattr(message, fd.name))
                getattr(message, fd.name).SetInParent()
        elif fd.is_required and not message.HasField(fd.name):
            default = fd.enum_type.values[0].number if fd.enum_type else fd.default_value
            setattr(message, fd.name, default)
    return message


def feed(client: Any, event: Any) -> None:
    """Deliver `event` to `client` exactly as Go does: serialized, through `execute`."""
    data = fill_required(event).SerializeToString()
    buffer = ctypes.create_string_buffer(data, max(len(data), 1))
    client.event.execute(0, ctypes.addressof(buffer), len(data), EVENT_TO_INT[type(event)])


def show_qr(client: Any, code: str) -> None:
    """Go's QR callback (one call per code of whatsmeow's QR channel)."""
    buffer = ctypes.create_string_buffer(code.encode())
    client._NewClient__onQr(0, ctypes.addressof(buffer))


def login_status(client: Any, status: str) -> None:
    """Go's login-status callback (the QR channel's end state)."""
    buffer = ctypes.create_string_buffer(status.encode())
    client._NewClient__onLoginStatus(0, ctypes.addressof(buffer))


def device_jid_proto(jid: str) -> Any:
    """A JID as whatsmeow encodes a device (``user:device@server``: Device set)."""
    user_device, _, server = jid.partition("@")
    user, _, device = user_device.partition(":")
    return PB.JID(User=user, Device=int(device or 0), Server=server, RawAgent=0, Integrator=0)


def user_of(jid: str) -> str:
    """`jid` without its device part (``user:device@server`` → ``user@server``)."""
    user_device, _, server = jid.partition("@")
    return f"{user_device.partition(':')[0]}@{server}"


def text_message(
    text: str = "hello",
    *,
    sender: str = ALICE,
    chat: str | None = None,
    message_id: str = "3A0000000000000000A1",
    from_me: bool = False,
    timestamp: int = MESSAGE_MS,
    push_name: str = "Alice",
    content: Any = None,
    sender_alt: str | None = None,
    **flags: Any,
) -> Any:
    """A `MessageEv` as whatsmeow encodes it: `text` as a plain conversation unless `content`
    (a waE2E Message) is given; `chat` defaults to the sender's one-to-one chat."""
    chat = chat or user_of(sender)
    source = PB.MessageSource(
        Chat=device_jid_proto(chat),
        Sender=device_jid_proto(sender),
        IsFromMe=from_me,
        IsGroup=chat.endswith("@g.us") or chat.endswith("@broadcast"),
    )
    if sender_alt is not None:
        source.SenderAlt.CopyFrom(device_jid_proto(sender_alt))
    info = PB.MessageInfo(
        MessageSource=source,
        ID=message_id,
        Type="text",
        Pushname=push_name,
        Timestamp=timestamp,
    )
    body = NZ.message(conversation=text) if content is None else content
    return PB.Message(Info=info, Message=body, **flags)


def receipt(
    *message_ids: str,
    kind: int = PB.Receipt.DELIVERED,
    sender: str = ALICE,
    from_me: bool = False,
    timestamp: int = RECEIPT_S,
) -> Any:
    """A `ReceiptEv` as whatsmeow encodes it: its MessageSource is the receipt's sender's."""
    jid = device_jid_proto(sender)
    source = PB.MessageSource(Chat=jid, Sender=jid, IsFromMe=from_me, IsGroup=False)
    return PB.Receipt(
        MessageSource=source, MessageIDs=list(message_ids), Timestamp=timestamp, Type=kind
    )


# -- a client that talks to no one ------------------------------------------------------------

SessionClient: Any = session_client_class()


class GoAnswers:
    """neonize's handle on the Go library (`gocode`) with whatsmeow's answer to one call
    scripted, the block-list query the gateway's active check makes; every other call goes to
    the real library. neonize's own Python (parsing the answer, raising its errors) runs."""

    def __init__(self, gocode: Any, client: ScriptedClient) -> None:
        self._gocode = gocode
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gocode, name)

    def GetBlocklist(self, uuid: bytes) -> bytes:  # noqa: N802 - Go's name
        """What Go returns: a serialized ``GetBlocklistReturnFunction`` (whatsmeow's error
        text in `Error`), after the client's scripted delay (a server that does not answer)."""
        client = self._client
        client.checks.append(uuid)
        client.check_release.wait(client.check_delay)
        answer = PB.GetBlocklistReturnFunction()
        if client.stopped.is_set():
            answer.Error = "websocket disconnected before info query returned response"
        elif client.check_error is not None:
            answer.Error = client.check_error
        else:
            answer.Blocklist.CopyFrom(PB.Blocklist(DHash="1:abc", JIDs=[]))
        data: bytes = answer.SerializeToString()
        return data


class ScriptedClient(SessionClient):  # type: ignore[misc]
    """A real neonize client whose `connect()` plays whatsmeow's part from a script.

    `connect()` blocks until `stop()`, like neonize's; meanwhile it runs the commands given
    with `do` on its own thread (Go's, for the gateway). A resumed device sends Device and
    Connected at once; a new one shows `codes` QR codes (`first` then `next` seconds each),
    then reports "timeout", unless `scan()` runs first. Like the simulator, it treats phone
    numbers starting with 0 as not on WhatsApp: sending to one fails as whatsmeow's does.
    """

    def __init__(
        self,
        name: str,
        *,
        jid: Any = None,
        uuid: str | None = None,
        new_device: bool = False,
        codes: int = 0,
        first: float = 0.0,
        next_: float = 0.0,
        fail: Exception | None = None,
        return_at_once: bool = False,
    ) -> None:
        super().__init__(name, jid=jid, uuid=uuid, new_device=new_device)
        self.codes, self.first, self.next = codes, first, next_
        self.fail, self.return_at_once = fail, return_at_once
        self.commands: queue.Queue[Callable[[ScriptedClient], None] | None] = queue.Queue()
        self.connecting = threading.Event()
        self.stopped = threading.Event()
        self.stop_calls = 0
        self.paired = False
        self.sent: list[tuple[Any, Any]] = []
        self.recipients: dict[str, str] = {}  # WhatsApp's id of each message sent → its JID
        self.send_error: Exception | None = None
        self.presences: list[tuple[Any, Any, Any]] = []  # (jid, ChatPresence, ChatPresenceMedia)
        self.logouts = 0
        self.pair_calls: list[tuple[Any, ...]] = []
        self.proxy_settings: Any = None  # what `connect()` was given (neonize's ProxySettings)
        # The active check (Go's GetBlocklist): the Go keys it was asked with, whatsmeow's
        # error to answer (None: the block list), and how long the answer takes (released
        # early by `check_release`).
        self.checks: list[bytes] = []
        self.check_error: str | None = None
        self.check_delay = 0.0
        self.check_release = threading.Event()
        # neonize's private handle on Go (name-mangled ``__client``), wrapped
        gocode: Any = self.__dict__["_NewClient__client"]
        self.__dict__["_NewClient__client"] = GoAnswers(gocode, self)

    # whatsmeow's side
    def connect(self, proxy_settings: Any = None) -> None:
        self.proxy_settings = proxy_settings
        self.connecting.set()
        if self.fail is not None:
            raise self.fail
        if self.return_at_once:
            return
        if self.jid is not None:
            stored = f"{self.jid.User}@{self.jid.Server}"
            feed(self, PB.Device(JID=device_jid_proto(stored), PushName="Resumed phone"))
            feed(self, PB.Connected(status=True))
        elif self.codes and not self._show_codes():
            return
        while (command := self.commands.get()) is not None:
            command(self)

    def _show_codes(self) -> bool:
        """Show the codes until scanned or run out; False when stopped meanwhile."""
        for attempt in range(1, self.codes + 1):
            show_qr(self, f"2@ref{attempt},{secrets.token_hex(8)}")
            try:
                command = self.commands.get(timeout=self.first if attempt == 1 else self.next)
            except queue.Empty:
                continue
            if command is None:
                return False
            command(self)
            if self.paired:
                return True
        login_status(self, "timeout")
        return True

    def do(self, command: Callable[[ScriptedClient], None]) -> None:
        """Run `command` on the client's thread, as Go delivers events."""
        self.commands.put(command)

    @property
    def device(self) -> str | None:
        """The JID of the device this client is linked as, if any."""
        if self.me is not None and self.me.JID.User:
            return str(NZ.jid_to_string(self.me.JID))
        return f"{self.jid.User}@{self.jid.Server}" if self.jid is not None else None

    def scan(self, jid: str = "") -> None:
        """The phone scans the code: whatsmeow stores the new device, then reports it."""
        jid = jid or f"{secrets.randbelow(10**11):011d}:1@s.whatsapp.net"
        if Path(self.name).exists():
            make_store(Path(self.name), jid)
        self.paired = True
        login_status(self, "success")
        feed(self, PB.PairStatus(ID=device_jid_proto(jid), Status=PB.PairStatus.SUCCESS))
        feed(self, PB.Device(JID=device_jid_proto(jid), PushName="Scanning phone"))
        feed(self, PB.Connected(status=True))

    # calls the gateway makes
    def stop(self) -> None:
        self.stop_calls += 1
        self.stopped.set()
        self.check_release.set()  # Go's Stop disconnects: a query waiting for an answer ends
        self.commands.put(None)
        super().stop()  # Go's Stop: safe on a client Go never saw

    def send_message(self, to: Any, message: Any) -> Any:
        if self.send_error is not None:
            raise self.send_error
        jid = f"{to.User}@{to.Server}"
        if to.Server == "s.whatsapp.net" and to.User.startswith("0"):
            # whatsmeow's answer when usync knows no account for the number (send.go)
            raise NZ.send_message_error(f"no LID found for {jid} from server")
        self.sent.append((to, message))
        message_id = f"3EB0{len(self.sent):06d}"
        self.recipients[message_id] = jid
        return PB.SendResponse(ID=message_id, Timestamp=SENT_AT, ServerID=0)

    def send_chat_presence(self, jid: Any, state: Any, media: Any) -> None:
        if self.send_error is not None:
            raise self.send_error
        self.presences.append((jid, state, media))

    def logout(self) -> None:
        """whatsmeow unlinks the device and deletes it from its store."""
        self.logouts += 1
        if self.device is not None and Path(self.name).exists():
            delete_device(self.name, self.device)

    def PairPhone(self, *args: Any) -> str:  # noqa: N802 - neonize's name
        self.pair_calls.append(args)
        return "ABCD1234"


# -- what the gateway reports -----------------------------------------------------------------


@dataclass
class Call:
    name: str
    session_id: UUID
    args: tuple[Any, ...]


class Recorder(GatewayEvents):
    """Records every callback; `wait_for` blocks until a condition on the calls holds."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.changed = threading.Condition()
        self.hold: threading.Event | None = None  # set to make callbacks block (slow recorder)

    def _add(self, name: str, session_id: UUID, *args: Any) -> int:
        if self.hold is not None:
            self.hold.wait(WAIT)
        with self.changed:
            self.calls.append(Call(name, session_id, args))
            self.changed.notify_all()
            return len(self.calls)

    def qr_issued(
        self, session_id: UUID, code: str, expires_at: datetime, attempt: int, max_attempts: int
    ) -> int | None:
        return self._add("qr_issued", session_id, code, expires_at, attempt, max_attempts)

    def qr_exhausted(self, session_id: UUID) -> int | None:
        return self._add("qr_exhausted", session_id)

    def connected(self, session_id: UUID, jid: str, push_name: str) -> int | None:
        return self._add("connected", session_id, jid, push_name)

    def disconnected(self, session_id: UUID, disconnection: Disconnection) -> int | None:
        d = disconnection  # recorded as its three values, as tests read them
        return self._add("disconnected", session_id, d.reason, d.detail, d.not_before)

    def keepalive(self, session_id: UUID, healthy: bool) -> int | None:
        return self._add("keepalive", session_id, healthy)

    def message_received(self, session_id: UUID, message: InboundMessage) -> int | None:
        return self._add("message_received", session_id, message)

    def message_status(
        self, session_id: UUID, whatsapp_ids: list[str], status: str, at: datetime
    ) -> int | None:
        return self._add("message_status", session_id, whatsapp_ids, status, at)

    def of(self, session_id: UUID) -> list[Call]:
        with self.changed:
            return [call for call in self.calls if call.session_id == session_id]

    def wait_for(
        self, session_id: UUID, condition: Callable[[list[Call]], bool], timeout: float = WAIT
    ) -> list[Call]:
        with self.changed:
            self.changed.wait_for(lambda: condition(self.of(session_id)), timeout)
        calls = self.of(session_id)
        assert condition(calls), [(c.name, c.args) for c in calls]
        return calls


def names(calls: list[Call]) -> list[str]:
    return [call.name for call in calls]


def make_store(path: Path, *jids: str) -> Path:
    """A SQLite store holding `jids` (the device table only: what the gateway looks at)."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS whatsmeow_device (jid TEXT PRIMARY KEY)")
        conn.executemany("INSERT OR IGNORE INTO whatsmeow_device VALUES (?)", [(j,) for j in jids])
    conn.close()
    return path


def scripted_gateway(
    store: Path, messages: list[str], link_check: LinkCheck
) -> tuple[NeonizeGateway, Recorder, list[ScriptedClient]]:
    """A gateway on `store` whose clients fail their connect with the next of `messages`
    (then connect as `ScriptedClient` does), reporting to a `Recorder`; and the clients made."""
    made: list[ScriptedClient] = []

    def factory(dsn: str, **kwargs: Any) -> ScriptedClient:
        error = NZ.neonize_error(messages.pop(0)) if messages else None
        made.append(ScriptedClient(dsn, fail=error, **kwargs))
        return made[-1]

    gateway = NeonizeGateway(str(store), client_factory=factory, link_check=link_check)
    events = Recorder()
    gateway.bind(events)
    return gateway, events, made
