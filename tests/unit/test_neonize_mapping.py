"""Offline mapping tests of the neonize gateway, with real neonize objects and no network.

Events are hand-built `Neonize_pb2` messages pushed through neonize's own Go→Python entry
points: `client.event.execute(...)` (what Go calls for every event), the ctypes QR callback
``_NewClient__onQr`` and the login-status callback the gateway's client overrides. The
clients are real `NewClient`s whose `connect()` is replaced by a script that talks to no one
(`ScriptedClient`), so no test can reach WhatsApp; `stop()` still goes to Go, which is safe
on a client that never connected.

The fakes (`ScriptedClient`, `feed`, `Recorder`, …) live in `tests.fakes.neonize`.
"""

from __future__ import annotations

import gc
import re
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from application.errors import (
    ConcurrentChange,
    GatewayError,
    NotConnected,
    NotPairing,
    RecipientRejected,
)
from application.ports import InboundMessage
from infra.whatsapp.devicestore import delete_device, device_stored, store_dsn_from_url
from infra.whatsapp.neonize import NeonizeGateway
from tests.fakes.neonize import (
    ALICE,
    EVENT_TO_INT,
    NOW,
    NZ,
    PB,
    PHONE_JID,
    SENT_AT,
    WAIT,
    Call,
    Recorder,
    ScriptedClient,
    device_jid_proto,
    feed,
    login_status,
    make_store,
    names,
    receipt,
    show_qr,
    text_message,
)

# -- the rig ----------------------------------------------------------------------------------


@dataclass
class Rig:
    gateway: NeonizeGateway
    events: Recorder
    store: Path
    clients: list[ScriptedClient] = field(default_factory=list)

    def settle(self) -> list[Call]:
        """Wait until every report queued so far has been delivered; all calls so far."""
        assert self.gateway.wait_idle(WAIT)
        return list(self.events.calls)

    def start(self, session_id: UUID, jid: str | None = None) -> ScriptedClient:
        self.gateway.start(session_id, jid)
        client = self.clients[-1]
        assert client.connecting.wait(WAIT)
        return client


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    store = make_store(tmp_path / "store.db", PHONE_JID)
    events = Recorder()
    made: list[ScriptedClient] = []

    def factory(store_dsn: str, **kwargs: Any) -> ScriptedClient:
        made.append(ScriptedClient(store_dsn, **kwargs))
        return made[-1]

    gateway = NeonizeGateway(str(store), client_factory=factory, clock=lambda: NOW)
    gateway.bind(events)
    yield Rig(gateway, events, store, made)
    gateway.close()


def run_now(target: Callable[[], None], name: str) -> None:
    """A `spawn` that runs the client's thread body at once, on the caller's thread."""
    target()


def connected_rig(rig: Rig) -> tuple[UUID, ScriptedClient]:
    sid = uuid4()
    client = rig.start(sid)
    show_qr(client, "2@code")
    client.scan(PHONE_JID)
    calls = rig.settle()
    assert names(calls)[-1] == "connected"
    rig.events.calls.clear()
    return sid, client


# -- QR codes -----------------------------------------------------------------------------------


def test_a_new_session_pairs_a_new_device_under_a_fresh_key(rig: Rig) -> None:
    sid = uuid4()
    client = rig.start(sid)
    assert client.new_device is True
    assert client.jid is None
    assert sid.hex in client.uuid.decode()
    assert rig.gateway.running() == {sid}
    again = rig.start(sid)
    assert again.uuid != client.uuid


def test_each_qr_code_is_reported_with_its_attempt_and_lifetime(rig: Rig) -> None:
    sid = uuid4()
    client = rig.start(sid)
    for n in range(1, 4):
        show_qr(client, f"2@code{n}")
    calls = rig.settle()
    assert [(c.name, c.args) for c in calls] == [
        ("qr_issued", ("2@code1", NOW + timedelta(seconds=60), 1, 6)),
        ("qr_issued", ("2@code2", NOW + timedelta(seconds=20), 2, 6)),
        ("qr_issued", ("2@code3", NOW + timedelta(seconds=20), 3, 6)),
    ]


def test_login_status_timeout_reports_exhausted_and_stops_the_client(rig: Rig) -> None:
    sid = uuid4()
    client = rig.start(sid)
    show_qr(client, "2@code1")
    login_status(client, "timeout")
    assert names(rig.settle()) == ["qr_issued", "qr_exhausted"]
    assert client.stopped.wait(WAIT)  # else connect() would block for ever
    assert sid not in rig.gateway.running()
    show_qr(client, "2@late")  # nothing more from a finished client
    assert names(rig.settle()) == ["qr_issued", "qr_exhausted"]


