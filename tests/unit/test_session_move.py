"""Moving a session (`application.moving`) on in-memory persistence: the export stops the
session for good and fails what is still queued, the import resumes the device, a second
import of one export is refused with nothing stored, and the views take both in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from application.moving import (
    FORMAT,
    VERSION,
    AlreadyImported,
    DeviceAlreadyStored,
    DeviceCredentials,
    DeviceStore,
    MoveRefused,
    SessionExport,
    SessionMoves,
    decode_export,
    encode_export,
)
from application.sessions import SessionsApplication
from application.webhooks import Webhooks
from domain.errors import SessionWasExported
from domain.session import Session
from domain.values import ADMIN_ACTOR, DesiredState
from projections.gateway import GatewayProjection, MemoryGatewayView
from projections.status import MemorySessionStatusView, SessionStatusProjection
from projections.webhooks import webhook_event
from tests.unit.helpers import catch_up, create, head, popo_app

JID = "4915112345678:3@s.whatsapp.net"


class MemoryDevices(DeviceStore):
    gateway = "simulator"

    def __init__(self) -> None:
        self.devices: dict[str, DeviceCredentials] = {}
        self.writes = 0

    def holds(self, jid: str) -> bool:
        return jid in self.devices

    def read(self, jid: str, push_name: str) -> DeviceCredentials:
        if jid not in self.devices:
            raise MoveRefused("not stored")
        return self.devices[jid]

    def write(self, device: DeviceCredentials) -> None:
        if device.jid in self.devices:
            raise DeviceAlreadyStored("stored")
        self.writes += 1
        self.devices[device.jid] = device

    def remove(self, jid: str) -> None:
        self.devices.pop(jid, None)


def moves_of(app: SessionsApplication, refuse: Any = lambda _url: None) -> SessionMoves:
    hooks = Webhooks(app)
    registered: dict[str, list[str]] = {}

    def endpoints_of(session_id: str) -> list[str]:
        return registered.get(session_id, [])

    moves = SessionMoves(app, endpoints_of=endpoints_of, refuse_webhook_url=refuse)
    moves.hooks = hooks  # type: ignore[attr-defined]
    moves.registered = registered  # type: ignore[attr-defined]
    return moves


def linked_session(app: SessionsApplication) -> tuple[str, Any]:
    sid, uuid = create(app, "Support")
    app.record_connected(uuid, JID, "Ann's phone")
    return sid, uuid


def exported_document(app: SessionsApplication, moves: SessionMoves, sid: str) -> SessionExport:
    recorded = moves.record_export(sid, ADMIN_ACTOR)
    device = DeviceCredentials("simulator", JID, "Ann's phone", None, {})
    return decode_export(encode_export(moves.document(sid, recorded, device)))


def test_an_export_stops_the_session_for_good_and_fails_what_is_queued() -> None:
    app = popo_app()
    moves = moves_of(app)
    sid, uuid = linked_session(app)
    app.stop(sid, ADMIN_ACTOR)
    queued = app.send_message(sid, "4915112345678@s.whatsapp.net", "hello", None, ADMIN_ACTOR)

    stale = app.load(sid)  # as another export looked at it, before this one was recorded
    recorded = moves.record_export(sid, ADMIN_ACTOR)
    session = app.load(sid)
    assert (session.desired, session.status, session.reason) == (
        "stopped",
        "disconnected",
        "exported",
    )
    assert session.exported_as == recorded.export_id and not recorded.again
    events: list[Any] = list(app.events.get(uuid))
    assert [type(e).__name__ for e in events[-2:]] == ["SessionExported", "MessageFailed"]
    assert events[-1].message_id == queued.message_id
    assert events[-1].reason == "session_exported"

    # Check nothing starts it again: a reconnect, a send, a gateway's report or retry.
    with pytest.raises(SessionWasExported):
        app.reconnect(sid, ADMIN_ACTOR)
    with pytest.raises(SessionWasExported):
        app.send_message(sid, "4915112345678@s.whatsapp.net", "again", None, ADMIN_ACTOR)
    before = head(app)
    assert app.record_connected(uuid, JID, "Ann's phone") is None
    assert app.retry(uuid) is None
    assert head(app) == before
    # Exporting again records nothing: the same export is written again.
    again = moves.record_export(sid, ADMIN_ACTOR)
    assert (again.export_id, again.again, again.position) == (recorded.export_id, True, None)
    # An export that looked before this one was recorded answers this one, recording nothing.
    racing = moves_of(app)
    racing.exportable = lambda _sid: stale  # type: ignore[method-assign, assignment]
    raced = racing.record_export(sid, ADMIN_ACTOR)
    assert (raced.export_id, raced.again) == (recorded.export_id, True)
    assert head(app) == before


def test_a_session_without_a_device_is_not_exported() -> None:
    app = popo_app()
    sid, _ = create(app)
    before = head(app)
    with pytest.raises(MoveRefused, match="no linked device"):
        moves_of(app).record_export(sid, ADMIN_ACTOR)
    assert head(app) == before


def test_the_views_take_the_export_as_a_stop_and_the_import_as_a_creation_with_its_device() -> None:
    source, target = popo_app(), popo_app()
    moves = moves_of(source)
    sid, uuid = linked_session(source)
    document = exported_document(source, moves, sid)
    status = SessionStatusProjection(view=MemorySessionStatusView())
    gateway = GatewayProjection(view=MemoryGatewayView())
    catch_up(source, status, gateway)
    row = status.view.get_session(sid)
    assert row is not None and (row.status, row.reason, row.desired) == (
        "disconnected",
        "exported",
        "stopped",
    )
    gateway_row = gateway.view.row(uuid)
    assert gateway_row is not None and gateway_row.desired == DesiredState.STOPPED
    exported = list(source.events.get(uuid))[-1]
    assert webhook_event(exported) == ("session.stopped", {"sessionId": sid, "reason": "exported"})

    devices = MemoryDevices()
    imported = moves_of(target).import_session(document, devices, ADMIN_ACTOR)
    status, gateway = (
        SessionStatusProjection(view=MemorySessionStatusView()),
        GatewayProjection(view=MemoryGatewayView()),
    )
    catch_up(target, status, gateway)
    new = target.load(imported.session_id)
    row = status.view.get_session(imported.session_id)
    assert row is not None and (row.status, row.jid, row.push_name) == (
        "connecting",
        JID,
        "Ann's phone",
    )
    gateway_row = gateway.view.row(new.id)
    assert gateway_row is not None
    assert (gateway_row.desired, gateway_row.jid) == ("running", JID)  # resumed, no QR code
    first = next(iter(target.events.get(new.id)))
    assert isinstance(first, Session.SessionImported) and first.export_id == document.export_id
    assert webhook_event(first) is not None and webhook_event(first)[0] == "session.created"  # type: ignore[index]


def test_an_import_carries_the_settings_and_a_new_key_and_is_refused_the_second_time() -> None:
    source, target = popo_app(), popo_app()
    moves = moves_of(source)
    created = source.create_session(
        "Support EU", {"region": "eu"}, 90, ADMIN_ACTOR, proxy="http://u:p4ss@10.0.0.1:3128"
    )
    sid = created.session_id
    source.record_connected(source.load(sid).id, JID, "Ann's phone")
    hooks: Webhooks = moves.hooks  # type: ignore[attr-defined]
    on = hooks.register("https://hooks.example.com/a", ["message.received"], sid, ADMIN_ACTOR)
    off = hooks.register("https://hooks.example.com/b", ["session.qr"], sid, ADMIN_ACTOR)
    hooks.change(off.webhook_id, ADMIN_ACTOR, enabled=False)
    moves.registered[sid] = [on.webhook_id, off.webhook_id]  # type: ignore[attr-defined]
    document = exported_document(source, moves, sid)
    assert document.settings.proxy == "http://u:p4ss@10.0.0.1:3128"

    devices = MemoryDevices()
    target_moves = moves_of(target)
    imported = target_moves.import_session(document, devices, ADMIN_ACTOR)
    session = target.load(imported.session_id)
    assert (session.name, session.labels, session.requests_per_minute) == (
        "Support EU",
        {"region": "eu"},
        90,
    )
    assert session.proxy is not None and session.proxy.url == "http://u:p4ss@10.0.0.1:3128"
    assert [k.label for k in session.keys.values()] == ["imported"]
    assert created.first_key.key_id not in session.keys
    assert devices.holds(JID)
    endpoints = [Webhooks(target).load(webhook_id) for webhook_id in imported.webhook_ids]
    assert [(e.url, e.events, e.enabled, e.session_id) for e in endpoints] == [
        ("https://hooks.example.com/a", ["message.received"], True, imported.session_id),
        ("https://hooks.example.com/b", ["session.qr"], False, imported.session_id),
    ]
    assert [e.secret for e in endpoints] == [on.secret, off.secret]  # receivers keep theirs
    # Check the second import of the same export is refused, and stores nothing.
    before, writes = head(target), devices.writes
    with pytest.raises(AlreadyImported, match=imported.session_id):
        target_moves.import_session(document, devices, ADMIN_ACTOR)
    assert (head(target), devices.writes) == (before, writes)


def test_a_refused_import_stores_no_device_and_records_nothing() -> None:
    source = popo_app()
    moves = moves_of(source)
    sid, _ = linked_session(source)
    hooks: Webhooks = moves.hooks  # type: ignore[attr-defined]
    hook = hooks.register("https://hooks.example.com/a", ["message.received"], sid, ADMIN_ACTOR)
    moves.registered[sid] = [hook.webhook_id]  # type: ignore[attr-defined]
    document = exported_document(source, moves, sid)

    target, devices = popo_app(), MemoryDevices()
    # A webhook this deployment refuses, a device already here, another gateway's device.
    refusing = moves_of(target, refuse=lambda url: "it is not a public address")
    with pytest.raises(MoveRefused, match="not a public address"):
        refusing.import_session(document, devices, ADMIN_ACTOR)
    devices.devices[JID] = document.device
    with pytest.raises(DeviceAlreadyStored):
        moves_of(target).import_session(document, devices, ADMIN_ACTOR)
    devices.devices.clear()
    neonize = msgspec.structs.replace(
        document, device=msgspec.structs.replace(document.device, gateway="neonize")
    )
    with pytest.raises(MoveRefused, match="neonize gateway"):
        moves_of(target).import_session(neonize, devices, ADMIN_ACTOR)
    assert head(target) == 0 and devices.writes == 0


def test_a_device_stored_for_an_import_whose_save_fails_is_removed() -> None:
    source = popo_app()
    moves = moves_of(source)
    sid, _ = linked_session(source)
    document = exported_document(source, moves, sid)
    target, devices = popo_app(), MemoryDevices()

    def failing_save(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the database went away")

    target.save = failing_save  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        moves_of(target).import_session(document, devices, ADMIN_ACTOR)
    assert devices.writes == 1 and not devices.holds(JID)


def test_an_export_of_another_format_or_version_is_refused() -> None:
    app = popo_app()
    moves = moves_of(app)
    sid, _ = linked_session(app)
    document = exported_document(app, moves, sid)
    assert (document.format, document.version) == (FORMAT, VERSION)
    newer = msgspec.json.encode(msgspec.structs.replace(document, version=VERSION + 1))
    with pytest.raises(MoveRefused, match="version 2"):
        decode_export(newer)
    with pytest.raises(MoveRefused, match="not a sessiond session export"):
        decode_export(b'{"format": "something-else", "version": 1}')
    with pytest.raises(MoveRefused, match="malformed"):
        decode_export(b'{"format": "sessiond-session-export", "version": 1, "exportId": 3}')
    assert isinstance(document.exported_at, datetime) and document.exported_at.tzinfo == UTC
