"""A view rebuilt from the log equals the live one, and switching to it costs no request."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.sql import SQL, Identifier

from application.ports import InboundMessage
from application.sessions import IssuedKey, SessionsApplication
from domain.values import ADMIN_ACTOR
from infra.bootstrap import REBUILDABLE, Container
from infra.runtime.rebuild import RebuildError, ViewRebuild
from infra.runtime.supervisor import lock_key
from tests.conftest import test_settings
from tests.integration.conftest import ADMIN, Api
from tests.waiting import eventually

KEY_USED_AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def container(database_url: str, tmp_path: Path) -> Iterator[Container]:
    """A projector process: every projection runs here, under its supervisor."""
    running = Container(
        test_settings(tmp_path, database_url), database_url, frozenset({"projector"})
    )
    running.start()
    yield running
    running.close()


def scripted_history(app: SessionsApplication) -> list[str]:
    """Sessions going through every kind of event, recorded concurrently (interleaved)."""
    expires = datetime.now(UTC) + timedelta(seconds=60)

    def history(n: int) -> str:
        created = app.create_session(
            f"Scripted {n}", {"region": "eu" if n % 2 else "us"}, 60 if n % 4 == 0 else None,
            ADMIN_ACTOR,
        )  # fmt: skip
        sid = created.session_id
        uuid = app.load(sid).id
        to = "4915112345678@s.whatsapp.net"
        first = app.send_message(sid, to, f"hello {n}", f"key-{n}", ADMIN_ACTOR).message_id
        second = app.send_message(sid, to, f"second {n}", None, ADMIN_ACTOR).message_id
        extra = app.issue_key(sid, "crm", ADMIN_ACTOR)
        if n % 3 == 0:
            app.revoke_key(sid, extra.key_id, ADMIN_ACTOR)
        app.record_qr(uuid, f"2@code-{n}", expires, 1, 6)
        if n % 5 == 4:
            app.record_qr_expired(uuid)
            return sid
        jid = f"49{n:09d}:1@s.whatsapp.net"
        app.record_connected(uuid, jid, "Phone")
        app.record_sent(uuid, first, f"WA{n}")
        app.record_received(uuid, InboundMessage(f"IN{n}", to, to, f"inbound {n}", expires))
        app.record_acks(uuid, [f"WA{n}"], "delivered", expires)
        if n % 2:
            app.record_acks(uuid, [f"WA{n}"], "read", expires)
        if n % 3 == 0:
            app.record_send_failed(uuid, second, "rejected", "not on WhatsApp")
        app.record_keepalive(uuid, healthy=False)
        app.record_keepalive(uuid, healthy=True)
        app.record_disconnected(uuid, "connection_lost", "dropped")
        app.retry(uuid)
        app.record_connected(uuid, jid, "Phone")
        if n % 4 == 2:
            app.set_rate_limit(sid, 120, ADMIN_ACTOR)
        if n % 3 == 1:
            app.stop(sid, ADMIN_ACTOR)
            app.reconnect(sid, ADMIN_ACTOR)
        if n % 6 == 5:
            app.delete(sid, ADMIN_ACTOR)
        return sid

    with ThreadPoolExecutor(6) as pool:
        return list(pool.map(history, range(24)))


def caught_up(container: Container) -> bool:
    return not any(container.projection_lags().values())


def rows(database_url: str, table: str, *, leave_out: tuple[str, ...] = ()) -> list[Any]:
    """Every row of `table`, every column (but `leave_out`), in a stable order."""
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            SQL("SELECT to_jsonb(t) - %s::text[] FROM {0} t").format(Identifier(table)),
            (list(leave_out),),
        ).fetchall()
    return sorted((r[0] for r in found), key=lambda r: json.dumps(r, sort_keys=True))


def active_generation(database_url: str, name: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT generation FROM sessiond_view_generations WHERE name = %s", (name,)
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("name", sorted(REBUILDABLE))
def test_a_rebuilt_view_equals_the_live_one_and_takes_over_from_it(
    container: Container, database_url: str, tmp_path: Path, name: str
) -> None:
    app = container.app
    sessions = scripted_history(app)
    eventually(lambda: caught_up(container))
    live = container.views.get(name)
    if name == "api_keys":  # the last use of a key is written by API processes, not events
        a_key = live.keys_of_session(sessions[0])[0]
        assert live.record_last_use({a_key.key_id: KEY_USED_AT}) == {}

    # Build a new generation in small pages (rows change across pages) while the live one runs.
    rebuild = ViewRebuild(container, name, page_size=7, keep_old=True, progress=False)
    rebuild.prepare()
    rebuild.build()
    head = app.recorder.max_notification_id()
    assert rebuild.report.position == head and rebuild.report.events == head

    # Check every row, every column and the tracking record equal the live view's.
    pairs = list(zip(live.tables(), rebuild.view.tables(), strict=True))
    assert [new for _, new in pairs] == [
        old.removesuffix("_tracking") + "_g1" + ("_tracking" if old.endswith("_tracking") else "")
        for old, _ in pairs
    ]
    for old_table, new_table in pairs:
        assert rows(database_url, new_table, leave_out=("last_used_at",)) == rows(
            database_url, old_table, leave_out=("last_used_at",)
        ), new_table
        assert rows(database_url, old_table)  # something was compared

    # Switch: the projector hands the projection over, the new generation becomes active.
    rebuild.switch()
    rebuild.retire()
    assert active_generation(database_url, name) == 1
    assert rebuild.report.kept == live.tables() and rebuild.report.dropped == []
    for old_table, new_table in pairs:  # last use carried over: now every column is equal
        assert rows(database_url, new_table) == rows(database_url, old_table), new_table

    # Check the projector now runs the new generation, and only it.
    later = app.create_session("After the switch", {}, None, ADMIN_ACTOR)
    new_view = container.views.build(name, 1)
    eventually(lambda: new_view.max_tracking_id(app.name) == later.position)
    assert live.max_tracking_id(app.name) == head
    if name == "session_status":
        row = new_view.get_session(later.session_id)
        assert row is not None and row.status == "connecting"
        assert live.get_session(later.session_id) is None

    # Check a process started later serves the new generation from the start.
    another = Container(test_settings(tmp_path, database_url), database_url, frozenset())
    try:
        assert another.views.generation(name) == 1
        assert another.views.get(name).tables() == new_view.tables()
        eventually(lambda: caught_up(another))
    finally:
        another.close()


def test_a_rebuild_drops_the_old_generation_and_a_second_one_builds_the_next(
    container: Container, database_url: str
) -> None:
    scripted_history(container.app)
    eventually(lambda: caught_up(container))
    before = rows(database_url, "session_status")
    first = ViewRebuild(container, "session_status", progress=False).run()
    second = ViewRebuild(container, "session_status", progress=False).run()
    assert (first.generation, second.generation) == (1, 2)
    assert first.dropped == ["session_status", "session_status_tracking"]
    assert second.dropped == ["session_status_g1", "session_status_g1_tracking"]
    assert rows(database_url, "session_status_g2") == before
    with psycopg.connect(database_url) as conn:
        left = conn.execute(
            "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables "
            "WHERE tablename LIKE 'session_status%'"
        ).fetchone()
    assert left is not None and left[0] == "session_status_g2,session_status_g2_tracking"


def test_a_view_cannot_be_rebuilt_twice_at_once_nor_the_gateway_view_at_all(
    container: Container, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (lock_key("uptime") + ":rebuild",))
        with pytest.raises(RebuildError, match="already running"):
            ViewRebuild(container, "uptime", progress=False).run()
    with pytest.raises(RebuildError, match="gateway view cannot be rebuilt"):
        ViewRebuild(container, "gateway")
    with pytest.raises(RebuildError, match="no view named 'nope'"):
        ViewRebuild(container, "nope")
    with pytest.raises(RebuildError, match="must be positive"):
        ViewRebuild(container, "uptime", page_size=0)
    assert active_generation(database_url, "uptime") == 0


class SlowSwitch(ViewRebuild):
    """A rebuild that, once it holds the projection (the view stands still), runs `during`,
    then goes on only when the log holds `beyond` events the standing view has not taken in:
    commands made while the view is handed over, whose answers wait for the switch."""

    def __init__(
        self, *args: Any, during: Callable[[], Any] | None = None, beyond: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.locked = threading.Event()
        self.during = during
        self.beyond = beyond

    def _final_catch_up(self) -> None:
        standing = self.container.views.get(self.name).max_tracking_id(self.app.name) or 0
        if self.during is not None:
            self.during()
        self.locked.set()
        deadline = time.monotonic() + 60
        while (self.app.recorder.max_notification_id() or 0) < standing + self.beyond:
            assert time.monotonic() < deadline, "nothing was written while the view stood still"
            time.sleep(0.01)
        super()._final_catch_up()


async def _status(api: Api, session_id: str, headers: dict[str, str] = ADMIN) -> Any:
    return await api.client.get(f"/sessions/{session_id}/status", headers=headers)


async def test_reads_and_writes_go_on_while_the_status_view_is_rebuilt_and_switched(
    api: Api,
) -> None:
    created = [await api.create_session(f"Busy {n}") for n in range(6)]
    for item in created:  # some history, so that the rebuild has pages to go through
        for action in ("stop", "reconnect", "stop", "reconnect"):
            done = await api.client.post(f"/sessions/{item['sessionId']}/{action}", headers=ADMIN)
            assert done.status_code == 200, done.text

    rebuild = SlowSwitch(api.container, "session_status", page_size=3, progress=False)
    running = ThreadPoolExecutor(1).submit(rebuild.run)  # the test client blocks the loop
    target = created[0]["sessionId"]
    reads = writes = 0
    # The rebuild goes on once a write is made while it holds the view: at least one write
    # below waits across the handover (its answer waits for the switch).
    while not running.done() or writes < 2:
        # Check every status read answers, from whichever generation serves.
        for item in created:
            answer = await _status(api, item["sessionId"], api.key(item))
            assert answer.status_code == 200, answer.text
            assert answer.json()["sessionId"] == item["sessionId"]
            reads += 1
        # Check a write answers (its read-your-writes wait ends) and is seen at once.
        action, expected = (
            ("stop", "disconnected") if writes % 2 == 0 else ("reconnect", "connecting")
        )
        done = await api.client.post(f"/sessions/{target}/{action}", headers=ADMIN)
        assert done.status_code == 200, done.text
        assert (await _status(api, target)).json()["status"] == expected
        writes += 1
    report = running.result()
    assert reads > 0 and report.generation == 1
    assert report.dropped == ["session_status", "session_status_tracking"]

    # Check the process now reads generation 1, and read-your-writes holds on it.
    assert api.container.views.generation("session_status") == 1
    after = await api.create_session("After the switch")
    assert (await _status(api, after["sessionId"], api.key(after))).json()["status"] == "connecting"
    stopped = await api.client.post(f"/sessions/{after['sessionId']}/stop", headers=ADMIN)
    assert stopped.status_code == 200
    assert (await _status(api, after["sessionId"])).json()["reason"] == "stopped"
    listed = (await api.client.get("/sessions", headers=ADMIN)).json()
    assert listed["count"] == len(created) + 1


async def test_keys_issued_and_revoked_during_a_key_view_switch_take_effect_at_once(
    api: Api,
) -> None:
    created = await api.create_session("Keys")
    session_id, first = created["sessionId"], api.key(created)
    old = (await api.client.post(f"/sessions/{session_id}/keys", json={}, headers=first)).json()
    assert (await _status(api, session_id, {"x-api-key": old["key"]})).status_code == 200

    # While the view is handed over: a new key (issued by the application itself: the test
    # client handles one request at a time), then a revocation that answers after the switch.
    issued: list[IssuedKey] = []
    rebuild = SlowSwitch(
        api.container,
        "api_keys",
        page_size=2,
        progress=False,
        during=lambda: issued.append(api.container.app.issue_key(session_id, "new", ADMIN_ACTOR)),
        beyond=2,
    )
    running = ThreadPoolExecutor(1).submit(rebuild.run)  # the test client blocks the loop
    assert rebuild.locked.wait(30)
    revoked = await api.client.delete(f"/sessions/{session_id}/keys/{old['keyId']}", headers=first)
    assert revoked.status_code == 204
    assert rebuild.switched
    new = {"x-api-key": issued[0].key}

    # Check both take effect as soon as they answered, and after the switch too.
    assert (await _status(api, session_id, new)).status_code == 200
    assert (await _status(api, session_id, {"x-api-key": old["key"]})).status_code == 401
    report = running.result()
    assert report.generation == 1 and api.container.views.generation("api_keys") == 1
    assert (await _status(api, session_id, new)).status_code == 200
    assert (await _status(api, session_id, {"x-api-key": old["key"]})).status_code == 401
    listed = (await api.client.get(f"/sessions/{session_id}/keys", headers=ADMIN)).json()
    by_id = {item["keyId"]: item for item in listed["items"]}
    assert by_id[old["keyId"]]["active"] is False
    assert by_id[issued[0].key_id]["lastUsedAt"] is not None  # recorded on generation 1