@pytest.mark.parametrize(
    "status", ["err-scanned-without-multidevice", "err-unexpected-state", "error"]
)
def test_login_status_errors_are_pairing_failures(rig: Rig, status: str) -> None:
    sid = uuid4()
    client = rig.start(sid)
    show_qr(client, "2@code1")
    login_status(client, status)
    calls = rig.settle()
    assert (calls[-1].name, calls[-1].args) == ("disconnected", ("pairing_failed", status, None))
    assert client.stopped.wait(WAIT)
    assert sid not in rig.gateway.running()


def test_an_outdated_client_seen_while_pairing_is_client_outdated(rig: Rig) -> None:
    client = rig.start(uuid4())
    login_status(client, "err-client-outdated")
    assert rig.settle()[-1].args[0] == "client_outdated"


def test_pair_status_error_is_a_pairing_failure(rig: Rig) -> None:
    sid = uuid4()
    client = rig.start(sid)
    show_qr(client, "2@code1")
    feed(client, PB.PairStatus(Status=PB.PairStatus.ERROR, Error="bad signature"))
    calls = rig.settle()
    assert calls[-1].args == ("pairing_failed", "bad signature", None)
    assert client.stopped.wait(WAIT)


# -- connected and after ----------------------------------------------------------------------


def test_connected_reports_the_device_jid_and_push_name_from_the_device_event(rig: Rig) -> None:
    sid = uuid4()
    client = rig.start(sid)
    show_qr(client, "2@code1")
    login_status(client, "success")
    feed(client, PB.Device(JID=device_jid_proto(PHONE_JID), PushName="Alice"))
    assert rig.settle()[-1].name == "qr_issued"  # the Device event only sets `me`
    feed(client, PB.Connected(status=True))
    calls = rig.settle()
    assert (calls[-1].name, calls[-1].args) == ("connected", (PHONE_JID, "Alice"))


def test_a_server_side_drop_is_connection_lost_and_the_reconnect_is_connected(rig: Rig) -> None:
    sid, client = connected_rig(rig)
    feed(client, PB.Disconnected(status=True))
    feed(client, PB.Connected(status=True))  # whatsmeow reconnects by itself
    calls = rig.settle()
    assert [(c.name, c.args[0]) for c in calls] == [
        ("disconnected", "connection_lost"),
        ("connected", PHONE_JID),
    ]
    assert not client.stopped.is_set()
    assert sid in rig.gateway.running()


def test_logged_out_is_reported_with_its_reason_then_the_client_stops(rig: Rig) -> None:
    sid, client = connected_rig(rig)
    feed(client, PB.LoggedOut(OnConnect=False, Reason=PB.LOGGED_OUT))
    assert [c.args for c in rig.settle()] == [("logged_out", "LOGGED_OUT", None)]
    assert client.stopped.wait(WAIT)
    assert sid not in rig.gateway.running()
    feed(client, PB.Disconnected(status=True))  # what our own stop causes: not reported
    assert len(rig.settle()) == 1


@pytest.mark.parametrize(
    ("event", "reason"),
    [("StreamReplaced", "stream_replaced"), ("ClientOutdated", "client_outdated")],
)
def test_a_replaced_stream_or_an_outdated_client_is_reported_then_the_client_stops(
    rig: Rig, event: str, reason: str
) -> None:
    sid, client = connected_rig(rig)
    feed(client, getattr(PB, event)())
    assert [c.args[0] for c in rig.settle()] == [reason]
    assert client.stopped.wait(WAIT)
    assert sid not in rig.gateway.running()


def test_a_temporary_ban_carries_its_reason_and_end_then_the_client_stops(rig: Rig) -> None:
    sid, client = connected_rig(rig)
    code = PB.TemporaryBan.SEND_TO_TOO_MANY_PEOPLE
    feed(client, PB.TemporaryBan(Code=code, Expire=3600))
    assert [c.args for c in rig.settle()] == [
        ("temporarily_banned", "SEND_TO_TOO_MANY_PEOPLE", NOW + timedelta(seconds=3600))
    ]
    assert client.stopped.wait(WAIT)
    assert sid not in rig.gateway.running()


def test_a_connect_failure_is_reported_with_reason_and_message(rig: Rig) -> None:
    sid, client = connected_rig(rig)
    feed(client, PB.ConnectFailure(Reason=PB.EXPERIMENTAL, Message="try later"))
    assert [c.args for c in rig.settle()] == [("connect_failure", "EXPERIMENTAL: try later", None)]
    assert sid in rig.gateway.running()  # whatsmeow may still reconnect; not stopped


def test_keepalive_timeouts_and_restores_are_reported(rig: Rig) -> None:
    _, client = connected_rig(rig)
    feed(client, PB.KeepAliveTimeout(ErrorCount=1, LastSuccess=0))
    feed(client, PB.KeepAliveRestored())
    assert [(c.name, c.args) for c in rig.settle()] == [
        ("keepalive", (False,)),
        ("keepalive", (True,)),
    ]


# -- messages received ------------------------------------------------------------------------


def received(calls: list[Call]) -> list[InboundMessage]:
    return [call.args[0] for call in calls if call.name == "message_received"]


def test_message_and_receipt_events_are_subscribed(rig: Rig) -> None:
    client = rig.start(uuid4())
    assert EVENT_TO_INT[NZ.events.MessageEv] in client.event.list_func
    assert EVENT_TO_INT[NZ.events.ReceiptEv] in client.event.list_func


def test_a_text_received_is_reported_with_its_id_sender_time_and_push_name(rig: Rig) -> None:
    sid, client = connected_rig(rig)
    feed(client, text_message("hello there", sender="15557654321:3@s.whatsapp.net"))
    assert [(c.name, c.session_id) for c in rig.settle()] == [("message_received", sid)]
    assert received(rig.events.calls) == [
        InboundMessage(
            whatsapp_id="3A0000000000000000A1",
            sender=ALICE,  # the sending device's number is dropped
            chat=ALICE,
            text="hello there",
            sent_at=NOW + timedelta(milliseconds=123),  # neonize's message times are in ms
            push_name="Alice",
        )
    ]


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ({"conversation": "plain"}, "plain"),
        ({"extendedTextMessage": {"text": "see https://example.org"}}, "see https://example.org"),
        ({"imageMessage": {"caption": "a caption", "mimetype": "image/jpeg"}}, "a caption"),
    ],
    ids=["conversation", "extended-text", "image-caption"],
)
def test_the_text_is_a_conversation_an_extended_text_or_a_caption(
    rig: Rig, content: dict[str, Any], text: str
) -> None:
    _, client = connected_rig(rig)
    feed(client, text_message(content=NZ.message(**content)))
    [message] = received(rig.settle())
    assert message.text == text


def test_a_group_message_has_the_group_as_chat_and_the_member_as_sender(rig: Rig) -> None:
    _, client = connected_rig(rig)
    group = "120363000000000000@g.us"
    feed(client, text_message("hi all", chat=group, sender="15557654321:2@s.whatsapp.net"))
    [message] = received(rig.settle())
    assert (message.chat, message.sender) == (group, ALICE)


def test_a_hidden_sender_is_named_by_the_phone_number_whatsapp_gives_beside_it(rig: Rig) -> None:
    _, client = connected_rig(rig)
    hidden = "208378654321:4@lid"
    feed(client, text_message(sender=hidden, sender_alt="15557654321:4@s.whatsapp.net"))
    feed(client, text_message(sender=hidden, message_id="3A0000000000000000A2"))
    first, second = received(rig.settle())
    assert (first.sender, first.chat) == (ALICE, ALICE)
    assert (second.sender, second.chat) == ("208378654321@lid", "208378654321@lid")  # no number


def test_a_message_without_a_time_is_dated_now(rig: Rig) -> None:
    _, client = connected_rig(rig)
    feed(client, text_message(timestamp=0))
    [message] = received(rig.settle())
    assert message.sent_at == NOW


def test_messages_sent_by_this_account_are_not_reported(rig: Rig) -> None:
    """Our own sends come back as messages from us, as do those typed on the phone."""
    _, client = connected_rig(rig)
    feed(client, text_message("sent by us", sender=PHONE_JID, chat=ALICE, from_me=True))
    assert rig.settle() == []


@pytest.mark.parametrize(
    "content",
    [
        {"imageMessage": {"mimetype": "image/jpeg"}},  # media without a caption
        {"reactionMessage": {"text": "+1"}},
        {"protocolMessage": {"type": 0}},  # e.g. a message deleted for everyone
        {},  # nothing WhatsApp could decode
    ],
    ids=["media", "reaction", "protocol", "empty"],
)
def test_messages_without_text_are_not_reported(rig: Rig, content: dict[str, Any]) -> None:
    _, client = connected_rig(rig)
    feed(client, text_message(content=NZ.message(**content)))
    assert rig.settle() == []


def test_status_updates_channel_posts_and_edits_are_not_reported(rig: Rig) -> None:
    _, client = connected_rig(rig)
    feed(client, text_message("my status", chat="status@broadcast"))
    feed(client, text_message("a post", sender="120363000000000001@newsletter"))
    feed(client, text_message("fixed typo", IsEdit=True))
    assert rig.settle() == []


def test_a_message_after_stop_is_still_reported(rig: Rig) -> None:
    # whatsmeow has acknowledged it to WhatsApp already: dropping it would lose it for good.
    sid, client = connected_rig(rig)
    rig.gateway.stop(sid)
    feed(client, text_message())
    assert names(rig.settle()) == ["message_received"]


def test_a_failing_recording_is_logged_and_later_reports_still_arrive(
    rig: Rig, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = connected_rig(rig)

    def broken(session_id: UUID, message: InboundMessage) -> int | None:
        raise RuntimeError("the recorder is down")

    rig.events.message_received = broken  # type: ignore[method-assign]
    monkeypatch.setattr("infra.whatsapp.neonize.FACT_RETRY_PAUSES", (0.0, 0.0))
    feed(client, text_message())
    feed(client, PB.KeepAliveRestored())
    assert names(rig.settle()) == ["keepalive"]
    assert "the recorder is down" in caplog.text
    assert caplog.text.count("trying again") == 2


def test_a_message_whose_recording_fails_once_is_recorded_on_the_next_try(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = connected_rig(rig)
    record = rig.events.message_received
    failures = [RuntimeError("the database blinked")]

    def flaky(session_id: UUID, message: InboundMessage) -> int | None:
        if failures:
            raise failures.pop()
        return record(session_id, message)

    rig.events.message_received = flaky  # type: ignore[method-assign]
    monkeypatch.setattr("infra.whatsapp.neonize.FACT_RETRY_PAUSES", (0.0,))
    feed(client, text_message())
    assert names(rig.settle()) == ["message_received"]


def test_a_link_report_that_lost_a_race_with_another_writer_is_recorded_on_the_next_try(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API changed the session at that moment: the link went down all the same."""
    _, client = connected_rig(rig)
    record = rig.events.disconnected
    races = [ConcurrentChange("the session changed concurrently")] * 2

    def racing(session_id: UUID, *args: Any) -> int | None:
        if races:
            raise races.pop()
        return record(session_id, *args)

    rig.events.disconnected = racing  # type: ignore[method-assign,assignment]
    monkeypatch.setattr("infra.whatsapp.neonize.FACT_RETRY_PAUSES", (0.0, 0.0))
    feed(client, PB.Disconnected(status=True))
    assert [(c.name, c.args[0]) for c in rig.settle()] == [("disconnected", "connection_lost")]


def test_a_link_report_is_not_tried_again_once_its_client_was_replaced(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart between two tries: the old link's word no longer describes the session."""
    sid, client = connected_rig(rig)
    tried = threading.Event()
    go_on = threading.Event()

    def racing(session_id: UUID, *args: Any) -> int | None:
        tried.set()
        assert go_on.wait(WAIT)
        raise ConcurrentChange("the session changed concurrently")

    rig.events.disconnected = racing  # type: ignore[method-assign,assignment]
    monkeypatch.setattr("infra.whatsapp.neonize.FACT_RETRY_PAUSES", (0.0, 0.0, 0.0))
    feed(client, PB.Disconnected(status=True))
    assert tried.wait(WAIT)
    threading.Thread(target=rig.gateway.start, args=(sid, PHONE_JID), daemon=True).start()
    assert client.stopped.wait(WAIT)  # replaced: the old client is stopped
    tries: list[tuple[Any, ...]] = []

    def late(session_id: UUID, *args: Any) -> int | None:
        tries.append(args)
        return None

    rig.events.disconnected = late  # type: ignore[method-assign,assignment]
    go_on.set()
    rig.settle()
    assert tries == []  # not recorded late on behalf of the replaced link


# -- receipts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status"), [(PB.Receipt.DELIVERED, "delivered"), (PB.Receipt.READ, "read")]
)
def test_delivered_and_read_receipts_report_the_ids_status_and_time(
    rig: Rig, kind: int, status: str
) -> None:
    sid, client = connected_rig(rig)
    feed(client, receipt("3EB0000001", "3EB0000002", kind=kind))
    assert [(c.name, c.session_id, c.args) for c in rig.settle()] == [
        (
            "message_status",
            sid,
            (["3EB0000001", "3EB0000002"], status, NOW + timedelta(seconds=5)),  # in seconds
        )
    ]


@pytest.mark.parametrize(
    "kind",
    [
        PB.Receipt.SENDER,
        PB.Receipt.RETRY,
        PB.Receipt.READ_SELF,
        PB.Receipt.PLAYED,
        PB.Receipt.PLAYED_SELF,
        PB.Receipt.SERVER_ERROR,
        PB.Receipt.INACTIVE,
        PB.Receipt.PEER_MSG,
        PB.Receipt.HISTORY_SYNC,
    ],
    ids=lambda kind: str(PB.Receipt.ReceiptType.Name(kind)),
)
def test_other_receipt_types_are_ignored(rig: Rig, kind: int) -> None:
    _, client = connected_rig(rig)
    feed(client, receipt("3EB0000001", kind=kind))
    assert rig.settle() == []


def test_receipts_from_this_accounts_own_devices_are_ignored(rig: Rig) -> None:
    """The phone reading a message it received sends "read" from us: not an ack of ours."""
    _, client = connected_rig(rig)
    feed(
        client,
        receipt("3A0000000000000000A1", kind=PB.Receipt.READ, sender=PHONE_JID, from_me=True),
    )
    feed(client, receipt("3EB0000001", kind=PB.Receipt.DELIVERED, sender=PHONE_JID, from_me=True))
    feed(client, receipt(kind=PB.Receipt.READ))  # no ids at all
    assert rig.settle() == []


# -- how connect() ends -----------------------------------------------------------------------


def test_a_connect_error_is_whatsapp_unreachable(rig: Rig) -> None:
    message = (
        "failed to dial whatsapp web websocket: dial tcp: lookup web.whatsapp.com: "
        "connect: network is unreachable"
    )
    made: list[ScriptedClient] = []

    def failing(dsn: str, **kwargs: Any) -> ScriptedClient:
        made.append(ScriptedClient(dsn, fail=NZ.neonize_error(message), **kwargs))
        return made[-1]

    gateway = NeonizeGateway(str(rig.store), client_factory=failing, spawn=run_now)
    gateway.bind(rig.events)
    sid = uuid4()
    gateway.start(sid, None)  # connect() ran, and failed, before start returned
    assert sid not in gateway.running()
    assert made[0].stop_calls == 1  # Go's maps are cleaned up after a failed connect
    assert gateway.wait_idle()
    assert [(c.name, c.args) for c in rig.events.of(sid)] == [
        ("disconnected", ("whatsapp_unreachable", message, None))
    ]
    gateway.close()


def test_connect_returning_by_itself_is_connection_lost(rig: Rig) -> None:
    gateway = NeonizeGateway(
        str(rig.store),
        client_factory=lambda dsn, **kw: ScriptedClient(dsn, return_at_once=True, **kw),
        spawn=run_now,
    )
    gateway.bind(rig.events)
    sid = uuid4()
    gateway.start(sid, None)
    assert sid not in gateway.running()
    assert gateway.wait_idle()
    assert [(c.name, c.args[0]) for c in rig.events.of(sid)] == [
        ("disconnected", "connection_lost")
    ]
    gateway.close()


# -- stop, restart --------------------------------------------------------------------------------


def test_stop_stops_the_client_and_nothing_more_is_reported(rig: Rig) -> None:
    sid = uuid4()
    client = rig.start(sid)
    show_qr(client, "2@code1")
    rig.settle()
    rig.gateway.stop(sid)
    assert client.stop_calls == 1
    assert not client._stop_finalizer.alive  # its GC-time Stop(uuid) can hit no newer client
    assert rig.gateway.running() == set()
    show_qr(client, "2@code2")
    feed(client, PB.Disconnected(status=True))
    assert names(rig.settle()) == ["qr_issued"]
    rig.gateway.stop(sid)  # stopping a stopped session is a no-op
    assert client.stop_calls == 1


def test_a_restart_drops_the_old_clients_reports(rig: Rig) -> None:
    sid = uuid4()
    old = rig.start(sid)
    rig.gateway.wait_idle()
    rig.events.hold = threading.Event()  # the dispatcher is busy when the old client speaks
    show_qr(old, "2@old-held")
    show_qr(old, "2@old-queued")
    new = rig.start(sid)
    rig.events.hold.set()
    show_qr(old, "2@old-late")
    show_qr(new, "2@new")
    codes = [c.args[0] for c in rig.settle()]
    assert old.stop_calls == 1
    assert "2@old-queued" not in codes
    assert "2@old-late" not in codes
    assert codes[-1] == "2@new"


def test_stop_all_and_close_stop_every_client(rig: Rig) -> None:
    a, b = uuid4(), uuid4()
    first, second = rig.start(a), rig.start(b)
    assert rig.gateway.running() == {a, b}
    rig.gateway.stop_all()
    assert rig.gateway.running() == set()
    assert first.stop_calls == second.stop_calls == 1
    again = rig.start(a)
    rig.gateway.close()
    assert again.stop_calls == 1


def test_handlers_are_closures_that_survive_garbage_collection(rig: Rig) -> None:
    sid = uuid4()
    client = rig.start(sid)
    handlers = list(client.event.list_func.values())
    assert handlers
    assert not any(isinstance(h, weakref.WeakMethod) for h in handlers)
    gc.collect()
    feed(client, PB.KeepAliveRestored())
    assert names(rig.settle()) == ["keepalive"]


def test_a_slow_recording_does_not_hold_up_the_go_thread(rig: Rig) -> None:
    sid = uuid4()
    client = rig.start(sid)
    rig.events.hold = threading.Event()
    show_qr(client, "2@code1")  # returns at once although the recorder is blocked
    show_qr(client, "2@code2")
    assert rig.events.of(sid) == []
    rig.events.hold.set()
    rig.events.wait_for(sid, lambda calls: len(calls) == 2)


# -- pair by phone, send, log out ---------------------------------------------------------------


def test_pair_phone_needs_a_qr_code_shown(rig: Rig) -> None:
    sid = uuid4()
    with pytest.raises(NotPairing):
        rig.gateway.pair_phone(sid, "15551234567")
    client = rig.start(sid)
    with pytest.raises(NotPairing):
        rig.gateway.pair_phone(sid, "15551234567")
    show_qr(client, "2@code1")
    assert rig.gateway.pair_phone(sid, "15551234567") == "ABCD1234"
    assert client.pair_calls == [("15551234567", True, NZ.client_name.LINUX)]
    client.scan(PHONE_JID)
    with pytest.raises(NotPairing):
        rig.gateway.pair_phone(sid, "15551234567")


def test_send_text_before_connected_never_reaches_go(rig: Rig) -> None:
    # (A session the gateway does not run is refused too: the contract suite checks it.)
    sid = uuid4()
    client = rig.start(sid)
    show_qr(client, "2@code1")
    with pytest.raises(NotConnected):
        rig.gateway.send_text(sid, "15557654321", "hello")
    assert client.sent == []


def test_send_text_when_connected_sends_a_plain_conversation(rig: Rig) -> None:
    sid, client = connected_rig(rig)
    sent = rig.gateway.send_text(sid, "+15557654321", "hello @15550000000")
    assert (sent.message_id, sent.timestamp) == ("3EB0000001", datetime.fromtimestamp(SENT_AT, UTC))
    to, message = client.sent[0]
    assert (to.User, to.Server) == ("15557654321", "s.whatsapp.net")
    assert message.conversation == "hello @15550000000"
    rig.gateway.send_text(sid, "120363000000000000@g.us", "hi group")
    assert (client.sent[1][0].User, client.sent[1][0].Server) == ("120363000000000000", "g.us")
    feed(client, PB.Disconnected(status=True))
    with pytest.raises(NotConnected):
        rig.gateway.send_text(sid, "15557654321", "hello")


def test_typing_is_neonizes_chat_presence_composing_then_paused_for_text(rig: Rig) -> None:
    sid, client = connected_rig(rig)
    rig.gateway.send_chat_presence(sid, "15557654321@s.whatsapp.net", composing=True)
    rig.gateway.send_chat_presence(sid, "+15557654321", composing=False)
    (to, composing, media), (again, paused, _) = client.presences
    assert (to.User, to.Server) == ("15557654321", "s.whatsapp.net")
    assert (again.User, again.Server) == ("15557654321", "s.whatsapp.net")
    assert composing == NZ.chat_presence.CHAT_PRESENCE_COMPOSING
    assert paused == NZ.chat_presence.CHAT_PRESENCE_PAUSED
    assert media == NZ.chat_presence_media.CHAT_PRESENCE_MEDIA_TEXT
    client.send_error = NZ.neonize_error("presence refused")
    with pytest.raises(GatewayError, match="presence refused"):
        rig.gateway.send_chat_presence(sid, "15557654321", composing=True)
    feed(client, PB.Disconnected(status=True))
    with pytest.raises(NotConnected):
        rig.gateway.send_chat_presence(sid, "15557654321", composing=True)


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        # whatsmeow's own texts (send.go, errors.go), as neonize's SendMessageError carries them
        ("no LID found for 15557654321@s.whatsapp.net from server", RecipientRejected),
        ("can't send message to unknown server example.com", RecipientRejected),
        ("message recipient must be a user JID with no device part", RecipientRejected),
        ("sending to non-status broadcast lists is not yet supported", RecipientRejected),
        ("failed to send message node: websocket not connected", NotConnected),
        ("client is nil", NotConnected),
        ("timed out waiting for message send response", GatewayError),
        ("server returned error 479", GatewayError),
        (
            "failed to get user info for 15557654321@s.whatsapp.net to fill LID cache: "
            "info query timed out",
            GatewayError,
        ),
    ],
)
def test_send_text_failures_are_mapped_by_what_whatsmeow_said(
    rig: Rig, error: str, raised: type[GatewayError]
) -> None:
    sid, client = connected_rig(rig)
    client.send_error = NZ.send_message_error(error)
    with pytest.raises(GatewayError, match=re.escape(error)) as caught:
        rig.gateway.send_text(sid, "15557654321", "hello")
    assert type(caught.value) is raised
    assert isinstance(caught.value.__cause__, NZ.send_message_error)


def test_send_text_failure_outside_neonize_is_a_gateway_error(rig: Rig) -> None:
    sid, client = connected_rig(rig)
    client.send_error = OSError("ctypes went wrong")
    with pytest.raises(GatewayError, match="ctypes went wrong") as caught:
        rig.gateway.send_text(sid, "15557654321", "hello")
    assert type(caught.value) is GatewayError


def test_send_text_to_a_number_not_on_whatsapp_is_rejected(rig: Rig) -> None:
    sid, client = connected_rig(rig)
    with pytest.raises(RecipientRejected, match=r"no LID found for 0123456789@s\.whatsapp\.net"):
        rig.gateway.send_text(sid, "0123456789@s.whatsapp.net", "hello")
    assert client.sent == []


# -- the silence watchdog's active check --------------------------------------------------------


def test_the_check_is_a_block_list_query_answered_through_neonize(rig: Rig) -> None:
    sid, client = connected_rig(rig)
    rig.gateway.ping(sid, 5.0)
    # neonize's own get_blocklist asked Go under the client's key, and parsed the answer
    assert client.checks == [client.uuid]
    assert rig.settle() == []  # a check reports nothing


def test_the_check_never_reaches_go_unless_connected(rig: Rig) -> None:
    sid = uuid4()
    with pytest.raises(NotConnected):
        rig.gateway.ping(sid, 1.0)
    client = rig.start(sid)
    show_qr(client, "2@code1")
    with pytest.raises(NotConnected):
        rig.gateway.ping(sid, 1.0)
    client.scan(PHONE_JID)
    rig.settle()
    feed(client, PB.Disconnected(status=True))  # whatsmeow reconnects by itself meanwhile
    with pytest.raises(NotConnected):
        rig.gateway.ping(sid, 1.0)
    rig.gateway.stop(sid)
    with pytest.raises(NotConnected):
        rig.gateway.ping(sid, 1.0)
    assert client.checks == []


@pytest.mark.parametrize(
    "error",
    [
        # whatsmeow's texts (request.go, errors.go) as neonize's GetBlocklistError carries them
        "info query timed out",
        "websocket not connected",
        "websocket disconnected before info query returned response",
    ],
)
def test_a_check_whatsmeow_could_not_make_is_a_gateway_error(rig: Rig, error: str) -> None:
    sid, client = connected_rig(rig)
    client.check_error = error
    with pytest.raises(GatewayError, match=re.escape(error)) as caught:
        rig.gateway.ping(sid, 5.0)
    assert type(caught.value.__cause__).__name__ == "GetBlocklistError"
    assert isinstance(caught.value.__cause__, NZ.neonize_error)


def test_a_check_without_an_answer_fails_after_its_timeout_and_ends_with_the_client(
    rig: Rig,
) -> None:
    sid, client = connected_rig(rig)
    client.check_delay = WAIT  # the server never answers (Go waits 75 s)
    started = time.monotonic()
    with pytest.raises(GatewayError, match=r"did not answer the check within 0\.3 s"):
        rig.gateway.ping(sid, 0.3)
    assert 0.3 <= time.monotonic() - started < 5
    assert client.checks == [client.uuid]
    rig.gateway.stop(sid)  # Go's Stop ends the query still waiting
    assert client.check_release.is_set()


def test_logout_of_a_connected_client_logs_out_then_stops_and_reports_nothing(rig: Rig) -> None:
    sid, client = connected_rig(rig)
    rig.gateway.logout(sid, PHONE_JID)
    assert client.logouts == 1
    assert client.stop_calls == 1
    assert rig.gateway.running() == set()
    feed(client, PB.Disconnected(status=True))
    assert rig.settle() == []
    assert not device_stored(str(rig.store), PHONE_JID)


def test_logout_without_a_connected_client_never_calls_go_and_deletes_the_device(
    rig: Rig,
) -> None:
    sid = uuid4()
    client = rig.start(sid)  # pairing: not connected
    rig.gateway.logout(sid, None)
    assert client.logouts == 0
    assert client.stop_calls == 1
    assert device_stored(str(rig.store), PHONE_JID)
    rig.gateway.logout(uuid4(), PHONE_JID)  # no client at all: the store row goes
    assert not device_stored(str(rig.store), PHONE_JID)
    assert rig.settle() == []


# -- resuming a stored device -------------------------------------------------------------------


def test_resuming_a_stored_device_builds_its_client_and_reports_connected(rig: Rig) -> None:
    sid = uuid4()
    client = rig.start(sid, PHONE_JID)
    assert client.uuid == b"15551234567:12"  # neonize's Go key for a resumed device
    assert (client.jid.User, client.jid.Server) == ("15551234567:12", "s.whatsapp.net")
    assert client.new_device is False
    calls = rig.events.wait_for(sid, lambda calls: len(calls) == 1)
    assert (calls[0].name, calls[0].args) == ("connected", (PHONE_JID, "Resumed phone"))


def test_resuming_an_unknown_device_reports_device_unlinked_without_building_a_client(
    tmp_path: Path,
) -> None:
    events = Recorder()
    # the real client class: Go would abort the process if it got this JID
    gateway = NeonizeGateway(str(make_store(tmp_path / "store.db", PHONE_JID)))
    gateway.bind(events)
    missing = NeonizeGateway(str(tmp_path / "absent.db"))
    missing.bind(events)
    a, b = uuid4(), uuid4()
    gateway.start(a, "15559999999:3@s.whatsapp.net")
    missing.start(b, PHONE_JID)
    assert gateway.wait_idle() and missing.wait_idle()
    for sid, gw in ((a, gateway), (b, missing)):
        [call] = events.of(sid)
        assert (call.name, call.args[0]) == ("disconnected", "device_unlinked")
        assert gw.client_of(sid) is None
        assert gw.running() == set()
    assert not (tmp_path / "absent.db").exists()  # looking never creates a store
    gateway.close()
    missing.close()


def test_a_store_that_cannot_be_reached_is_retried_not_unlinked() -> None:
    events = Recorder()
    dead = "postgres://nobody@127.0.0.1:9/nowhere?sslmode=disable&connect_timeout=2"
    gateway = NeonizeGateway(dead + "&search_path=whatsmeow")
    gateway.bind(events)
    sid = uuid4()
    gateway.start(sid, PHONE_JID)
    assert gateway.wait_idle()
    [call] = events.of(sid)
    assert (call.name, call.args[0]) == ("disconnected", "store_unavailable")
    assert call.args[1].startswith("the device store failed: ")
    assert "127.0.0.1" in call.args[1]  # the database's own message
    assert gateway.client_of(sid) is None
    gateway.close()


def test_delete_device_removes_only_that_device(tmp_path: Path) -> None:
    other = "15550000000:2@s.whatsapp.net"
    store = str(make_store(tmp_path / "store.db", PHONE_JID, other))
    assert delete_device(store, PHONE_JID)
    assert not delete_device(store, PHONE_JID)
    assert (device_stored(store, PHONE_JID), device_stored(store, other)) == (False, True)


# -- DSNs and logging -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "dsn"),
    [
        (
            "postgresql://sessiond:s3cr%2Ft@db.internal:6543/app",
            "postgres://sessiond:s3cr%2Ft@db.internal:6543/app"
            "?sslmode=disable&search_path=whatsmeow",
        ),
        (
            "host=/tmp/pg-sock user=postgres dbname=sessiond_test port=5433",
            "postgres://postgres@/sessiond_test?host=%2Ftmp%2Fpg-sock&port=5433"
            "&sslmode=disable&search_path=whatsmeow",
        ),
        (
            "postgresql://postgres:@/postgres?host=/run/embedded",
            "postgres://postgres@/postgres?host=%2Frun%2Fembedded&port=5432"
            "&sslmode=disable&search_path=whatsmeow",
        ),
        (
            "postgresql://u@127.0.0.1/d?sslmode=require&connect_timeout=3",
            "postgres://u@127.0.0.1:5432/d?sslmode=require&connect_timeout=3&search_path=whatsmeow",
        ),
        (
            "postgresql://u@[::1]:5432/d?sslmode=prefer",
            "postgres://u@[::1]:5432/d?sslmode=disable&search_path=whatsmeow",
        ),
    ],
)
def test_store_dsn_from_url(url: str, dsn: str) -> None:
    assert store_dsn_from_url(url) == dsn


def test_importing_neonize_leaves_the_root_logger_alone() -> None:
    """In a fresh interpreter (here neonize is imported already): neonize's import runs
    `logging.basicConfig(level=INFO, handlers=[its handler])`; `import_neonize` undoes it."""
    script = """
import logging
import sys
root = logging.getLogger()
before = (root.level, list(root.handlers))
from infra.whatsapp.loading import import_neonize
import_neonize()
neonize_log = sys.modules["neonize.utils.log"]  # the package shadows it with a Logger
assert neonize_log.stream_handler not in root.handlers, "neonize's handler stayed"
assert (root.level, list(root.handlers)) == before, ((root.level, root.handlers), before)
print("unchanged", before[0], len(before[1]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "unchanged 30 0"
